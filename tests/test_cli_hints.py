"""Messages that name an option speak the surface the user came through: CLI flags (`--on-invalid skip`)
from `thresher ...`, Python keywords (`on_invalid='skip'`) from ``thresher.data.load`` and the library
(thresher.errors.surface / as_option). Real bad inputs, the model-free `random` scorer, the CLI in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thresher.cli import main
from thresher.data import load
from thresher.errors import ConfigError, DataError, as_option, flag_note, surface

from samples import ALPACA

BAD = '{"instruction": "Say hi.", "input": "", "output": "Hi \\ud800 there."}'      # a lone surrogate


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def error_line(capsys) -> str:
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("thresher: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_as_option_spells_each_surface():
    assert as_option("on_invalid", "skip") == "on_invalid='skip'"
    assert as_option("lenient", True) == "lenient=True"
    assert as_option("max_record_chars", metavar="N") == "max_record_chars=N"
    assert flag_note("shard_size") == ""
    with surface("cli"):
        assert as_option("on_invalid", "skip") == "--on-invalid skip"
        assert as_option("lenient", True) == "--lenient" and as_option("lenient", False) == "--no-lenient"
        assert as_option("max_record_chars", metavar="N") == "--max-record-chars N"
        assert as_option("fmt", "alpaca", flag="--format") == "--format alpaca"
        assert flag_note("shard_size") == " (--shard-size)"
    assert as_option("limit", 0) == "limit=0"                # the surface is restored after the block


def test_an_invalid_record_names_the_flag_on_the_cli_and_the_keyword_in_python(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", [json.dumps(ALPACA[0]), BAD, json.dumps(ALPACA[1])])
    argv = ["score", str(data), "--scorer", "random", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 2
    line = error_line(capsys)
    assert "line 2" in line and "--on-invalid skip" in line and "on_invalid=" not in line

    with pytest.raises(DataError) as e:
        load(data)
    assert "on_invalid='skip'" in str(e.value) and "--on-invalid" not in str(e.value)


def test_a_cut_off_json_array_and_a_huge_field(tmp_path, capsys):
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(ALPACA[:3])[:-30], encoding="utf-8")
    assert main(["score", str(cut), "--scorer", "random", "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    line = error_line(capsys)
    assert "--lenient" in line and "lenient=True" not in line
    with pytest.raises(DataError, match="lenient=True"):
        load(cut)

    huge = write(tmp_path / "huge.jsonl", [json.dumps({**ALPACA[0], "output": "x" * 50})])
    with pytest.raises(DataError) as e:
        load(huge, max_record_chars=10)
    assert "max_record_chars=N" in str(e.value) and "on_invalid='skip'" in str(e.value)


def test_python_option_errors_use_keywords(tmp_path):
    data = write(tmp_path / "d.jsonl", [json.dumps(ALPACA[0])])
    with pytest.raises(ConfigError, match=r"on_invalid='drop' is not allowed"):
        load(data, on_invalid="drop")
    with pytest.raises(ConfigError, match=r"limit=0 is not allowed"):
        load(data, limit=0)


def test_shard_size_names_its_flag_only_on_the_cli(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", [json.dumps(r) for r in ALPACA[:2]])
    assert main(["score", str(data), "--scorer", "random", "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache"), "--shard-size", "0"]) == 2
    assert "(--shard-size)" in error_line(capsys)
    from thresher.pipeline.config import Recipe
    from thresher.config import build
    with pytest.raises(ConfigError) as e:
        build(Recipe, {"shard_size": 0}, "recipe r")
    assert "--shard-size" not in str(e.value) and "'shard_size' parameter of recipe r" in str(e.value)
