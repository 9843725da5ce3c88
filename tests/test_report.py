"""`thresher report` on real runs: two packaged recipes (length; superfiltering with the bundled model) over
20 real ShareGPT records plus a planted record whose response is markup that would run if not escaped.

Numbers are checked against naive recomputations (plain loops, scipy's spearmanr); the page against the
escaping and no-external-URL rules; the CLI against its exit statuses."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thresher.cli import main
from thresher.errors import ConfigError
from thresher.reporting import render, write_report
from thresher.reporting import page, stats
from thresher.reporting.runs import read_run
from thresher.reporting.svg import fmt

PLANTED = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'
REPO = Path(__file__).resolve().parents[1]


def make_runs(folder: Path) -> tuple[Path, Path]:
    """Runs of the packaged `length` and `superfiltering` recipes on 20 real ShareGPT records + a planted one."""
    from thresher.data.readers import bundled_sharegpt_path, load

    ds = load(bundled_sharegpt_path(), limit=20, lenient=True, on_invalid="skip")
    data = folder / "pool.jsonl"
    lines = [json.dumps(r) for r in ds.raw]
    lines.append(json.dumps({"id": "planted", "conversations": [{"from": "human", "value": "say hi"},
                                                               {"from": "gpt", "value": PLANTED}]}))
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    length, sf = folder / "length", folder / "superfiltering"
    assert main(["run", "length", "--data", str(data), "--out", str(length)]) == 0
    assert main(["run", "superfiltering", "--data", str(data), "--out", str(sf), "--device", "cpu",
                 "--set", "stages.0.score.0.params.max_length=256"]) == 0
    return length, sf


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_runs(tmp_path_factory.mktemp("report-runs"))


@pytest.fixture(scope="module")
def compare_html(runs):
    return render(list(runs))


def _kept_values(run: Path, stage: str, column: str) -> list[float]:
    scores = pd.read_parquet(run / stage / "scores.parquet")
    kept = set((run / stage / "selected_ids.txt").read_text().split())
    return [v for i, v in zip(scores["id"], scores[column]) if i in kept and np.isfinite(v)]


def test_histogram_counts_sum_to_the_finite_rows(runs):
    sf = runs[1]
    scores = pd.read_parquet(sf / "ifd" / "scores.parquet")
    kept = read_run(sf).parts[0].stages[0].kept_mask()
    for col in ("ifd", "ppl_cond", "n_resp_tokens"):
        v = scores[col].to_numpy(dtype=float)
        h = stats.histogram(v, kept)
        finite = sum(1 for x in v if np.isfinite(x))
        assert h.counts.sum() == h.finite == finite and h.nan == len(v) - finite
        assert h.kept.sum() == len(_kept_values(sf, "ifd", col))
    assert scores["status"].ne("ok").sum() > 0, "the fixture should have NaN rows with a reason"


def test_cut_line_is_the_kept_sets_boundary(runs, compare_html):
    length, sf = runs
    for run, stage, col, hib in ((length, "length", "resp_tokens", True), (sf, "ifd", "ifd", True)):
        st = read_run(run).parts[0].stages[0]
        assert st.ranked == col and st.higher_is_better is hib
        expected = min(_kept_values(run, stage, col))
        got = stats.cut_value(st.scores[col].to_numpy(dtype=float), st.kept_mask(), hib)
        assert got == expected
        assert f"{col}: " in compare_html and f"cut {fmt(expected)}" in compare_html


def test_lower_is_better_cut_is_the_largest_kept_value():
    v = np.array([5.0, 1.0, np.nan, 3.0, 2.0])
    kept = np.array([False, True, False, False, True])
    assert stats.cut_value(v, kept, False) == 2.0 and stats.cut_value(v, kept, True) == 1.0
    assert stats.cut_value(v, None, True) is None


def test_spearman_and_jaccard_match_naive_computations(runs, compare_html):
    from scipy.stats import spearmanr

    views = [read_run(r) for r in runs]
    inputs = page.comparison_inputs(views)
    a = pd.read_parquet(runs[0] / "length" / "scores.parquet").set_index("id")["resp_tokens"]
    b = pd.read_parquet(runs[1] / "ifd" / "scores.parquet").set_index("id")["ifd"]
    pairs = [(a[i], b[i]) for i in a.index if i in b.index and np.isfinite(a[i]) and np.isfinite(b[i])]
    rho_ref = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    rho, n = page.spearman_matrix(inputs)[0][1]
    assert n == len(pairs) and rho == pytest.approx(rho_ref, abs=1e-12)
    ka = (runs[0] / "length" / "selected_ids.txt").read_text().split()
    kb = (runs[1] / "ifd" / "selected_ids.txt").read_text().split()
    shared = sum(1 for i in ka if i in kb)
    either = len(ka) + len(kb) - shared
    assert stats.jaccard(ka, kb) == pytest.approx(shared / either)
    overlap = re.search(r'<table class="grid overlap">.*?</table>', compare_html, re.S).group(0)
    assert f'data-v="{shared / either!r}"' in overlap
    spear = re.search(r'<table class="grid spearman">.*?</table>', compare_html, re.S).group(0)
    assert f"{rho_ref:.3f}" in spear


def test_disagreements_are_kept_by_one_and_dropped_by_the_other(runs):
    inputs = page.comparison_inputs([read_run(r) for r in runs])
    table = stats.disagreements(inputs, limit=50)
    kept = [set((runs[0] / "length" / "selected_ids.txt").read_text().split()),
            set((runs[1] / "ifd" / "selected_ids.txt").read_text().split())]
    naive = {i for i in kept[0] ^ kept[1]}
    assert set(table["id"]) == naive
    assert list(table["spread"]) == sorted(table["spread"], reverse=True)


def test_planted_markup_is_escaped_and_no_external_url(runs, compare_html):
    for html in (compare_html, render([runs[0]]), render([runs[1]], fragment=True)):
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
        assert "<script>window.__pwned" not in html and "<img src=x" not in html
        assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
        assert "<link" not in html and "<script src" not in html
        assert html.count("<script>") == 1       # the page's own script, nothing else


def test_page_content(runs, compare_html):
    html = compare_html
    assert html.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in html
    assert "Selection: superfiltering ranks ifd (higher is better)" in html
    assert "prompt fills max_length" in html or "every row scored" in html
    assert "response characters (log scale)" in html
    assert html.count('class="hist"') >= 4 and html.count('class="ledger"') == 2 and "not recorded" not in html
    assert "Where the methods disagree most" in html
    frag = render([runs[0]], fragment=True)
    assert frag.startswith('<div class="thr">') and "<html" not in frag and "<body" not in frag


def test_compute_ledger_of_a_real_run(runs):
    """The superfiltering run's own ledger (summary.json "compute", written by the run) is on the page: in the
    stage's table and as the ledger row of the stage."""
    c = json.loads((runs[1] / "summary.json").read_text())["stages"][0]["compute"]
    assert c["computed_rows"] + c["cached_rows"] == c["rows"] == 21
    html = render([runs[1]])
    assert f"tokens {fmt(c['tokens'])}" in html and f"model passes {fmt(c['model_passes'])}" in html
    ledger = html[html.index('class="ledger"'):]
    ledger = ledger[:ledger.index("</table>")]
    row = [fmt(c["seconds"]), fmt(c["model_passes"]), fmt(c["tokens"]), fmt(c["computed_rows"]),
           fmt(c["cached_rows"])]
    assert "<td>ifd</td><td>scoring</td>" + "".join(f"<td>{v}</td>" for v in row) in ledger


