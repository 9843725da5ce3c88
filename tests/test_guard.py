"""The noise guard's verdict (thresher.algorithms.guard) on hand-made signal columns, and the guard in a run:
`thresher run RECIPE --guard` leaves flagged rows out of every selection, `thresher guard` writes the verdict.

The pipeline tests use a stand-in signal scorer (a module written here, a ``module:Class`` scorer: no model)
that produces two of the guard's columns (``refusal``, ``empty``) from the text, so they run without the guard
scorers, and end to end with the real guard scorers (guard_lm, guard_text, guard_embed) on planted rows."""

from __future__ import annotations

import html
import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml

from thresher.algorithms.guard import KINDS, GuardParams, guard_summary, guard_verdict, robust_center_scale
from thresher.cli import main
from thresher.config import build
from thresher.errors import ConfigError
from thresher.pipeline.config import TrainStageConfig
from thresher.pipeline.recipe import load_recipe
from thresher.pipeline.stages import select_among
from thresher.pipeline.config import SelectConfig
from thresher.pipeline.train_stage import train_rows
from thresher.reporting import render

from samples import ALPACA

N = 120


def clean_pool(n: int = N, seed: int = 0) -> pd.DataFrame:
    """Signal columns of ``n`` ordinary rows: every kind's evidence well inside its pool."""
    rng = np.random.default_rng(seed)

    def normal(mean, sd):                                # no chance outliers: within 2.5 sd
        return np.clip(rng.normal(mean, sd, n), mean - 2.5 * sd, mean + 2.5 * sd)
    cond = normal(1.5, 0.2)
    direct = cond + normal(0.8, 0.15)             # the instruction helps: IFD ~ exp(-0.8) < 1
    return pd.DataFrame({
        "id": [f"r{i}" for i in range(n)], "loss_cond": cond, "loss_direct": direct, "ifd": np.exp(cond - direct),
        "eot_logprob": normal(-1.0, 0.3), "n_resp_tokens": rng.integers(20, 200, n).astype(float),
        "refusal": np.zeros(n), "copy_overlap": rng.uniform(0, 0.2, n), "compression_ratio": normal(0.5, 0.04),
        "repeat_ngram": rng.uniform(0, 0.05, n), "script_mismatch": rng.uniform(0, 0.05, n),
        "lang_mismatch": np.zeros(n), "empty": np.zeros(n), "ends_cleanly": np.ones(n),
        "junk_tail": rng.uniform(0, 0.1, n), "tail_loss": normal(-0.2, 0.3), "resp_chars": rng.integers(100, 900, n).astype(float),
        "qa_cosine": normal(0.6, 0.05), "dup_cosine": normal(0.7, 0.04),
        "dup_of": [f"r{(i + 1) % n}" for i in range(n)]})


# Per kind: the planted values of one row (row 0 of a clean pool) and a word its reason must name.
PLANTS = {
    "mismatch": ({"ifd": 1.08, "qa_cosine": 0.52}, "IFD 1.08 >= 1 with a low instruction-response cosine"),
    "garbled": ({"loss_direct": 7.0}, "direct loss 7"),
    "cutoff": ({"eot_logprob": -6.0, "ends_cleanly": 0.0}, "end-of-turn logprob -6"),
    "refusal": ({"refusal": 1.0}, "refusal pattern"),
    "copy": ({"copy_overlap": 1.0}, "copied 3-grams 1 >= 0.8"),
    "duplicate": ({"dup_cosine": 0.99, "qa_cosine": 0.55}, "cosine to another response 0.99 >= 0.95"),
    "repetition": ({"repeat_ngram": 0.8}, "repeated 4-grams 0.8 >= 0.5"),
    "language": ({"script_mismatch": 0.9}, "script mismatch 0.9 >= 0.5"),
    "empty": ({"empty": 1.0}, "empty or boilerplate"),
    "junk": ({"junk_tail": 0.9}, "junk tail 0.9"),
}


