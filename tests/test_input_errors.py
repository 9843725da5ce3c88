"""Every failure a user can cause ends in one `thresher: error:` line and exit status 2 (issue 13, items 9-10).

Each test starts from the reproduction in the issue: a lone surrogate escape, deeply nested JSON, a huge
field, --shard-size 0 / -1, --set into a non-mapping, a full disk, a damaged request cache, a symlink loop,
a missing local path sent to the hub, and an unexpected exception. The CLI runs in-process (cli.main with
capsys) on the model-free `random` scorer; one subprocess shows that no traceback reaches the terminal.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from thresher.cli import main
from thresher.data import load
from thresher.errors import ConfigError, DataError

from samples import ALPACA

GOOD = [json.dumps(r) for r in ALPACA[:4]]
SURROGATE_LINE = '{"instruction": "Say hi.", "input": "", "output": "Hi \\ud800 there."}'


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def score(tmp_path, data, *extra) -> list[str]:
    return ["score", str(data), "--scorer", "random", "--out", str(tmp_path / "run"),
            "--cache-dir", str(tmp_path / "cache"), *map(str, extra)]


def one_error(capsys) -> str:
    """The single `thresher: error:` line on stderr (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("thresher: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def nested(depth: int) -> str:
    return json.dumps({**ALPACA[0], "meta": "@"}).replace('"@"', "[" * depth + "]" * depth)


# --------------------------------------------------------------------------- records
def test_lone_surrogate_is_an_invalid_record(tmp_path, capsys):
    data = write(tmp_path / "s.jsonl", [GOOD[0], SURROGATE_LINE, GOOD[1]])
    assert main(score(tmp_path, data)) == 2
    line = one_error(capsys)
    assert f"{data}, line 2, field 'output'" in line and "lone surrogate \\ud800" in line
    assert "--on-invalid skip" in line and "on_invalid=" not in line         # the CLI speaks flags
    assert main(score(tmp_path, data, "--on-invalid", "skip")) == 0
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    assert len(scores) == 2
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["report"]["skipped"] == {"lone surrogate": 1}


def test_surrogate_in_a_json_array_key_and_a_valid_pair_is_kept(tmp_path):
    pair = '{"instruction": "Smile.", "input": "", "output": "\\ud83d\\ude00"}'     # a valid pair: one emoji
    bad_key = '{"instruction": "x", "input": "", "output": "y", "k\\udc00": 1}'
    data = tmp_path / "a.json"
    data.write_text("[" + ",\n".join([pair, bad_key]) + "]", encoding="utf-8")
    with pytest.raises(DataError, match=r"record 1, field 'k\\udc00 \(key\)'"):
        load(data)
    ds = load(data, on_invalid="skip")
    assert ds.messages[0][-1]["content"] == "\U0001F600" and ds.report.skipped == {"lone surrogate": 1}


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_nesting_too_deep_for_the_parser_is_a_data_error(tmp_path, capsys, container):
    deep = nested(5000)
    data = tmp_path / f"deep.{container}"
    if container == "jsonl":
        write(data, [GOOD[0], deep])
        where = "line 2"
    else:
        data.write_text("[" + GOOD[0] + ",\n" + deep + "]", encoding="utf-8")
        where = "line 2, column 1 (record 1)"
    assert main(score(tmp_path, data)) == 2
    line = one_error(capsys)
    assert f"{data}, {where}: the record is nested too deeply" in line


def test_nesting_the_parser_accepts_but_over_500_levels_is_a_skippable_record(tmp_path):
    data = write(tmp_path / "d.jsonl", [nested(600), GOOD[0], nested(400)])
    with pytest.raises(DataError, match=r"line 1, field 'meta': the record is nested more than 500 levels"):
        load(data)
    ds = load(data, on_invalid="skip")
    assert len(ds) == 2 and ds.report.skipped == {"nested too deeply": 1}


def test_a_huge_field_is_invalid_by_default_and_the_limit_is_an_option(tmp_path, capsys):
    huge = {**ALPACA[1], "output": "word " * 1_000_000}                 # 5,000,000 characters
    data = write(tmp_path / "big.jsonl", [GOOD[0], json.dumps(huge), GOOD[2]])
    t0 = time.perf_counter()
    assert main(score(tmp_path, data)) == 2
    assert time.perf_counter() - t0 < 10
    line = one_error(capsys)
    assert f"{data}, line 2, field 'output'" in line
    assert "5,000,000 characters" in line and "limit of 1,000,000" in line and "--max-record-chars" in line

    assert main(score(tmp_path, data, "--on-invalid", "skip")) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["report"]["skipped"] == {"text over max_record_chars": 1}
    assert manifest["data"]["max_record_chars"] == 1_000_000

    assert len(load(data, max_record_chars=0)) == 3 and len(load(data, max_record_chars=None)) == 3
    one = write(tmp_path / "one.jsonl", [GOOD[0]])                     # the limit is inclusive
    longest = max(len(v) for v in ALPACA[0].values())
    assert len(load(one, max_record_chars=longest)) == 1
    with pytest.raises(DataError, match=f"is {longest:,} characters long, over the limit of {longest - 1:,}"):
        load(one, max_record_chars=longest - 1)

    assert main(score(tmp_path, data, "--max-record-chars", -1)) == 2
    assert "max_record_chars" in one_error(capsys)


def test_max_record_chars_in_a_recipe(tmp_path, capsys):
    data = write(tmp_path / "d.jsonl", [GOOD[0], json.dumps({**ALPACA[1], "output": "x" * 500}), GOOD[2]])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "data": {"path": str(data), "max_record_chars": 100,
                                                            "on_invalid": "skip"},
                                      "stages": [{"name": "s", "score": [{"scorer": "random"}]}]}))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rows"] == 2 and summary["load"]["skipped"] == {"text over max_record_chars": 1}


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("size", [0, -1])
def test_shard_size_must_be_at_least_one(tmp_path, capsys, size):
    data = write(tmp_path / "d.jsonl", GOOD)
    assert main(score(tmp_path, data, "--shard-size", size)) == 2
    line = one_error(capsys)
    assert "'shard_size'" in line and "--shard-size" in line and f"Got {size}." in line
    assert not (tmp_path / "run" / "scores.parquet").exists()


