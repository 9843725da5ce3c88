"""The command line end to end: run, score, select, validate, ls, --help.

Real-model tests use few short rows and max_length 128 (seconds each on a CPU); error paths and
validation load no model and are checked to be quick.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from thresher.cli import main
from thresher.data import load
from thresher.data.readers import bundled_sharegpt_path
from thresher.pipeline.recipe import PACKAGED

from samples import ALPACA   # 16 short real-style alpaca records shared by the tests


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """`python -m thresher ARGS` in a subprocess (it inherits THRESHER_CACHE: the converted model)."""
    return subprocess.run([sys.executable, "-m", "thresher", *map(str, args)], capture_output=True,
                          text=True, env=env or os.environ.copy(), timeout=timeout)


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_lines(path: Path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def first_records(path: Path, n: int) -> list[dict]:
    """The first ``n`` records of a (possibly huge, cut-off) JSON array, decoded independently of
    thresher's reader."""
    text = open(path, encoding="utf-8").read(8_000_000)
    dec, ws = json.JSONDecoder(), re.compile(r"[\s,]*")
    pos, out = text.index("[") + 1, []
    while len(out) < n:
        rec, pos = dec.raw_decode(text, ws.match(text, pos).end())
        out.append(rec)
    return out


def default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def ranked(values: np.ndarray, cand: np.ndarray, descending: bool) -> list[int]:
    """Candidate indices best first, ties by lower index (an independent re-statement of top-k)."""
    idx = [i for i in range(len(values)) if cand[i] and not np.isnan(values[i])]
    return sorted(idx, key=lambda i: (-values[i] if descending else values[i], i))