def planted(kind: str) -> pd.DataFrame:
    pool = clean_pool()
    values, _ = PLANTS[kind]
    for col, v in values.items():
        pool.loc[0, col] = v
    if kind == "duplicate":                              # row 0 and row 1 share a response; 1 fits its instruction
        pool.loc[0, "dup_of"], pool.loc[1, ["dup_cosine", "qa_cosine"]], pool.loc[1, "dup_of"] = "r1", [0.99, 0.7], "r0"
    return pool


# ------------------------------------------------------------------------------------------ the verdict
def test_a_clean_pool_is_not_flagged_and_every_kind_is_judged():
    v = guard_verdict(clean_pool())
    assert not v["flagged"].any() and (v["flags"] == "").all() and (v["reason"] == "").all()
    assert v.attrs["not_judged"] == {} and v.attrs["partial"] == {}
    assert v["suspect"].between(0, 0.5, inclusive="left").all()
    assert [c for c in v.columns if c.startswith("suspect_")] == [f"suspect_{k}" for k in KINDS]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_fires_on_its_planted_row_only_and_names_the_evidence(kind):
    v = guard_verdict(planted(kind))
    assert v["flagged"].tolist() == [True] + [False] * (N - 1)
    assert v.loc[0, "flags"] == kind
    assert v.loc[0, "reason"].startswith(f"{kind}: ") and PLANTS[kind][1] in v.loc[0, "reason"]
    assert v.loc[0, f"suspect_{kind}"] >= 0.5 and v.loc[0, "suspect"] == v[f"suspect_{kind}"].max()
    assert v.loc[0, "suspect"] > v["suspect"].iloc[1:].max()          # the planted row ranks first
    assert ((v["suspect"] >= 0.5) == v["flagged"]).all()


def test_reason_of_a_pool_signal_shows_the_robust_z_and_the_cutoff():
    reason = guard_verdict(planted("garbled")).loc[0, "reason"]
    assert reason.startswith("garbled: direct loss 7, z ") and reason.endswith(">= 3.5")


def test_several_kinds_on_one_row_are_all_named():
    pool = planted("mismatch")
    pool.loc[0, "refusal"] = 1.0
    v = guard_verdict(pool)
    assert v.loc[0, "flags"] == "mismatch;refusal"
    assert v.loc[0, "reason"] == ("mismatch: IFD 1.08 >= 1 with a low instruction-response cosine; "
                                  "refusal: refusal pattern")


def test_ifd_at_or_above_one_needs_a_low_cosine_to_fire():
    pool = clean_pool()
    pool.loc[0, "ifd"], pool.loc[0, "qa_cosine"] = 1.3, 0.6           # a greeting: IFD high, cosine ordinary
    pool.loc[1, "ifd"], pool.loc[1, "qa_cosine"] = 1.3, 0.5           # another row's answer: both agree
    v = guard_verdict(pool)
    assert not v.loc[0, "flagged"] and v.loc[1, "flags"] == "mismatch"
    alone = guard_verdict(pool.drop(columns="qa_cosine"))                 # no embeddings: IFD judges alone
    assert alone.loc[0, "flags"] == alone.loc[1, "flags"] == "mismatch"


def test_a_high_loss_tail_is_junk():
    pool = clean_pool()
    pool.loc[0, "tail_loss"] = 2.5
    v = guard_verdict(pool)
    assert v["flagged"].tolist() == [True] + [False] * (N - 1)
    assert v.loc[0, "flags"] == "junk" and "tail loss 2.5" in v.loc[0, "reason"]


@pytest.mark.parametrize("column,kind,values", [
    ("loss_direct", "garbled", np.linspace(2.0, 9.0, 15)),
    ("ifd", "mismatch", np.linspace(0.7, 1.6, 15)),
    ("eot_logprob", "cutoff", -np.linspace(0.5, 9.0, 15)),
    ("copy_overlap", "copy", np.linspace(0.0, 1.0, 15))])