def test_shard_size_in_a_recipe_and_in_the_library(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "shard_size": 0,
                                      "stages": [{"name": "s", "score": [{"scorer": "random"}]}]}))
    assert main(["validate", str(recipe)]) == 2
    assert "'shard_size'" in one_error(capsys)
    from thresher.engine.scoring import score_dataset
    from thresher.scoring import make_scorer
    from thresher.models.context import ModelContext
    with pytest.raises(ConfigError, match="'shard_size'.*Got -1"):
        score_dataset(load(write(tmp_path / "d.jsonl", GOOD)), make_scorer("random"), ModelContext("bundled"),
                      shard_size=-1, cache_root=tmp_path / "c")


@pytest.mark.parametrize("key, expected", [
    ("stages.x", "--set 'stages.x': stages is a list of 1, so 'x' must be an index 0..0."),
    ("stages.5.name", "--set 'stages.5.name': stages is a list of 1, so '5' must be an index 0..0."),
    ("name.x", "--set 'name.x': name is a string ('superfiltering'), not a mapping or a list"),
    ("data.limit.x", "not a mapping or a list, so it has no 'x'. Set data.limit itself"),
])
def test_set_into_a_list_or_a_scalar_names_the_key(tmp_path, capsys, key, expected):
    assert main(["validate", "superfiltering", "--set", f"{key}=1"]) == 2
    assert expected in one_error(capsys)
    data = write(tmp_path / "d.jsonl", GOOD)
    assert main(["run", "superfiltering", "--data", str(data), "--out", str(tmp_path / "run"), "--set",
                 f"{key}=1"]) == 2
    assert expected in one_error(capsys)


