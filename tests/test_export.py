"""Joinable, exportable outputs: scores.parquet's row/selected/rank, `thresher select --to FORMAT PATH` and
`thresher export`. Runs use the packaged `length` recipe (tokenizer only, no model) on real bundled ShareGPT
rows (one invalid record planted, loaded with --on-invalid skip) and on an alpaca JSON array."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from thresher.cli import main
from thresher.data.readers import bundled_sharegpt_path, load

from samples import ALPACA

_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def jsonl(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def sharegpt_run(tmp_path_factory):
    """`thresher run length` (ratio 0.3) on 30 real ShareGPT records with an empty conversation planted at
    line 4 and skipped: every row from the fourth on sits one line below its row number."""
    base = tmp_path_factory.mktemp("sharegpt")
    rows = load(bundled_sharegpt_path(), limit=30, lenient=True, on_invalid="skip").raw
    data = base / "sg.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + json.dumps({"id": "bad", "conversations": []})
                    + "\n" + "".join(json.dumps(r) + "\n" for r in rows[3:]), encoding="utf-8")
    run = base / "run"
    assert main(["run", "length", "--data", str(data), "--on-invalid", "skip", "--out", str(run),
                 "--set", "stages.0.select.params.ratio=0.3", "--cache-dir", str(base / "cache")]) == 0
    return data, run


@pytest.fixture(scope="module")
def alpaca_run(tmp_path_factory):
    """`thresher run length` on an alpaca JSON array (ids by content; one record without "input")."""
    base = tmp_path_factory.mktemp("alpaca")
    rows = [dict(r) for r in ALPACA]
    del rows[5]["input"]
    data = base / "alpaca.json"
    data.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    run = base / "run"
    assert main(["run", "length", "--data", str(data), "--out", str(run), "--set", "stages.0.select.params.k=6",
                 "--set", "stages.0.select.params.ratio=null", "--cache-dir", str(base / "cache")]) == 0
    return data, run


# ------------------------------------------------------------------------------------ scores.parquet
def check_scores_table(scores: pd.DataFrame, selected_ids: list[str]) -> None:
    assert list(scores.columns[:2]) == ["id", "row"] and list(scores.columns[-2:]) == ["selected", "rank"]
    assert scores["row"].dtype == np.int64 and scores["selected"].dtype == bool
    assert scores["rank"].dtype == pd.Int64Dtype()
    np.testing.assert_array_equal(scores["row"], np.arange(len(scores)))
    np.testing.assert_array_equal(scores["selected"], scores["id"].isin(selected_ids))
    assert scores["rank"].isna().to_numpy().tolist() == (~scores["selected"]).tolist()
    kept = scores[scores["selected"]].sort_values("rank")
    assert list(kept["id"]) == selected_ids and list(kept["rank"]) == list(range(1, len(selected_ids) + 1))


def test_scores_have_row_selected_rank(sharegpt_run):
    data, run = sharegpt_run
    scores = pd.read_parquet(run / "length" / "scores.parquet")
    selected = lines(run / "length" / "selected_ids.txt")
    assert len(scores) == 30 and len(selected) == 9
    check_scores_table(scores, selected)
    assert list(scores.columns[2:-2]) == ["resp_tokens", "resp_chars"]
    # row indexes the loaded dataset, though the skipped record shifts the file's lines from the fourth on
    ds = load(data, on_invalid="skip")
    assert [ds.raw[r]["id"] for r in scores["row"]] == list(scores["id"])
    assert [m["line"] for m in ds.meta][2:5] == [3, 5, 6]
    pd.testing.assert_frame_equal(pd.read_parquet(run / "scores.parquet"), scores)     # the promoted copy


def test_select_reads_scores_not_row_keys(sharegpt_run, tmp_path, capsys):
    _, run = sharegpt_run
    assert main(["select", str(run), "--top-k", "3", "--column", "rank", "--lower-is-better",
                 "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'rank' is not a score" in err and len(err.splitlines()) == 1
    assert main(["select", str(run), "--top-k", "3", "--column", "nope", "--lower-is-better",
                 "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "columns: resp_tokens, resp_chars)" in err


# ------------------------------------------------------------------------------------ select --to / export
def test_select_to_hf_has_the_records_of_the_jsonl_selection(sharegpt_run, tmp_path):
    _, run = sharegpt_run
    assert main(["select", str(run), "--top-k", "5", "--out", str(tmp_path / "sel.jsonl")]) == 0
    assert main(["select", str(run), "--top-k", "5", "--to", "hf", str(tmp_path / "sel")]) == 0
    got = datasets.load_from_disk(str(tmp_path / "sel")).to_list()
    assert got == jsonl(tmp_path / "sel.jsonl") and len(got) == 5           # same records, order, fields
    card = (tmp_path / "sel" / "README.md").read_text()
    assert "# length selection: 5 of 30 rows" in card and "top_k on resp_tokens" in card
    assert len(card.splitlines()) < 40
    record = json.loads((tmp_path / "sel" / "manifest.json").read_text())
    assert record["argv"][:2] == ["thresher", "select"] and record["select"]["params"] == {"k": 5}


@pytest.mark.parametrize("to, name", [("hf", "out"), ("parquet", "out.parquet"), ("jsonl", "out.jsonl"),
                                      ("json", "out.json")])
def test_export_writes_the_runs_selection(sharegpt_run, tmp_path, to, name):
    _, run = sharegpt_run
    out = tmp_path / name
    assert main(["export", str(run), "--to", to, "--out", str(out)]) == 0
    read = {"hf": lambda p: datasets.load_from_disk(str(p)).to_list(), "parquet": lambda p: pq.read_table(p).to_pylist(),
            "jsonl": jsonl, "json": lambda p: json.loads(p.read_text())}[to]
    assert read(out) == jsonl(run / "selected.jsonl")
    assert (out / "README.md").is_file() if to == "hf" else (tmp_path / (name + ".manifest.json")).is_file()


def test_export_with_scores_and_chat(sharegpt_run, tmp_path):
    _, run = sharegpt_run
    out = tmp_path / "x.parquet"
    assert main(["export", str(run), "--to", "parquet", str(out), "--with-scores", "--chat"]) == 0
    got = pq.read_table(out).to_pylist()
    selected = jsonl(run / "selected.jsonl")
    assert list(got[0]) == ["id", "conversations", "resp_tokens", "resp_chars", "rank", "messages"]
    assert [{k: g[k] for k in ("id", "conversations")} for g in got] == selected        # records unchanged
    scores = pd.read_parquet(run / "scores.parquet").set_index("id").loc[[g["id"] for g in got]]
    for col in ("resp_tokens", "resp_chars", "rank"):
        assert [g[col] for g in got] == scores[col].astype(int).tolist()
    assert [g["rank"] for g in got] == list(range(1, len(got) + 1))
    for g, record in zip(got, selected):
        assert g["messages"] == [{"role": _ROLES[t["from"]], "content": t["value"]} for t in record["conversations"]]


def test_alpaca_export_to_hf_and_jsonl_with_chat(alpaca_run, tmp_path):
    data, run = alpaca_run
    scores = pd.read_parquet(run / "scores.parquet")
    check_scores_table(scores, lines(run / "selected_ids.txt"))
    assert [load(data).ids[r] for r in scores["row"]] == list(scores["id"])
    selected = json.loads((run / "selected.json").read_text())
    assert main(["export", str(run), "--to", "hf", str(tmp_path / "hf"), "--chat"]) == 0
    got = datasets.load_from_disk(str(tmp_path / "hf")).to_list()
    # a table has every record's fields: the record without "input" reads back with input None
    assert [{k: v for k, v in g.items() if k != "messages" and (v is not None or k in r)} for g, r in
            zip(got, selected)] == selected
    for g, r in zip(got, selected):
        prompt = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        assert g["messages"] == [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["output"]}]
    assert main(["export", str(run), "--to", "jsonl", str(tmp_path / "a.jsonl")]) == 0
    assert jsonl(tmp_path / "a.jsonl") == selected


# ------------------------------------------------------------------------------------ refusals
def one_error(capsys, *needles) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("thresher: error:"), err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("argv, needles", [
    (["--to", "csv", "x.csv"], ["'csv' is not an output format"]),
    (["--to", "parquet", "x.csv"], ["never guessed", "*.parquet"]),
    (["--to", "jsonl", "--out", "x.parquet"], ["never guessed"]),
    (["--to", "hf", "x.jsonl"], ["hf writes a folder"]),
    (["--to", "hf"], ["Say where to write"]),
    (["--to", "hf", "a", "--out", "b"], ["given twice"]),
    (["--to", "hf", "d", "--stage", "nope"], ["no such stage", "length"]),
])
def test_export_bad_destination_is_one_error_line(sharegpt_run, tmp_path, capsys, monkeypatch, argv, needles):
    _, run = sharegpt_run
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(run), *argv]) == 2
    one_error(capsys, *needles)
    assert not any(tmp_path.iterdir())


def test_select_needs_a_destination(sharegpt_run, tmp_path, capsys):
    _, run = sharegpt_run
    assert main(["select", str(run), "--top-k", "3"]) == 2
    one_error(capsys, "--to FORMAT PATH")
    assert main(["select", str(run), "--top-k", "3", "--out", str(tmp_path / "x.csv")]) == 2
    one_error(capsys, "--to FORMAT PATH")


def test_export_never_overwrites_a_users_output(sharegpt_run, tmp_path, capsys):
    _, run = sharegpt_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["export", str(run), "--to", "hf", str(mine)]) == 2
    one_error(capsys, "notes.txt", "never replaces")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "f.jsonl").write_text("keep\n")
    assert main(["export", str(run), "--to", "jsonl", str(tmp_path / "f.jsonl")]) == 2
    one_error(capsys, "never overwrites")
    assert (tmp_path / "f.jsonl").read_text() == "keep\n"
    assert main(["select", str(run), "--top-k", "2", "--to", "hf", str(mine)]) == 2
    one_error(capsys, "never replaces")
    # its own export folder is replaced by a new export
    assert main(["export", str(run), "--to", "hf", str(tmp_path / "e")]) == 0
    assert main(["select", str(run), "--top-k", "2", "--to", "hf", str(tmp_path / "e")]) == 0
    assert len(datasets.load_from_disk(str(tmp_path / "e"))) == 2


def test_export_of_a_run_without_selection_says_how_to_select(alpaca_run, tmp_path, capsys):
    data, _ = alpaca_run
    run = tmp_path / "scored"
    assert main(["score", str(data), "--scorer", "length", "--out", str(run), "--cache-dir",
                 str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    scores = pd.read_parquet(run / "scores.parquet")
    assert list(scores.columns) == ["id", "row", "resp_tokens", "resp_chars"]       # no selection columns
    assert main(["export", str(run), "--to", "hf", str(tmp_path / "e")]) == 2
    one_error(capsys, "stages: length", "selected nothing", f"thresher select {run}")