def test_suspect_is_monotone_in_the_evidence(column, kind, values):
    pool = clean_pool().drop(columns="qa_cosine")        # copy's other source: one source per kind here
    pool.loc[:14, column] = values
    s = guard_verdict(pool)[f"suspect_{kind}"].to_numpy()[:15]
    assert (np.diff(s) > 0).all() and (0 <= s).all() and (s <= 1).all()


def test_robust_thresholds_move_with_the_pool():
    """The same absolute direct loss is an outlier in a fluent pool and ordinary in a noisier, harder pool."""
    easy, hard = clean_pool(), clean_pool()
    hard["loss_direct"] = hard["loss_direct"] * 2.5
    for pool in (easy, hard):
        pool.loc[:9, "loss_direct"] = np.linspace(4.0, 5.0, 10)
    n_easy = guard_verdict(easy)["flags"].str.contains("garbled").sum()
    n_hard = guard_verdict(hard)["flags"].str.contains("garbled").sum()
    assert n_easy == 10 and n_hard == 0


def test_robust_scale_falls_back_to_the_mean_deviation_when_mad_is_zero():
    x = np.r_[np.zeros(30), 1.0, 1.0]
    med, scale = robust_center_scale(x, 3)
    assert med == 0.0 and scale == pytest.approx(1.2533 * 2 / 32)
    assert robust_center_scale(np.r_[1.0, np.nan], 3) is None


def test_missing_columns_mean_not_judged_never_clean():
    pool = planted("garbled")[["id", "ifd", "refusal"]]
    v = guard_verdict(pool)
    assert set(v.attrs["not_judged"]) == set(KINDS) - {"mismatch", "refusal"}
    assert v.attrs["not_judged"]["garbled"] == "loss_direct: signal not computed"
    assert v.attrs["partial"] == {"mismatch": ["qa_cosine: signal not computed"]}
    assert v["suspect_garbled"].isna().all() and not v["flagged"].any()
    nothing = guard_verdict(pd.DataFrame({"id": ["a", "b"]}))
    assert nothing["suspect"].isna().all() and set(nothing.attrs["not_judged"]) == set(KINDS)
    g = guard_summary(v, pool["id"])
    assert g["not_judged"]["garbled"] == "loss_direct: signal not computed" and g["flagged"] == 0


def test_a_pool_too_small_for_robust_statistics_is_not_judged_by_them():
    v = guard_verdict(clean_pool(10))
    assert "fewer than min_pool=20" in v.attrs["not_judged"]["garbled"]
    assert "mismatch" not in v.attrs["not_judged"]              # IFD >= 1 needs no pool
    assert v["suspect_garbled"].isna().all()


def test_a_nan_signal_leaves_that_row_unjudged_by_the_kind():
    pool = planted("garbled")
    pool.loc[5, "loss_direct"] = np.nan
    v = guard_verdict(pool)
    assert np.isnan(v.loc[5, "suspect_garbled"]) and 0 <= v.loc[5, "suspect"] < 0.5


def test_kinds_can_be_turned_off_and_parameters_are_checked():
    v = guard_verdict(planted("refusal"), GuardParams(kinds=["garbled"]))
    assert not v["flagged"].any() and v.attrs["not_judged"]["refusal"] == "turned off (kinds)"
    with pytest.raises(ConfigError, match="'kinds'.*'typo'"):
        build(GuardParams, {"kinds": ["typo"]}, "guard")
    with pytest.raises(ConfigError, match="'copy_cutoff'.*\\(0, 1\\]"):
        build(GuardParams, {"copy_cutoff": 1.5}, "guard")


def test_summary_counts_by_kind_with_the_most_suspect_examples_first():
    pool = clean_pool()
    pool.loc[:6, "refusal"] = 1.0
    pool.loc[3, "loss_direct"], pool.loc[4, "loss_direct"] = 9.0, 8.0
    v = guard_verdict(pool)
    g = guard_summary(v, pool["id"])
    assert g["rows"] == N and g["flagged"] == 7
    assert g["by_kind"] == {"garbled": 2, "refusal": 7}
    assert g["examples"]["garbled"] == ["r3", "r4"] and len(g["examples"]["refusal"]) == 5


