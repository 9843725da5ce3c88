"""The Python API (thresher.api, thresher.load/score/select/run/report): the same rows, ids, scores and selections
as the CLI on the same records, for a list of dicts, a pandas DataFrame and a datasets.Dataset; the same errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

import thresher
from thresher.cli import main
from thresher.data import load
from thresher.data.fingerprint import row_hashes
from thresher.errors import ConfigError, DataError

from samples import ALPACA

SRC = Path(__file__).resolve().parents[1] / "src"
# The input kinds: a maker from a list of records, the type that comes back, and the records of an object.
KINDS = {
    "list": (lambda recs: [dict(r) for r in recs], list, lambda obj: list(obj)),
    "DataFrame": (pd.DataFrame, pd.DataFrame, lambda obj: obj.to_dict(orient="records")),
    "Dataset": (datasets.Dataset.from_list, datasets.Dataset, lambda obj: obj.to_list()),
}
SHAREGPT = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"Question {i}?"},
                                              {"from": "gpt", "value": "word " * (i % 5 + 1)}]} for i in range(6)]


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _without(records, columns) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in columns} for r in records]


# ---------------------------------------------------------------------------------------------------- load
@pytest.mark.parametrize("records", [ALPACA, SHAREGPT], ids=["alpaca", "sharegpt"])
@pytest.mark.parametrize("kind", KINDS)
def test_load_in_memory_gives_the_ids_and_row_hashes_of_a_jsonl_file(tmp_path, kind, records):
    from_file = load(_jsonl(tmp_path / "d.jsonl", records))
    make = KINDS[kind][0]
    for ds in (thresher.load(make(records)), load(make(records), stream=True)):
        assert list(ds.ids) == list(from_file.ids)
        assert list(row_hashes(ds)) == list(row_hashes(from_file))
        assert ds.raw == from_file.raw and ds.fmt == from_file.fmt


def test_load_a_dataframe_read_from_parquet(tmp_path):
    """read_parquet gives numpy arrays for list columns: read as the lists they hold."""
    pd.DataFrame(SHAREGPT).to_parquet(tmp_path / "s.parquet")
    frame = pd.read_parquet(tmp_path / "s.parquet")
    assert isinstance(frame["conversations"][0], np.ndarray)
    assert thresher.load(frame).raw == SHAREGPT


@pytest.mark.parametrize("kind,missing,reason", [
    ("list", "the field is missing", "missing field 'output'"),
    ("DataFrame", "the value is null", "wrong type for 'output'"),      # a DataFrame fills the gap with NaN
])
def test_a_bad_record_in_memory_is_a_data_error_naming_its_index_and_field(kind, missing, reason):
    records = [dict(r) for r in ALPACA[:4]]
    records[2]["output"] = "   "
    with pytest.raises(DataError, match=rf"^<{kind}>, record 2, field 'output': the response is empty"):
        thresher.load(KINDS[kind][0](records))
    del records[2]["output"]
    with pytest.raises(DataError, match=rf"record 2, field 'output': {missing}"):
        thresher.load(KINDS[kind][0](records))
    kept = thresher.load(KINDS[kind][0](records), on_invalid="skip")
    assert len(kept) == 3 and kept.report.skipped == {reason: 1}


def test_load_refuses_other_objects():
    with pytest.raises(ConfigError, match="a list of record dicts, a pandas DataFrame or a datasets.Dataset"):
        thresher.load({"instruction": "x", "output": "y"})
    with pytest.raises(ConfigError, match="has no option 'fmt'"):
        thresher.load(ALPACA, fmt="alpaca")


# ---------------------------------------------------------------------------------------------------- score/select
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """ALPACA scored and selected by the CLI: (folder, scores, selected records of --top-ratio 0.25, of the
    superfiltering-style top_k with --where resp_chars<60)."""
    base = tmp_path_factory.mktemp("cli")
    data = _jsonl(base / "alpaca.jsonl", ALPACA)
    assert main(["-q", "score", str(data), "--scorer", "length", "--turns", "first", "--out", str(base / "run")]) == 0
    assert main(["-q", "select", str(base / "run"), "--top-ratio", "0.25", "--out", str(base / "sel.jsonl")]) == 0
    assert main(["-q", "select", str(base / "run"), "--top-k", "3", "--where", "resp_chars<60",
                 "--out", str(base / "where.jsonl")]) == 0
    return (base, pd.read_parquet(base / "run" / "scores.parquet"), _read_jsonl(base / "sel.jsonl"),
            _read_jsonl(base / "where.jsonl"))


@pytest.mark.parametrize("kind", KINDS)
def test_score_and_select_match_the_cli(cli_run, kind):
    _, cli_scores, cli_selected, cli_where = cli_run
    make, returned, records_of = KINDS[kind]
    data = make(ALPACA)
    scored = thresher.score(data, "length", turns="first")
    assert type(scored) is returned
    columns = [c for c in cli_scores.columns if c not in ("id", "row")]
    assert columns == ["resp_tokens", "resp_chars"]
    for c in columns:
        assert list(scored[c] if kind != "list" else [r[c] for r in scored]) == cli_scores[c].tolist()
    assert _without(records_of(scored), columns) == ALPACA          # the input's rows, in order
    if kind == "list":
        assert "resp_tokens" not in data[0]                          # the input is left as it was
    subset = thresher.select(scored, ratio=0.25)
    assert type(subset) is returned
    assert _without(records_of(subset), columns) == cli_selected     # the same rows, in selection order
    where = thresher.select(scored, "top_k", k=3, where="resp_chars<60")
    assert _without(records_of(where), columns) == cli_where
    assert records_of(thresher.select(scored, k=3, where={"resp_chars": {"lt": 60}})) == records_of(where)


def test_score_a_path_gives_a_dataframe_and_keeps_out(cli_run, tmp_path):
    base, cli_scores, _, _ = cli_run
    scored = thresher.score(str(base / "alpaca.jsonl"), "length", turns="first", out=tmp_path / "run")
    assert isinstance(scored, pd.DataFrame)
    assert scored["resp_tokens"].tolist() == cli_scores["resp_tokens"].tolist()
    assert _without(scored.to_dict(orient="records"), ("resp_tokens", "resp_chars")) == ALPACA
    assert pd.read_parquet(tmp_path / "run" / "scores.parquet").equals(cli_scores)


def test_score_keeps_the_rows_loading_kept_and_replaces_existing_score_columns():
    records = [dict(r) for r in ALPACA[:5]]
    records[1] = {"instruction": "no output"}
    frame = pd.DataFrame(records, index=[10, 11, 12, 13, 14])
    scored = thresher.score(frame, "length", on_invalid="skip")
    assert list(scored.index) == [10, 12, 13, 14]
    again = thresher.score(scored, "length", turns="first", on_invalid="skip")
    assert list(again.columns).count("resp_tokens") == 1
    hf = thresher.score(datasets.Dataset.from_list(records), "length", on_invalid="skip")
    assert hf["instruction"] == [r["instruction"] for r in records if "output" in r]
    assert thresher.score(hf, "length").column_names.count("resp_tokens") == 1


def test_select_errors_are_the_clis(cli_run, capsys):
    base, *_ = cli_run
    scored = thresher.score(ALPACA, "length", turns="first")
    assert main(["select", str(base / "run"), "--selector", "lenght", "--top-k", "2",
                 "--out", str(base / "x.jsonl")]) == 2
    cli_message = capsys.readouterr().err.strip().removeprefix("thresher: error: ")
    with pytest.raises(ConfigError) as err:
        thresher.select(scored, "lenght", k=2)
    assert str(err.value) == cli_message
    with pytest.raises(ConfigError, match=r"'length' is a recipe, not a selector: thresher.run\('length'.*top_k"):
        thresher.select(scored, "length", k=2)
    with pytest.raises(ConfigError, match="not the scorer's main column"):
        thresher.select(scored, column="resp_chars", k=2)
    assert [r["resp_chars"] for r in thresher.select(scored, column="resp_chars", k=2, higher_is_better=False)] \
        == sorted(r["resp_chars"] for r in scored)[:2]


def test_score_errors_are_the_clis(tmp_path, capsys):
    bad = _jsonl(tmp_path / "bad.jsonl", [ALPACA[0], {"instruction": "x", "output": 3}])
    assert main(["score", str(bad), "--scorer", "length", "--out", str(tmp_path / "run")]) == 2
    cli_message = capsys.readouterr().err.strip().removeprefix("thresher: error: ")
    with pytest.raises(DataError) as err:
        thresher.score(str(bad), "length")
    # the same message, the option named as each surface spells it (thresher.errors.as_option)
    assert "--on-invalid skip" in cli_message
    assert str(err.value) == cli_message.replace("--on-invalid skip", "on_invalid='skip'")
    with pytest.raises(ConfigError, match="turns"):
        thresher.score(ALPACA, "length", turns="middle")


# ---------------------------------------------------------------------------------------------------- run / Run
@pytest.mark.parametrize("kind", KINDS)
def test_run_in_memory_matches_cli_run(cli_run, tmp_path, kind, capsys):
    base, *_ = cli_run
    ratio = {"stages.0.select.params.ratio": 0.25}
    assert main(["-q", "run", "length", "--data", str(base / "alpaca.jsonl"), "--out", str(tmp_path / "cli"),
                 "--set", "stages.0.select.params.ratio=0.25"]) == 0
    make, returned, records_of = KINDS[kind]
    run = thresher.run("length", data=make(ALPACA), out=tmp_path / "api", **ratio)
    assert run.selected_ids == (tmp_path / "cli" / "selected_ids.txt").read_text().splitlines()
    assert run.scores.equals(pd.read_parquet(tmp_path / "cli" / "scores.parquet"))
    assert type(run.selected) is returned
    assert records_of(run.selected) == _read_jsonl(tmp_path / "cli" / "selected.jsonl")
    memory = run.manifest["data"]["memory"]
    assert memory["rows"] == len(ALPACA) and len(memory["rows_sha256"]) == 64
    assert records_of(thresher.select(run, k=2)) == records_of(run.selected)[:2]
    # `thresher select` cannot read in-memory data again: it says so.
    assert main(["select", str(tmp_path / "api"), "--top-k", "2", "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "scored on data given in memory" in capsys.readouterr().err


def test_run_memory_fingerprint_is_the_records(tmp_path):
    a = thresher.run("length", data=ALPACA, out=tmp_path / "a")
    b = thresher.run("length", data=pd.DataFrame(ALPACA), out=tmp_path / "b")
    c = thresher.run("length", data=ALPACA[1:], out=tmp_path / "c")
    fp = [r.manifest["data"]["memory"]["rows_sha256"] for r in (a, b, c)]
    assert fp[0] == fp[1] != fp[2]


def test_run_opens_an_existing_folder(cli_run, tmp_path):
    base, cli_scores, _, _ = cli_run
    run = thresher.Run(base / "run")
    assert run.scores.equals(cli_scores) and run.stage_scores("length").equals(cli_scores)
    assert run.summary["rows"] == len(ALPACA) and run.manifest["stages"][0]["name"] == "length"
    assert "\n" not in repr(run) and "length" in repr(run)
    with pytest.raises(ConfigError, match="selected nothing"):
        _ = run.selected_ids
    with pytest.raises(ConfigError, match="no stage 'nope'"):
        run.stage_scores("nope")
    # select on a scored run folder: the CLI's rows, as records read from the data
    assert thresher.select(run, ratio=0.25) == _read_jsonl(base / "sel.jsonl")
    assert main(["-q", "run", "length", "--data", str(base / "alpaca.jsonl"), "--out", str(tmp_path / "r")]) == 0
    done = thresher.Run(tmp_path / "r")
    assert done.selected_ids == (tmp_path / "r" / "selected_ids.txt").read_text().splitlines()
    assert done.selected == _read_jsonl(tmp_path / "r" / "selected.jsonl")
    with pytest.raises(ConfigError, match="not a complete run folder"):
        thresher.Run(tmp_path)


def test_report_and_repr_html(cli_run, tmp_path):
    pytest.importorskip("thresher.reporting")
    base, *_ = cli_run
    run = thresher.Run(base / "run")
    fragment = run._repr_html_()
    assert "<html" not in fragment.lower() and "resp_tokens" in fragment
    assert "<html" in thresher.report(run).lower()
    assert thresher.report([run, base / "run"], out=tmp_path / "r.html").is_file()


# ---------------------------------------------------------------------------------------------------- package
def test_import_thresher_stays_light():
    code = ("import sys, thresher\n"
            "heavy = ('numpy', 'pandas', 'yaml', 'torch', 'datasets', 'pyarrow', 'thresher.api', 'thresher.pipeline')\n"
            "print([m for m in heavy if m in sys.modules])\n"
            "names = {'load', 'score', 'select', 'run', 'report', 'Run'}\n"
            "assert names <= set(dir(thresher)) and names <= set(thresher.__all__)\n"
            "try:\n    thresher.nope\nexcept AttributeError as e:\n    print(e)\n"
            "assert thresher.score is __import__('thresher.api').api.score\n"
            "print('thresher.api' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines() == ["[]", "module 'thresher' has no attribute 'nope'", "True"]


# ---------------------------------------------------------------------------------------------------- real model
def test_ifd_and_superfiltering_match_the_cli_on_real_sharegpt(sharegpt_short, tmp_path):
    """The issue's example on 8 short real ShareGPT rows with the bundled model: a datasets.Dataset in, one out,
    IFD (ppl_ratio) read from the score cache the CLI filled for the same records in a file (same row hashes,
    scorer parameters and model), superfiltering's rows as the CLI's."""
    records = [dict(r) for r in sharegpt_short.raw[:8]]
    data = _jsonl(tmp_path / "sg.jsonl", records)
    cache = str(tmp_path / "cache")
    assert main(["-q", "score", str(data), "--scorer", "ifd", "--variant", "ppl_ratio", "--turns", "first",
                 "--model", "bundled", "--out", str(tmp_path / "cli"), "--cache-dir", cache]) == 0
    assert main(["-q", "select", str(tmp_path / "cli"), "--selector", "superfiltering", "--top-ratio", "0.5",
                 "--out", str(tmp_path / "sel.jsonl")]) == 0
    cli = pd.read_parquet(tmp_path / "cli" / "scores.parquet")
    assert cli["ifd"].notna().all()
    ds = datasets.Dataset.from_list(records)
    scored = thresher.score(ds, "ifd", variant="ppl_ratio", turns="first", model="bundled", cache_dir=cache,
                            out=tmp_path / "api")
    assert isinstance(scored, datasets.Dataset)
    cache_use = json.loads((tmp_path / "api" / "manifest.json").read_text())["stages"][0]["scorers"][0]["cache"]
    assert (cache_use["cached"], cache_use["computed"]) == (8, 0)
    np.testing.assert_allclose(np.array(scored["ifd"], dtype=float), cli["ifd"].to_numpy(), rtol=1e-6)
    subset = thresher.select(scored, "superfiltering", ratio=0.5)
    assert isinstance(subset, datasets.Dataset)
    assert subset["id"] == [r["id"] for r in _read_jsonl(tmp_path / "sel.jsonl")]
