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