# ------------------------------------------------------------------------------------------ selection and training
def test_selection_sees_only_the_candidate_rows():
    scores = pd.DataFrame({"id": list("abcdef"), "x": [9.0, 1.0, 8.0, 2.0, 7.0, 3.0]})
    sel = SelectConfig(selector="top_k", column="x", params={"k": 2})
    assert select_among(sel, scores, None, main="x", higher_is_better=True).tolist() == [0, 2]
    kept = np.array([1, 3, 4, 5])
    assert select_among(sel, scores, kept, main="x", higher_is_better=True).tolist() == [4, 5]


def test_training_on_all_rows_uses_only_the_candidates():
    tc = TrainStageConfig(rows="all")
    assert train_rows(tc, 5, {}, None, np.array([0, 2, 3])).tolist() == [0, 2, 3]
    assert train_rows(tc, 3, {}, None).tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------------ in a run
STAND_IN = textwrap.dedent('''
    """A stand-in for the guard scorers: two of their columns from the text, no model."""
    from dataclasses import dataclass

    import numpy as np

    from thresher.scoring.base import Scorer


    @dataclass
    class NoParams:
        """No parameters."""


    class TextCues(Scorer):
        """refusal (a refusal phrase) and empty (a blank response), 0/1."""
        name = "text_cues"
        Params = NoParams
        produces = {"refusal": "1 = refusal phrase", "empty": "1 = blank response"}
        main_column = "refusal"
        higher_is_better = False
        uses = ()

        def model_identity(self, ctx):
            return "none"

        def score_batch(self, rows):
            resp = [m[-1]["content"] for m in rows.messages]
            return {"refusal": np.array([float("I cannot help" in r) for r in resp]),
                    "empty": np.array([float(not r.strip(" .")) for r in resp])}


    class Chars(TextCues):
        """Response characters (the `length` recipe without its tokenizer)."""
        name = "chars"
        produces = {"chars": "response characters"}
        main_column = "chars"
        higher_is_better = True

        def score_batch(self, rows):
            return {"chars": np.array([float(len(m[-1]["content"])) for m in rows.messages])}
''')

REFUSAL = "I cannot help with that request, as it goes against my guidelines. " * 30


@pytest.fixture
def planted_run(tmp_path, monkeypatch):
    """(data file, guard recipe, longest-first recipe, planted ids): ALPACA plus three refusals longer than any
    other response."""
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "guard_standin.py").write_text(STAND_IN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    rows = [dict(r, id=f"ok{i}") for i, r in enumerate(ALPACA)]
    bad = [{"id": f"bad{i}", "instruction": f"Explain topic number {i}.", "input": "", "output": REFUSAL}
           for i in range(3)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:6] + bad + rows[6:]), encoding="utf-8")
    recipe = tmp_path / "g.yaml"
    recipe.write_text(yaml.safe_dump({"name": "g", "stages": [{"name": "signals", "score": [
        {"scorer": "guard_standin:TextCues"}]}]}), encoding="utf-8")
    longest = tmp_path / "longest.yaml"
    longest.write_text(yaml.safe_dump({"name": "longest", "stages": [{"name": "length", "score": [
        {"scorer": "guard_standin:Chars"}], "select": {"selector": "top_k", "params": {"ratio": 0.25}}}]}),
        encoding="utf-8")
    return data, recipe, longest, [b["id"] for b in bad]


