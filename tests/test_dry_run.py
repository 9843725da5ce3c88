"""`thresher run|score --dry-run` (thresher.pipeline.dry_run): it predicts exactly the shards a following run
computes (on a fresh cache and after a partial run filled part of it), loads no model and writes nothing.
The length scorer (tokenizer only) and ifd on the bundled SmolLM2, 8 short rows, shards of 2 rows."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest

from thresher.cli import main
from thresher.models.embedder import SentenceEmbedder
from thresher.models.hf import HFCausalLM

from samples import ALPACA

LINE = re.compile(r"^  (\S+): (\d+) shards, (\d+) cached, (\d+) to compute \((\d+) rows\)")


def _refuse(self, *a, **k):
    raise AssertionError(f"the dry run loaded {type(self).__name__}")


@contextlib.contextmanager
def no_model_loads(monkeypatch):
    """Within the block, loading a causal LM, its tokenizer or an embedder fails the test."""
    with monkeypatch.context() as m:
        for cls, method in ((HFCausalLM, "setup"), (HFCausalLM, "tokenizer_only"), (SentenceEmbedder, "setup")):
            m.setattr(cls, method, _refuse)
        yield


def write_data(path: Path, n: int = 8) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:n]), encoding="utf-8")
    return path


def shard_files(cache: Path) -> set[Path]:
    return set((cache / "scores").glob("*/*.parquet")) if (cache / "scores").is_dir() else set()


def dry_run(argv: list[str], capsys) -> dict:
    """Run argv with --dry-run; returns {scorer: (shards, cached, to compute, rows)}."""
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    found = {m.group(1): tuple(map(int, m.groups()[1:])) for m in map(LINE.match, out.splitlines()) if m}
    assert found, out
    return found


def score_argv(data, scorer, tmp_path, *extra):
    return ["score", str(data), "--scorer", scorer, "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--shard-size", "2", *extra]


def computed(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    return {s["scorer"]: s["cache"] for st in manifest["stages"] for s in st["scorers"]}


@pytest.mark.parametrize("scorer", ["length", "ifd"])
def test_dry_run_predicts_the_shards_the_run_computes(scorer, tmp_path, capsys, monkeypatch):
    data = write_data(tmp_path / "d.jsonl")
    with no_model_loads(monkeypatch):
        fresh = dry_run(score_argv(data, scorer, tmp_path), capsys)
    assert fresh[scorer] == (4, 0, 4, 8)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()       # nothing written

    # a partial run (the first 4 rows: 2 shards), then the dry run of the full data
    assert main(score_argv(data, scorer, tmp_path, "--limit", "4")) == 0
    partial = shard_files(tmp_path / "cache")
    assert len(partial) == 2
    capsys.readouterr()
    with no_model_loads(monkeypatch):
        after = dry_run(score_argv(data, scorer, tmp_path, "--out", str(tmp_path / "full")), capsys)
    assert after[scorer] == (4, 2, 2, 4)
    assert shard_files(tmp_path / "cache") == partial and not (tmp_path / "full").exists()

    # the real run computes exactly the shards the dry run said
    assert main(score_argv(data, scorer, tmp_path, "--out", str(tmp_path / "full"))) == 0
    written = shard_files(tmp_path / "cache") - partial
    assert len(written) == after[scorer][2]
    stats = computed(tmp_path / "full")[scorer]
    assert (stats["computed"], stats["cached"]) == (after[scorer][3], 8 - after[scorer][3])


def test_the_no_load_check_is_real(tmp_path, monkeypatch):
    """The guard used above fails a command that does load the tokenizer (a real run of the length scorer)."""
    data = write_data(tmp_path / "d.jsonl", 2)
    monkeypatch.setattr(HFCausalLM, "tokenizer_only", _refuse)
    assert main(score_argv(data, "length", tmp_path)) == 1                 # an internal error: the guard fired


def test_dry_run_of_a_recipe_with_training_and_an_api_judge(tmp_path, capsys, monkeypatch):
    """cherry: the stage after training says so; alpagasus with an API judge: requests, tokens and cost from
    the configured prices (the recipe's max_tokens: 64 per reply)."""
    data = write_data(tmp_path / "d.jsonl")
    base = ["--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--dry-run"]
    with no_model_loads(monkeypatch):
        assert main(["run", "cherry", *base]) == 0
        out = capsys.readouterr().out
        assert main(["run", "alpagasus", *base, "--judge", "api", "--judge-model", "gpt-4o-mini",
                     "--judge-price-input-per-1m", "1000000", "--judge-price-output-per-1m", "0"]) == 0
    assert "stage 'pre_train': train model bundled; rows: after selection" in out
    assert "after training stage(s) pre_train: the model is not trained yet" in out
    out = capsys.readouterr().out
    m = re.search(r"up to (\d+) requests, ~(\d+) prompt \+ up to (\d+) reply tokens, ~\$([\d.]+)", out)
    assert m, out
    requests, prompt_tokens, reply, cost = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    assert requests == 8 and reply == 8 * 64 and cost == pytest.approx(prompt_tokens, abs=1e-3)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