# ------------------------------------------------------------------------------------ run
@pytest.mark.slow
def test_run_superfiltering_on_bundled_slice(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["run", "superfiltering", "--limit", "12", "--set", "stages.0.score.0.params.max_length=128",
            "--out", str(run), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out

    manifest = read_json(run / "manifest.json")
    assert manifest["argv"] == ["thresher", *argv]
    assert manifest["versions"]["torch"] == metadata.version("torch")
    assert manifest["versions"]["transformers"] == metadata.version("transformers")
    recipe = manifest["recipe"]
    assert recipe["name"] == "superfiltering" and recipe["data"]["limit"] == 12
    assert recipe["stages"][0]["score"][0]["params"]["max_length"] == 128
    report = manifest["data"]["report"]
    assert manifest["data"]["rows"] == report["n_kept"] == 12
    assert report["path"] == str(bundled_sharegpt_path()) and report["fmt"] == "sharegpt"
    assert report["n_read"] == 12 + sum(report["skipped"].values())
    # --limit stops reading long before the file's cut-off (that report: test_cut_off_file_...).
    assert report["truncated"] is None
    stage = manifest["stages"][0]
    assert stage["name"] == "ifd" and stage["model"] == "bundled"
    scorer = stage["scorers"][0]
    assert scorer["model_identity"].startswith("bundled:smollm2:SmolLM2-135M-Instruct.Q4_1.gguf:")
    assert scorer["params"]["variant"] == "ppl_ratio" and scorer["params"]["max_length"] == 128
    assert scorer["cache"]["computed"] == 12

    scores = pd.read_parquet(run / "scores.parquet")
    assert {"id", "ifd", "status"} <= set(scores.columns) and len(scores) == 12
    originals = {r["id"]: r for r in first_records(bundled_sharegpt_path(), report["n_read"])}
    assert set(scores["id"]) <= set(originals)

    # Superfiltering: IFD < 1, highest first, int(0.1 * 12) = 1 row.
    ifd = scores["ifd"].to_numpy(dtype=float)
    expected = [scores["id"][i] for i in ranked(ifd, ifd < 1, descending=True)[:int(0.1 * 12)]]
    ids = read_lines(run / "selected_ids.txt")
    assert ids == expected and len(ids) == 1
    selected = read_json(run / "selected.json")
    assert selected == [originals[i] for i in ids]          # each record exactly as in the input
    assert (run / "ifd" / "selected.json").read_bytes() == (run / "selected.json").read_bytes()

    assert "selected 1 kept / 11 dropped" in out
    assert re.search(r"ifd: \d+ scored, \d+ NaN  \|  min \S+  p05 \S+  p25 \S+  p50 \S+", out)
    # Outputs get the user's usual file mode (not mkstemp's private 0600).
    for name in ("manifest.json", "scores.parquet", "selected.json", "selected_ids.txt", "summary.json"):
        assert (run / name).stat().st_mode & 0o777 == default_mode(), name


@pytest.mark.slow
def test_run_cherry_pre_experience_train_then_ifd(tmp_path, capsys, caplog):
    """The whole Cherry method: pre-experience selection, a brief fine-tune on exactly those rows, IFD with
    the pre-experienced model, selection; a second run reuses every stage (nothing re-scored or re-trained)."""
    run = tmp_path / "run"
    argv = ["run", "cherry", "--limit", "16", "--set", "stages.0.score.0.params.max_length=128",
            "--set", "stages.1.train.params.max_length=128", "--set", "stages.1.train.params.batch_size=8",
            "--set", "stages.1.train.params.lr=0.0002",
            "--set", "stages.2.score.0.params.max_length=128", "--out", str(run),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    manifest = read_json(run / "manifest.json")
    assert [s["name"] for s in manifest["stages"]] == ["pre_experience", "pre_train", "ifd"]
    assert [s["scorers"][0]["cache"]["computed"] for s in manifest["stages"] if "scorers" in s] == [16, 16]
    assert "stage pre_experience" in out and "stage pre_train" in out and "stage ifd" in out

    # Stage 1: 16 rows < 100 clusters -> one cluster per row, each smaller than per_cluster=10, so
    # every row with a finite instruction perplexity is picked, in dataset order.
    pre = pd.read_parquet(run / "pre_experience" / "scores.parquet")
    assert len(pre) == 16 and {"ppl", "embedding"} <= set(pre.columns)
    assert "only 16 rows for n_clusters=100; using n_clusters=16" in caplog.text
    ppl = pre["ppl"].to_numpy(dtype=float)
    pre_ids = read_lines(run / "pre_experience" / "selected_ids.txt")
    assert pre_ids == [pre["id"][i] for i in np.flatnonzero(np.isfinite(ppl))]
    pre_sel = read_json(run / "pre_experience" / "selected.json")
    assert 0 < len(pre_sel) <= 16
    originals = {r["id"]: r for r in first_records(bundled_sharegpt_path(), manifest["data"]["report"]["n_read"])}
    assert pre_sel == [originals[i] for i in pre_ids]

    # Stage 2: the base model fine-tuned (full, Cherry's preset) on exactly the pre-experience rows.
    trained = read_json(run / "pre_train" / "train_ids.json")
    assert sorted(trained["ids"] + list(trained["skipped"])) == sorted(pre_ids)
    assert manifest["stages"][1]["rows"] == pre_ids
    cfg = read_json(run / "pre_train" / "config.json")
    assert cfg["preset"] == "cherry" and cfg["config"]["lora"] is False and cfg["config"]["epochs"] == 1
    final = run / "pre_train" / "final"
    assert (final / "config.json").exists()

    # Stage 3: IFD with the pre-experienced model, equal to scoring with that folder directly, and not the
    # base model's IFD; cherry keeps int(0.06 * survivors) of the IFD <= 1 rows.
    ifd = pd.read_parquet(run / "ifd" / "scores.parquet")
    assert manifest["stages"][2]["model"] == str(final)
    direct = tmp_path / "direct"
    assert main(["score", str(run / "pre_experience" / "selected.json"), "--scorer", "ifd", "--model", str(final),
                 "--max-length", "128", "--span-rule", "cherry", "--turns", "first", "--out", str(direct),
                 "--cache-dir", str(tmp_path / "cache2")]) == 0
    d = pd.read_parquet(direct / "scores.parquet").set_index("id")["ifd"]
    np.testing.assert_allclose(ifd.set_index("id").loc[d.index, "ifd"], d, rtol=1e-5)
    base = tmp_path / "base"
    assert main(["score", str(run / "pre_experience" / "selected.json"), "--scorer", "ifd", "--max-length", "128",
                 "--span-rule", "cherry", "--turns", "first", "--out", str(base),
                 "--cache-dir", str(tmp_path / "cache2")]) == 0
    assert np.nanmax(np.abs(pd.read_parquet(base / "scores.parquet")["ifd"].to_numpy() - d.to_numpy())) > 1e-3
    assert list(ifd["id"]) == list(pre["id"])
    survivors = int((ifd["ifd"] <= 1).sum())
    assert len(read_lines(run / "ifd" / "selected_ids.txt")) == int(0.06 * survivors)
    assert read_json(run / "selected.json") == read_json(run / "ifd" / "selected.json")

    # Again: every score from the cache, the finished training left as it is.
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    again = read_json(run / "manifest.json")
    assert [s["scorers"][0]["cache"]["computed"] for s in again["stages"] if "scorers" in s] == [0, 0]
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp
    assert read_lines(run / "ifd" / "selected_ids.txt") == read_lines(run / "selected_ids.txt")


# ------------------------------------------------------------------------------------ score + select
@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """`thresher score` on 16 short alpaca rows (ifd, loss ratio, alpaca template)."""
    base = tmp_path_factory.mktemp("scored")
    data, run = write_jsonl(base / "alpaca.jsonl", ALPACA), base / "run"
    assert main(["score", str(data), "--scorer", "ifd", "--out", str(run), "--cache-dir", str(base / "cache"),
                 "--shard-size", "8", "--max-length", "128"]) == 0
    return data, run


def select(run, out, *extra) -> int:
    return main(["select", str(run), "--out", str(out), *map(str, extra)])


@pytest.mark.slow
def test_select_top_ratio_writes_original_lines(scored, tmp_path, capsys):
    data, run = scored
    out = tmp_path / "sel.jsonl"
    assert select(run, out, "--top-ratio", 0.25) == 0
    msg = capsys.readouterr().out
    scores = pd.read_parquet(run / "scores.parquet")
    assert list(scores["id"]) == load(data).ids
    ifd, n = scores["ifd"].to_numpy(dtype=float), len(scores)

    pick = ranked(ifd, ifd < 1, descending=True)[:int(0.25 * n)]      # default filter ifd < 1
    assert len(pick) == int(0.25 * n) == 4
    lines = read_lines(data)
    assert read_lines(out) == [lines[i] for i in pick]                # the original lines, unchanged
    assert [json.loads(x) for x in read_lines(out)] == [ALPACA[i] for i in pick]
    assert read_lines(tmp_path / "sel.jsonl.ids.txt") == [scores["id"][i] for i in pick]
    assert f"selected 4 of {n} rows by top_k on ifd" in msg and "--where none" in msg
    sel_manifest = read_json(tmp_path / "sel.jsonl.manifest.json")
    assert sel_manifest["selected"] == 4 and sel_manifest["select"]["params"]["where"] == {"ifd": {"lt": 1.0}}
    assert sel_manifest["argv"][:2] == ["thresher", "select"]


@pytest.mark.slow
def test_select_where_none_and_lower_is_better(scored, tmp_path):
    data, run = scored
    scores = pd.read_parquet(run / "scores.parquet")
    ifd = scores["ifd"].to_numpy(dtype=float)
    # The data holds a response the instruction does not help predict ("The Daily Grind."), so the
    # default ifd<1 filter matters at the top.
    assert np.nanmax(ifd) >= 1
    lines = read_lines(data)

    def chosen(*extra) -> list[str]:
        out = tmp_path / f"sel{len(list(tmp_path.iterdir()))}.jsonl"
        assert select(run, out, "--top-k", 4, *extra) == 0
        return read_lines(out)

    default = chosen()
    everything = np.ones(len(ifd), dtype=bool)
    no_filter = chosen("--where", "none")
    assert no_filter == [lines[i] for i in ranked(ifd, everything, True)[:4]]
    assert no_filter[0] == lines[int(np.nanargmax(ifd))] and no_filter != default
    lowest = chosen("--lower-is-better")
    assert lowest == [lines[i] for i in ranked(ifd, ifd < 1, False)[:4]]
    assert set(lowest).isdisjoint(default)
    strict = chosen("--where", "ifd<0.7")
    assert strict == [lines[i] for i in ranked(ifd, ifd < 0.7, True)[:4]]


@pytest.mark.slow
def test_select_other_column_needs_a_direction(scored, tmp_path, capsys):
    data, run = scored
    out = tmp_path / "sel.jsonl"
    assert select(run, out, "--top-k", 3, "--column", "loss_cond") == 2
    err = capsys.readouterr().err
    assert "loss_cond" in err and "--higher-is-better or --lower-is-better" in err
    assert "Traceback" not in err and not out.exists()

    assert select(run, out, "--top-k", 3, "--column", "loss_cond", "--lower-is-better") == 0
    scores = pd.read_parquet(run / "scores.parquet")
    loss = scores["loss_cond"].to_numpy(dtype=float)
    lines = read_lines(data)
    assert read_lines(out) == [lines[i] for i in ranked(loss, np.ones(len(loss), bool), False)[:3]]

    assert select(run, out, "--top-k", 3, "--column", "nope", "--lower-is-better") == 2
    assert "nope" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ bad input
GOOD = '{"instruction": "Name a color.", "input": "", "output": "Blue."}\n'
LATIN1_LINE = b'{"instruction": "Say caf\xe9.", "input": "", "output": "Caf\xe9."}\n'
BAD_BYTE_OFFSET = len(GOOD) + LATIN1_LINE.index(b"\xe9")
BAD_INPUTS = {
    "malformed_line": ((GOOD * 2 + '{"instruction": "Name a tree.", "input": "", "output": \n' + GOOD).encode(),
                       ["line 3", "is not valid JSON", "column 56"]),
    "missing_output": ((GOOD + '{"instruction": "Name a fruit.", "input": ""}\n').encode(),
                       ["line 2", "field 'output'", "missing"]),
    "not_utf8": (GOOD.encode() + LATIN1_LINE,
                 ["line 2", "not valid UTF-8", "0xe9", f"byte offset {BAD_BYTE_OFFSET}"]),
    "unknown_keys": (b'{"prompt": "Name a color.", "completion": "Blue."}\n',
                     ["line 1", "cannot detect the record format", "'prompt', 'completion'", "--format"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_a_specific_message(tmp_path, case):
    content, expected = BAD_INPUTS[case]
    data = tmp_path / f"{case}.jsonl"
    data.write_bytes(content)
    out = tmp_path / "run"
    res = cli("score", data, "--scorer", "ifd", "--out", out, "--cache-dir", tmp_path / "cache")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"thresher: error: {data}, " in res.stderr
    for part in expected:
        assert part in res.stderr, (part, res.stderr)
    assert not (out / "scores.parquet").exists()
    assert "loaded bundled" not in res.stderr           # the data fails before any model is loaded


@pytest.mark.slow
def test_cut_off_file_is_strict_unless_lenient(tmp_path, capsys):
    data = tmp_path / "cut.json"
    text = json.dumps(ALPACA[:5], indent=2, ensure_ascii=False)
    data.write_text(text[:text.rindex('"output"')], encoding="utf-8")    # the 5th record is cut off
    out = tmp_path / "run"
    args = ["score", str(data), "--scorer", "length", "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cut off" in err and "--lenient" in err and not (out / "scores.parquet").exists()

    assert main([*args, "--lenient"]) == 0
    printed = capsys.readouterr().out
    report = read_json(out / "manifest.json")["data"]["report"]
    assert "cut off" in report["truncated"] and "4 complete records" in report["truncated"]
    assert f"input: {report['truncated']}" in printed
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 4 and scores["resp_chars"].tolist() == [len(r["output"]) for r in ALPACA[:4]]


# ------------------------------------------------------------------------------------ validate, ls, help
def _recipe_file(path: Path, edit) -> Path:
    raw = yaml.safe_load((PACKAGED / "superfiltering.yaml").read_text(encoding="utf-8"))
    edit(raw)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _validate(tmp_path, *args):
    env = {**os.environ, "THRESHER_CACHE": str(tmp_path / "fresh-cache")}
    t0 = time.perf_counter()
    res = cli("validate", *args, env=env, timeout=60)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"validate took {elapsed:.1f} s"
    assert not (tmp_path / "fresh-cache" / "models").exists()     # no model converted or loaded
    assert "Traceback" not in res.stderr
    return res


def test_validate_unknown_key(tmp_path):
    path = _recipe_file(tmp_path / "r.yaml", lambda r: r.update(seeed=1))
    res = _validate(tmp_path, path)
    assert res.returncode == 2
    assert str(path) in res.stderr and "'seeed'" in res.stderr and "Did you mean 'seed'?" in res.stderr

    nested = _recipe_file(tmp_path / "n.yaml",
                          lambda r: r["stages"][0]["score"][0]["params"].update(max_lenght=128))
    res = _validate(tmp_path, nested)
    assert res.returncode == 2 and "'max_lenght'" in res.stderr and "Did you mean 'max_length'?" in res.stderr


def test_validate_bad_selector_parameter(tmp_path):
    def misspell(r):
        r["stages"][0]["select"]["params"]["filter_bellow"] = r["stages"][0]["select"]["params"].pop("filter_below")
    res = _validate(tmp_path, _recipe_file(tmp_path / "r.yaml", misspell))
    assert res.returncode == 2
    assert "'filter_bellow'" in res.stderr and "Did you mean 'filter_below'?" in res.stderr

    # A bad value is caught before any scoring too, not after the model has run over the data.
    res = _validate(tmp_path, "superfiltering", "--set", "stages.0.select.params.ratio=1.5")
    assert res.returncode == 2 and "'ratio'" in res.stderr and "(0, 1]" in res.stderr and "1.5" in res.stderr
    res = _validate(tmp_path, "length", "--set", "stages.0.select.params.k=5")
    assert res.returncode == 2 and "exactly one of the 'k' and 'ratio'" in res.stderr


def test_validate_packaged_recipes(tmp_path):
    res = _validate(tmp_path, "superfiltering")
    assert res.returncode == 0, res.stderr
    assert "ok: recipe 'superfiltering'" in res.stdout and "ifd [ifd -> superfiltering]" in res.stdout
    res = _validate(tmp_path, "cherry")
    assert res.returncode == 0, res.stderr
    assert "pre_experience [perplexity -> cherry_pre_experience]" in res.stdout
    assert "ifd [ifd -> cherry_ifd]" in res.stdout
    res = _validate(tmp_path, "superfilterin")
    assert res.returncode == 2 and "Did you mean 'superfiltering'?" in res.stderr


def _section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"{title}:") + 1
    body = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        body.append(line.split()[0])
    return body


def test_ls_lists_scorers_and_recipes(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert {"ifd", "perplexity", "length", "random"} <= set(_section(out, "scorers"))
    assert {"superfiltering", "cherry", "perplexity", "length", "random", "full"} <= set(_section(out, "recipes"))
    assert {"top_k", "superfiltering", "cherry_ifd", "cherry_pre_experience"} <= set(_section(out, "selectors"))
    assert main(["ls", "scorers"]) == 0
    only = capsys.readouterr().out
    assert "scorers:" in only and "recipes:" not in only


def test_module_help():
    res = cli("--help", timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("usage: thresher")
    for command in ("run", "score", "select", "validate", "ls"):
        assert command in res.stdout
    res = cli("score", "--help", timeout=60)
    assert res.returncode == 0 and "--cache-dir" in res.stdout and "--max-length" in res.stdout
    res = cli("frobnicate", timeout=60)
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_output_cut_short_by_the_reader_is_not_an_error():
    """`thresher ls | head -1`: the reader closes the pipe before thresher writes; thresher stops quietly
    (status 141 as for SIGPIPE, nothing on stderr) instead of reporting an internal error."""
    proc = subprocess.Popen([sys.executable, "-m", "thresher", "ls"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                     # the reader is gone before the first byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_version_prints_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"thresher {metadata.version('thresher')}"