def test_guarded_run_never_selects_a_flagged_row_and_lists_it_by_reason(planted_run, tmp_path, capsys):
    data, guard_recipe, longest, bad = planted_run
    common = ["--data", str(data), "--cache-dir", str(tmp_path / "cache")]
    assert main(["run", str(longest), "--out", str(tmp_path / "plain"), *common]) == 0
    plain = (tmp_path / "plain" / "selected_ids.txt").read_text().split()
    assert plain[:3] == bad                              # unguarded, the long refusals win the selection
    capsys.readouterr()
    out = tmp_path / "guarded"
    assert main(["run", str(longest), "--guard", "--set", f"guard.recipe={guard_recipe}", "--out", str(out),
                 *common]) == 0
    printed = capsys.readouterr().out
    kept = (out / "selected_ids.txt").read_text().split()
    assert not set(bad) & set(kept) and len(kept) == round(0.25 * 16)    # the ratio counts the kept rows only
    summary = json.loads((out / "summary.json").read_text())
    g = summary["guard"]
    assert g["rows"] == 19 and g["flagged"] == 3 and g["dropped"] == 3
    assert g["by_kind"] == {"refusal": 3} and sorted(g["examples"]["refusal"]) == bad
    assert set(g["not_judged"]) == set(KINDS) - {"refusal", "empty"}
    assert "guard: 3 of 19 rows flagged, left out of every selection" in printed
    assert "  refusal: 3 row(s), e.g. " in printed and "not judged: garbled (loss_direct: signal not computed)" in printed
    table = pd.read_parquet(out / "guard" / "scores.parquet")
    assert table.loc[table["flagged"], "id"].tolist() == bad
    assert {"id", "row", "refusal", "empty", "flagged", "flags", "reason", "suspect", "suspect_refusal"} <= set(table)
    flagged = [json.loads(line) for line in (out / "guard" / "flagged.jsonl").read_text().splitlines()]
    assert [r["id"] for r in flagged] == bad and flagged[0]["output"] == REFUSAL
    assert flagged[0]["_guard_flags"] == "refusal" and flagged[0]["_guard_reason"] == "refusal: refusal pattern"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["guard"]["config"]["enabled"] is True and manifest["guard"]["scorers"][0]["scorer"] == "text_cues"
    stage = pd.read_parquet(out / "length" / "scores.parquet")
    assert not stage.loc[stage["id"].isin(bad), "selected"].any()
    # the guard's signals came from the score cache the second time; turning it off brings the rows back
    assert main(["run", str(longest), "--no-guard", "--set", f"guard.recipe={guard_recipe}", "--out", str(out),
                 *common]) == 0
    assert (out / "selected_ids.txt").read_text().split()[:3] == bad and not (out / "guard").exists()


def test_python_api_guard_keyword_is_the_cli_flag(planted_run, tmp_path):
    """thresher.run(..., guard=True) selects what `thresher run --guard` selects; guard=False what --no-guard does."""
    import thresher

    data, guard_recipe, longest, bad = planted_run
    opts = {"guard.recipe": str(guard_recipe), "cache_dir": str(tmp_path / "cache")}
    assert main(["run", str(longest), "--guard", "--set", f"guard.recipe={guard_recipe}", "--data", str(data),
                 "--out", str(tmp_path / "cli"), "--cache-dir", str(tmp_path / "cache")]) == 0
    on = thresher.run(str(longest), data=str(data), out=tmp_path / "api", guard=True, **opts)
    assert on.selected_ids == (tmp_path / "cli" / "selected_ids.txt").read_text().split()
    assert not set(bad) & set(on.selected_ids) and on.summary["guard"]["dropped"] == 3
    off = thresher.run(str(longest), data=str(data), out=tmp_path / "api_off", guard=False, **opts)
    assert off.selected_ids[:3] == bad and "guard" not in off.summary