# --------------------------------------------------------------------------- environment
@pytest.mark.parametrize("style", ["errno", "pyarrow"])
def test_disk_full_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, style):
    """Simulated: the thing under test is the error handling, not the file system."""
    import pyarrow.parquet as pq

    def full(table, where, *a, **k):
        if style == "errno":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    monkeypatch.setattr(pq, "write_table", full)
    data = write(tmp_path / "d.jsonl", GOOD)
    assert main(score(tmp_path, data)) == 2
    line = one_error(capsys)
    cache = tmp_path / "cache" / "scores"
    assert line.startswith(f"thresher: error: no space left on device while writing {cache}/random-")
    assert line.endswith(".parquet; free space or point --out/--cache-dir elsewhere.")
    assert list(cache.rglob("*.parquet")) == [] and list(cache.rglob(".*.tmp")) == []


def test_damaged_request_cache_names_the_file_and_says_it_can_be_deleted(tmp_path):
    from thresher.models.chat import ChatResult
    from thresher.models.request_cache import RequestCache

    path = tmp_path / "judge.sqlite"
    with RequestCache(path) as cache:
        for i in range(2000):
            cache.put(f"k{i}", ChatResult("answer " * 30, prompt_tokens=1, completion_tokens=1))
    for side in ("-wal", "-shm"):
        Path(f"{path}{side}").unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    data[8192:48192] = bytes(range(256)) * 156 + bytes(64)          # pages overwritten; header intact
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as err:
        with RequestCache(path) as cache:
            cache.get_many([f"k{i}" for i in range(2000)])
    assert str(path) in str(err.value) and "is damaged" in str(err.value) and "delete it" in str(err.value)

    path.write_bytes(b"this is not a database " * 100)
    with pytest.raises(ConfigError, match="is damaged.*delete it"):
        RequestCache(path)


def test_symlink_loop_and_dangling_link(tmp_path, capsys):
    (tmp_path / "a.jsonl").symlink_to(tmp_path / "b.jsonl")
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    assert main(score(tmp_path, tmp_path / "a.jsonl")) == 2
    assert f"{tmp_path / 'a.jsonl'}: is a symbolic link loop" in one_error(capsys)
    (tmp_path / "d.jsonl").symlink_to(tmp_path / "gone.jsonl")
    assert main(score(tmp_path, tmp_path / "d.jsonl")) == 2
    assert f"is a symbolic link to '{tmp_path / 'gone.jsonl'}', which does not exist" in one_error(capsys)


def test_missing_local_path_is_never_sent_to_the_hub(tmp_path, capsys, monkeypatch, hub_calls):
    calls = hub_calls
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for path in ("data/train", "a/b/c", "./train", "~/train", "train.jsonl", "owner/train.parquet"):
        t0 = time.perf_counter()
        assert main(score(tmp_path, path)) == 2
        assert time.perf_counter() - t0 < 5
        line = one_error(capsys)
        assert f"{path}: file not found" in line, line
    assert calls == []
    assert "not looked up on the Hugging Face hub" in line
    assert main(score(tmp_path, "owner/name")) == 2           # a hub name still goes to the hub
    assert calls == ["owner/name"] and "hub could not be reached" in one_error(capsys)


# --------------------------------------------------------------------------- bugs
def test_internal_error_is_one_line_with_exit_1_and_the_traceback_only_with_v(tmp_path, capsys, monkeypatch):
    import thresher.cli as cli

    def broken(*a, **k):
        raise KeyError("boom")
    monkeypatch.setattr(cli, "run_recipe", broken)
    data = write(tmp_path / "d.jsonl", GOOD)
    assert main(score(tmp_path, data)) == 1
    err = capsys.readouterr().err
    assert err == "thresher: error: internal error: KeyError: 'boom' (run with -v for the traceback)\n"
    assert main(["-v", *score(tmp_path, data)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert err.rstrip().splitlines()[-1].startswith("thresher: error: internal error: KeyError")


def test_no_traceback_reaches_the_terminal(tmp_path):
    data = write(tmp_path / "s.jsonl", [GOOD[0], SURROGATE_LINE])
    res = subprocess.run([sys.executable, "-m", "thresher", *score(tmp_path, data)], capture_output=True,
                         text=True, env=os.environ.copy(), timeout=120)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"thresher: error: {data}, line 2"), res.stderr
