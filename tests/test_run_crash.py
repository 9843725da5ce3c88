"""kill -9 anywhere in a multi-stage `thresher run` (scoring, training, scoring with the trained model),
rerun the same command: every output file equals an uninterrupted run's, and nothing stale or mixed is
left (issue 13). The model is a tiny random-weight Llama folder (tests/tiny_model.py) so that each run
takes seconds; the kill points are spread over the run by delay after start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from samples import ALPACA
from tiny_model import save_tiny_llama

# Summary and manifest fields that legitimately differ between two runs of the same command.
_VOLATILE = {"seconds", "created", "argv", "cache", "dir", "manifest", "selected_file", "final", "merged",
             "checkpoints", "runtime", "train_seconds", "samples_per_second", "path", "outputs", "resumed_from",
             "resumed", "loss", "versions", "model", "samples_per_s", "seconds_total", "train_runtime",
             "train_loss", "compute"}
# loss, train_loss: the mean over the steps of this call (a resumed run trains fewer); compute: the ledger of
# this call's own work (a resumed run reads from the cache what the killed one computed)


def _recipe(model: Path) -> dict:
    train = {"lora": True, "epochs": 2, "max_length": 64, "lr": 0.01, "template": "alpaca", "batch_size": 2,
             "save_steps": 1, "logging_steps": 1, "seed": 3, "add_eos": False}
    return {"name": "crash", "model": str(model), "shard_size": 4, "stages": [
        {"name": "lengths", "score": [{"scorer": "length"}], "select": {"selector": "top_k", "params": {"ratio": 0.5}}},
        {"name": "tune", "train": {"rows": "previous", "merge": True, "params": train}},
        {"name": "ppl", "model": "@tune", "score": [{"scorer": "perplexity", "params": {"template": "alpaca",
                                                                                       "max_length": 64}}],
         "select": {"selector": "top_k", "params": {"ratio": 0.5, "higher_is_better": False}}}]}


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items()
                if k not in _VOLATILE and not k.endswith(("_s", "seconds", "per_s", "runtime"))}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _diff(a, b, path=""):
    """The first path where two JSON-like values differ (for a readable failure)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _diff(a.get(k), b.get(k), f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _diff(x, y, f"{path}[{i}]"))), None)
    return None if a == b else f"{path}: {a!r} != {b!r}"


def _snapshot(run: Path) -> dict:
    """Every file a user reads (not training checkpoints or weights, whose bytes carry timestamps)."""
    out = {}
    for f in sorted(run.rglob("*")):
        rel = f.relative_to(run).as_posix()
        if not f.is_file() or "checkpoint-" in rel or "/final/" in rel or "/merged/" in rel or f.name[0] == ".":
            continue
        if f.suffix == ".parquet":
            out[rel] = pd.read_parquet(f).to_json()
        elif f.name in ("summary.json", "manifest.json"):
            out[rel] = _strip(json.loads(f.read_text()))
        elif f.suffix in (".json", ".jsonl", ".txt") and f.parent.name != "tune":
            out[rel] = f.read_text()
        else:
            out[rel] = "present"
    return out


def _cmd(recipe: Path, data: Path, run: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "thresher", "-q", "run", str(recipe), "--data", str(data), "--out", str(run),
            "--cache-dir", str(cache)]


@pytest.mark.slow
def test_kill_9_at_random_points_then_rerun_equals_an_uninterrupted_run(tmp_path):
    model = save_tiny_llama(tmp_path / "tiny")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(dict(r, id=f"r{i}")) + "\n" for i, r in enumerate(ALPACA[:12])))
    recipe = tmp_path / "crash.yaml"
    recipe.write_text(json.dumps(_recipe(model)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    clean = tmp_path / "clean"
    t0 = time.monotonic()
    subprocess.run(_cmd(recipe, data, clean, tmp_path / "cache-clean"), check=True, env=env, timeout=600)
    full = time.monotonic() - t0
    want = _snapshot(clean)
    assert "ppl/selected.jsonl" in want and "tune/train_ids.json" in want and "manifest.json" in want

    kills = 0
    for i, frac in enumerate((0.2, 0.5, 0.8)):
        run, cache = tmp_path / f"run{i}", tmp_path / f"cache{i}"
        if i == 0:   # an earlier, different run in the same folder: none of its files may survive
            subprocess.run(_cmd(recipe, data, run, cache) + ["--set", "stages.2.name=old_ppl"], check=True,
                           env=env, timeout=600)
            assert (run / "old_ppl" / "scores.parquet").exists() and (run / "manifest.json").exists()
            cache = tmp_path / f"cache{i}b"       # cold cache: the killed run has work left to do
        p = subprocess.Popen(_cmd(recipe, data, run, cache), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(frac * full)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
        if p.returncode != 0 and (run / "manifest.json").exists():
            # killed after its last write (the manifest), while exiting: the folder is the complete result
            assert _snapshot(run) == want, frac
        # otherwise killed before the manifest: no manifest describes a mix of files (the rerun completes it)
        subprocess.run(_cmd(recipe, data, run, cache), check=True, env=env, timeout=600)
        got = _snapshot(run)
        assert sorted(got) == sorted(want), (frac, sorted(set(got) ^ set(want)))
        for name in want:
            assert got[name] == want[name], (frac, name, _diff(got[name], want[name]))
        assert not list(run.rglob("*.tmp")) and (run / ".thresher-lock").read_text() == ""   # released
    assert kills >= 2, f"the run finished before {3 - kills} of the kill points ({full:.1f} s)"