def test_guard_command_writes_the_verdict_and_the_flagged_records(planted_run, tmp_path, capsys):
    data, guard_recipe, _, bad = planted_run
    out = tmp_path / "g"
    assert main(["guard", str(data), "--out", str(out), "--set", f"guard.recipe={guard_recipe}",
                 "--kinds", "refusal,empty", "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    table = pd.read_parquet(out / "scores.parquet")
    assert table.loc[table["flagged"], "id"].tolist() == bad and table["row"].tolist() == list(range(19))
    assert [json.loads(x)["id"] for x in (out / "flagged.jsonl").read_text().splitlines()] == bad
    g = json.loads((out / "summary.json").read_text())["guard"]
    assert g["by_kind"] == {"refusal": 3} and "dropped" not in g
    assert g["not_judged"]["garbled"] == "turned off (kinds)"
    assert f"guard: 3 of 19 rows flagged -> {out / 'flagged.jsonl'}" in printed


def test_guard_block_is_checked_with_the_recipe(tmp_path):
    with pytest.raises(ConfigError, match="guard has no parameter 'z_cutof'"):
        load_recipe("length", {"guard": {"enabled": True, "z_cutof": 3}})
    with pytest.raises(ConfigError, match="cannot use it"):
        load_recipe("clues", {"guard": {"enabled": True}})
    load_recipe("length", {"guard": {"z_cutoff": 4.0}})              # off: nothing else is loaded


# ------------------------------------------------------------------------------------------ the real guard scorers
def _planted_sharegpt(tmp_path) -> tuple:
    """ALPACA rows and planted corruptions: refusals, instruction copies, loops (each longer than any clean
    response, so `length` would keep them)."""
    rows = [dict(r, id=f"ok{i}") for i, r in enumerate(ALPACA)]
    bad = []
    for i, r in enumerate(ALPACA[:3]):
        bad.append({"id": f"refusal{i}", "instruction": r["instruction"], "input": r["input"], "output": REFUSAL})
        bad.append({"id": f"loop{i}", "instruction": r["instruction"], "input": r["input"],
                    "output": "the the cat sat on the mat and " * 60})
        bad.append({"id": f"copy{i}", "instruction": r["instruction"] * 12, "input": "",
                    "output": r["instruction"] * 12})
    data = tmp_path / "planted.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows + bad), encoding="utf-8")
    return data, [b["id"] for b in bad]


def test_guarded_length_with_the_guard_scorers_drops_the_planted_rows(tmp_path):
    data, bad = _planted_sharegpt(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "length", "--guard", "--data", str(data), "--out", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--set", "stages.0.select.params.ratio=0.3", "--set",
                 "guard.min_pool=5"]) == 0
    kept = (out / "selected_ids.txt").read_text().split()
    g = json.loads((out / "summary.json").read_text())["guard"]
    assert not set(bad) & set(kept)
    assert {"refusal", "repetition", "copy"} <= set(g["by_kind"])
    verdict = pd.read_parquet(out / "guard" / "scores.parquet")
    assert set(bad) <= {i for ids in g["examples"].values() for i in ids} | set(verdict.query("flagged")["id"])
    # the report shows the verdict: counts by kind, rows left out, the most suspect rows with their reasons
    section = render([out])
    section = section[section.index("<h4>Noise guard</h4>"):section.index("</table></div>", section.index(
        "Most suspect rows per kind"))]
    assert f"<th>flagged</th><td>{g['flagged']}</td>" in section and "left out of the selections" in section
    assert all(f"{kind}: {n}" in section for kind, n in g["by_kind"].items())
    shown = verdict.set_index("id").loc[g["examples"]["refusal"][0]]
    assert html.escape(shown["reason"], quote=True) in section


def test_guard_command_end_to_end_on_a_planted_set(tmp_path, capsys):
    data, bad = _planted_sharegpt(tmp_path)
    out = tmp_path / "g"
    assert main(["guard", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--min-pool", "5"]) == 0
    table = pd.read_parquet(out / "scores.parquet")
    flagged = set(table.loc[table["flagged"], "id"])
    assert set(bad) <= flagged
    assert len(flagged - set(bad)) <= 2                       # clean rows are rarely flagged (<= 2 of 16)
    by_id = table.set_index("id")
    assert by_id.loc[[b for b in bad if b.startswith("loop")], "flags"].str.contains("repetition").all()
    assert by_id.loc[[b for b in bad if b.startswith("refusal")], "flags"].str.contains("refusal").all()
    assert "guard: " in capsys.readouterr().out
