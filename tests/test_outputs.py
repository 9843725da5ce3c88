"""Nothing lost, nothing leaked (issue 13): output ownership of every command that writes a folder or a
file (merge, train, eval, select), recipe stage names that stay inside --out, and `thresher select`
finding its data from any directory."""

from __future__ import annotations

import json

import pytest

from thresher import cli
from thresher.methods.recipe import NAME_PATTERN, is_safe_name, safe_name


def _main(capsys, *argv):
    """cli.main's exit status and its stderr lines."""
    rc = cli.main([str(a) for a in argv])
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ stage names (item 5)
def _recipe(path, stage_name):
    stage = {"name": stage_name, "score": [{"scorer": "length"}],
             "select": {"selector": "top_k", "params": {"k": 2}}}
    path.write_text(json.dumps({"name": "t", "stages": [stage]}), encoding="utf-8")   # JSON is YAML
    return path


@pytest.mark.parametrize("name", ["../x", "/abs", "../../etc/x", "a/b", "..", "x..y", ".hidden", ""])
def test_validate_refuses_stage_names_that_are_paths(tmp_path, capsys, name):
    recipe = {"name": "t", "stages": [{"name": "ok", "score": [{"scorer": "length"}]},
                                       {"name": name, "score": [{"scorer": "length"}],
                                        "select": {"selector": "top_k", "params": {"k": 2}}}]}
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    rc, err = _main(capsys, "validate", path)
    if name == "":                      # an empty name is the default "stage1": valid
        assert rc == 0, err
        return
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("thresher: error:"), err
    assert "stage 1" in err[0] and repr(name) in err[0] and NAME_PATTERN in err[0]


def test_validate_accepts_plain_stage_names(tmp_path, capsys):
    rc, err = _main(capsys, "validate", _recipe(tmp_path / "r.yaml", "score-1.v2_x"))
    assert rc == 0, err


def test_safe_name_gives_folder_names_validate_accepts():
    cases = {"a b": "a_b", "../x": "x", "/abs/p": "abs_p", ".hidden": "hidden", "a..b": "a.b",
             "..": "client", "ü": "client", "client-1.json": "client-1.json"}
    for text, want in cases.items():
        assert safe_name(text) == want, text
    assert safe_name("", default="data") == "data"
    long = safe_name("x" * 300)
    assert len(long) == 64 and is_safe_name(long)
    assert not is_safe_name("../x") and not is_safe_name("/abs") and not is_safe_name("a" * 65)


# ------------------------------------------------------------------------------------ thresher select
from thresher.data.fingerprint import data_fingerprint  # noqa: E402

from samples import ALPACA  # noqa: E402


@pytest.fixture()
def scored(tmp_path, monkeypatch, capsys):
    """A `thresher score` run made from tmp_path/work with a relative data path; the manifest carries the
    data's abs_path and fingerprint (written here when `score` does not write them yet)."""
    work = tmp_path / "work"
    work.mkdir()
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:8]), encoding="utf-8")
    monkeypatch.chdir(work)
    rc, err = _main(capsys, "score", "data.jsonl", "--scorer", "length", "--out", "run",
                    "--cache-dir", tmp_path / "cache")
    assert rc == 0, err
    man_path = work / "run" / "manifest.json"
    manifest = json.loads(man_path.read_text(encoding="utf-8"))
    assert manifest["data"]["path"] == "data.jsonl"
    manifest["data"].setdefault("abs_path", str(data))
    manifest["data"].setdefault("fingerprint", data_fingerprint(data))
    man_path.write_text(json.dumps(manifest), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return work / "run", data


def _select(capsys, run, out, *extra):
    return _main(capsys, "select", run, "--out", out, "--top-k", 3, *extra)


def test_select_from_another_directory_uses_the_recorded_absolute_path(scored, capsys, tmp_path):
    run, data = scored
    rc, err = _select(capsys, run, "sel.jsonl")
    assert rc == 0, err
    rows = [json.loads(x) for x in (tmp_path / "elsewhere" / "sel.jsonl").read_text(encoding="utf-8").splitlines()]
    longest = sorted(ALPACA[:8], key=lambda r: len(r["output"]), reverse=True)[:3]
    assert sorted(r["output"] for r in rows) == sorted(r["output"] for r in longest)
    # a rerun replaces the file select wrote before (its .manifest.json is beside it)
    assert _select(capsys, run, "sel.jsonl", "--top-k", 2)[0] == 0
    assert len((tmp_path / "elsewhere" / "sel.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_select_refuses_a_changed_data_file(scored, capsys):
    run, data = scored
    data.write_text(data.read_text(encoding="utf-8").replace("Canberra", "Sydney"), encoding="utf-8")
    rc, err = _select(capsys, run, "sel.jsonl")
    assert rc == 2 and len(err) == 1 and "no longer matches" in err[0] and str(data) in err[0]


def test_select_refuses_out_equal_to_the_input_and_leaves_it_unchanged(scored, capsys):
    run, data = scored
    before = data.read_bytes()
    for out in (data, f"../work/{data.name}"):
        rc, err = _select(capsys, run, out)
        assert rc == 2 and len(err) == 1 and "input" in err[0], err
    assert data.read_bytes() == before


def test_select_refuses_a_folder_a_users_file_and_an_unknown_suffix(scored, capsys, tmp_path):
    run, _ = scored
    folder = tmp_path / "elsewhere" / "picked"
    folder.mkdir()
    rc, err = _select(capsys, run, folder)
    assert rc == 2 and len(err) == 1 and "is a folder" in err[0]

    mine = tmp_path / "elsewhere" / "notes.jsonl"
    mine.write_text("my own notes\n", encoding="utf-8")
    rc, err = _select(capsys, run, mine)
    assert rc == 2 and len(err) == 1 and "not written by thresher" in err[0]
    assert mine.read_text(encoding="utf-8") == "my own notes\n"

    for name in ("x.csv", "x"):
        rc, err = _select(capsys, run, name)
        assert rc == 2 and len(err) == 1, err
        assert ".json" in err[0] and ".jsonl" in err[0] and ".parquet" in err[0]
        assert not (tmp_path / "elsewhere" / name).exists()