def test_missing_data_still_renders_with_a_note(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["data"].update(path=str(tmp_path / "gone.jsonl"), abs_path=str(tmp_path / "gone.jsonl"))
    (run / "manifest.json").write_text(json.dumps(manifest))
    html = render([run])
    assert "The records cannot be read now" in html and "gone.jsonl" in html
    assert 'class="hist"' in html


def test_incomplete_or_foreign_folder_is_a_config_error(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs[0], broken)
    (broken / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="incomplete run"):
        render([broken])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run folder"):
        render([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="not a run folder"):
        render([tmp_path / "missing"])


def test_cli_writes_the_report_and_exit_statuses(runs, tmp_path, capsys):
    out = tmp_path / "compare.html"
    assert main(["report", str(runs[0]), str(runs[1]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text().startswith("<!DOCTYPE html>") and (tmp_path / "compare.html.manifest.json").is_file()
    assert main(["report", str(runs[0]), "--out", str(out)]) == 0          # thresher's own file: replaced
    (tmp_path / "mine.html").write_text("mine")
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "mine.html")]) == 2
    assert (tmp_path / "mine.html").read_text() == "mine"
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "x.html")]) == 2
    assert main(["report", str(runs[0]), "--out", str(tmp_path / "x.txt")]) == 2
    assert "thresher: error:" in capsys.readouterr().err


def test_large_run_is_sampled(tmp_path):
    spec = importlib.util.spec_from_file_location("report_size", REPO / "benchmarks" / "report_size.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = bench.build_run(tmp_path / "big", 3000)
    out = write_report([run], tmp_path / "big.html")
    html = out.read_text()
    ifd = pd.read_parquet(run / "ifd" / "scores.parquet")["ifd"].to_numpy()
    assert html.count("<circle") == np.isfinite(ifd[stats.sample_rows(3000, page.SCATTER_POINTS)]).sum() > 1900
    body = re.search(r'<div class="examples">.*?</table>', html, re.S).group(0)
    assert body.count("<tr") - 1 == 4 * page.EXAMPLES_PER_GROUP
    h = stats.histogram(ifd, None)
    assert h.finite + h.nan == 3000 and f"ifd: {h.finite} finite, {h.nan} NaN" in html


def test_judge_training_and_client_layouts(runs, tmp_path):
    """A run over private clients (OUT/clients/<name>/<stage>/) with a judge record and a training stage."""
    run = tmp_path / "clues"
    client = run / "clients" / "a"
    shutil.copytree(runs[1] / "ifd", client / "ifd")
    shutil.copy(runs[1] / ".thresher-output.json", run / ".thresher-output.json")
    manifest, summary = (json.loads((runs[1] / n).read_text()) for n in ("manifest.json", "summary.json"))
    manifest["stages"].insert(0, {"name": "warmup", "model": "bundled", "train": {"rows": "all"}, "rows": []})
    summary["stages"].insert(0, {"name": "warmup", "model": "bundled", "seconds": 12.5,
                                 "train": {"rows": 21, "trained": 21, "skipped": 0, "steps": 4, "max_steps": 4,
                                           "loss": 1.25, "final": "x"}})
    summary["stages"][1]["judge"] = {"requests": 21, "cached": 1, "calls": 20, "retries": 0, "failed": 0,
                                     "prompt_tokens": 900, "completion_tokens": 40, "cost": 0.0123}
    (run / "manifest.json").write_text(json.dumps({"argv": [], "clients": {"a": {"data": manifest["data"],
                                                                                 "stages": manifest["stages"]}}}))
    (run / "summary.json").write_text(json.dumps({"recipe": "clues", "clients": {"a": summary}, "seconds": 3.0}))
    html = render([run, runs[0]])
    assert "Client a" in html and "Stage warmup: training" in html and "12.5" in html
    assert "<td>warmup</td><td>training</td><td>12.5</td>" in html and ", training 12.5 s" in html   # the ledger
    assert "21 requests (1 cached)" in html and "900+40 tokens" in html and "cost 0.0123" in html
    assert html.count('class="hist"') >= 4 and "Where the methods disagree most" in html
