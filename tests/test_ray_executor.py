"""The ray executor on a real local Ray cluster (2 CPUs, 2 worker actors): the same scores as the local
executor for ifd (bundled SmolLM2), length, embedding (MiniLM) and an API judge (the loopback fault
server); the two executors reuse each other's cached shards; a worker SIGKILLed mid-run is restarted and
the scores do not change; a driver SIGKILLed mid-run resumes from its shards; a worker that cannot load
its model stops the run with its error; without Ray the error names the extra to install.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fake_openai import FakeOpenAI, rating_of
from thresher.engine.executors import make_executor
from thresher.engine.scoring import score_dataset
from thresher.errors import ThresherError
from thresher.models.context import ModelContext
from thresher.scoring.judge import sample_fields
from thresher.scoring.prompts import load_prompt
from thresher.scoring.registry import make_scorer

ray = pytest.importorskip("ray", reason="the ray extra (pip install 'thresher[ray]'); CI installs it")

ROOT = Path(__file__).resolve().parent.parent
KEY_VAR = "THRESHER_RAY_TEST_KEY"
SHARD = 4
SCORERS = {"ifd": {"template": "alpaca", "max_length": 256}, "length": {}, "embedding": {"text": "whole"}}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs; the workers inherit this environment (the judge key below)."""
    os.environ[KEY_VAR] = "sk-ray-test-000000000000"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    os.environ.pop(KEY_VAR, None)


@pytest.fixture(scope="module")
def rex(cluster):
    ex = make_executor(executor="ray", workers=2, threads_per_worker=1)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def ds(sharegpt_short):
    return sharegpt_short.subset(range(16))


@pytest.fixture(scope="module")
def local_scores(ds, ctx, tmp_path_factory):
    """Each scorer over ``ds`` with the local executor (the reference)."""
    root = tmp_path_factory.mktemp("local")
    return {name: score_dataset(ds, make_scorer(name, **p), ctx, shard_size=SHARD, cache_root=root)
            for name, p in SCORERS.items()}


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6)


def test_ray_gives_the_local_scores(ds, ctx, rex, local_scores, tmp_path):
    for name, p in SCORERS.items():
        out = score_dataset(ds, make_scorer(name, **p), ctx, shard_size=SHARD, cache_root=tmp_path, executor=rex)
        assert out.attrs["cache"]["computed"] == len(ds)
        _same(out, local_scores[name])
    assert len(set(rex.worker_pids()) - {os.getpid()}) == 2          # two worker processes, not this one


def test_local_and_ray_finish_each_others_runs(ds, ctx, rex, local_scores, tmp_path):
    half = ds.subset(range(len(ds) // 2))                               # whole shards: the same cache files
    for first, second in ((None, rex), (rex, None)):
        cache = tmp_path / f"{'ray' if first else 'local'}-first"
        score_dataset(half, make_scorer("length"), ctx, shard_size=SHARD, cache_root=cache, executor=first)
        out = score_dataset(ds, make_scorer("length"), ctx, shard_size=SHARD, cache_root=cache, executor=second)
        assert (out.attrs["cache"]["cached"], out.attrs["cache"]["computed"]) == (len(half), len(ds) - len(half))
        _same(out, local_scores["length"])


def test_a_killed_worker_is_restarted_and_the_scores_do_not_change(ds, ctx, rex, local_scores, tmp_path):
    score_dataset(ds.subset(range(SHARD)), make_scorer("length"), ctx, cache_root=tmp_path / "warm", executor=rex)
    result, before = {}, rex.worker_pids()            # the actors of this context, started by the warm-up

    def run():
        result["out"] = score_dataset(ds, make_scorer("ifd", **SCORERS["ifd"]), ctx, shard_size=2,
                                      cache_root=tmp_path, executor=rex)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 120
    while not list((tmp_path / "scores").glob("*/*.parquet")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(before[0], signal.SIGKILL)                                  # mid-run: shards are in flight
    t.join(timeout=300)
    assert not t.is_alive() and "out" in result
    assert result["out"].attrs["cache"]["computed"] == len(ds)
    _same(result["out"], local_scores["ifd"])
    after = rex.worker_pids()
    assert before[0] not in after and before[1] in after               # one restarted, the other kept


def test_api_judge_on_ray_matches_local(ds, rex, tmp_path):
    prompt = tmp_path / "ten.yaml"
    prompt.write_text(yaml.safe_dump({"name": "ten", "parser": "first_number", "scale": [1, 10],
                                      "user": "Rate from 1 to 10.\n{{instruction}}\n{{response}}"}))
    with FakeOpenAI(latency=0.05, api_key=os.environ[KEY_VAR]) as srv:
        judge = {"kind": "api", "model": "fake-judge", "base_url": srv.url, "concurrency": 4, "timeout": 5.0,
                 "api_key_env": KEY_VAR}
        jctx = ModelContext("bundled", device="cpu", dtype="float32", judge=judge)

        def scorer():
            return make_scorer("judge", prompt=str(prompt), mode="generate")

        on_ray = score_dataset(ds, scorer(), jctx, shard_size=SHARD, cache_root=tmp_path / "r", executor=rex)
        sent = len(srv.records)
        local = score_dataset(ds, scorer(), jctx, shard_size=SHARD, cache_root=tmp_path / "l")
    assert sent == len(ds)                                              # the workers asked the server
    assert on_ray["status"].eq("ok").all() and on_ray.attrs["cache"]["failed"] == 0
    rendered = load_prompt(str(prompt))
    users = [rendered.render(**sample_fields(m, meta, "last"), dimension="accuracy")[-1]["content"]
             for m, meta in zip(ds.messages, ds.meta)]
    np.testing.assert_array_equal(on_ray["rating"].to_numpy(), [float(rating_of(u)) for u in users])
    pd.testing.assert_frame_equal(on_ray, local)


def test_less_gradient_passes_on_ray_match_local(rex, tmp_path, monkeypatch):
    """LESS's pool feature store is built from per-shard gradient features computed on the Ray workers
    (Scorer.map_shards), written by the driver: the same scores as the local run."""
    pytest.importorskip("peft")
    from test_gradient_shards import ALPACA, LONG, store_shards, write_jsonl
    from tiny_model import save_tiny_llama
    from thresher.data import load
    from thresher.scoring import gradient_base
    from thresher.training.sft import train

    monkeypatch.setattr(gradient_base, "POOL_SHARD", 3)           # three store shards for the 9-row pool
    model = save_tiny_llama(tmp_path / "model")
    train(write_jsonl(tmp_path / "train.jsonl", ALPACA), out=tmp_path / "run", model=str(model), lora_r=4,
          lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], template="alpaca", add_eos=False,
          max_length=128, max_steps=4, save_steps=2, batch_size=4, logging_steps=1, lr=5e-3, device="cpu",
          dtype="float32", seed=0)
    pool = load(write_jsonl(tmp_path / "pool.jsonl", ALPACA[:4] + [LONG] + ALPACA[4:8]))
    target = write_jsonl(tmp_path / "t.jsonl", ALPACA[8:10])
    tctx = ModelContext(str(model), device="cpu", dtype="float32")

    def less():
        return make_scorer("less", checkpoints=str(tmp_path / "run"), target=[target], proj_dim=64, max_length=128)

    on_ray = score_dataset(pool, less(), tctx, cache_root=tmp_path / "r", executor=rex)
    local = score_dataset(pool, less(), tctx, cache_root=tmp_path / "l")
    _same(on_ray, local)
    ray_store, local_store = store_shards(tmp_path / "r"), store_shards(tmp_path / "l")
    assert len(ray_store) == 6 and ray_store.keys() == local_store.keys()     # 2 checkpoints x 3 shards
    for name, path in ray_store.items():
        np.testing.assert_allclose(np.load(path), np.load(local_store[name]), rtol=1e-4, atol=1e-5)  # threads differ


def test_a_worker_that_cannot_load_its_model_stops_the_run(ds, rex, tmp_path):
    """The driver only hashes the folder (the model's identity); the workers fail to load it: the run
    stops with the worker's error, and no shard is cached."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    bctx = ModelContext(str(broken), device="cpu", dtype="float32")
    t0 = time.time()
    with pytest.raises(ThresherError) as err:
        score_dataset(ds, make_scorer("ifd", **SCORERS["ifd"]), bctx, shard_size=SHARD, cache_root=tmp_path / "c",
                      executor=rex)
    assert time.time() - t0 < 120
    assert str(broken) in str(err.value) or "worker" in str(err.value)
    assert not list((tmp_path / "c").rglob("*.parquet"))


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "thresher", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_a_killed_driver_resumes_from_its_shards(ds, local_scores, tmp_path):
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ds.raw), encoding="utf-8")
    cache = tmp_path / "cache"
    args = ["score", str(data), "--scorer", "ifd", "--template", "alpaca", "--max-length", "256",
            "--shard-size", "2", "--device", "cpu", "--dtype", "float32", "--cache-dir", str(cache)]
    p = _cli(*args, "--out", str(tmp_path / "killed"), "--executor", "ray", "--workers", "2",
             start_new_session=True)                       # its own process group: Ray's processes die with it
    deadline = time.time() + 180
    while len(list((cache / "scores").glob("*/*.parquet"))) < 2 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    done = len(list((cache / "scores").glob("*/*.parquet")))
    assert 2 <= done < len(ds) // 2, "the driver should be killed mid-run"
    q = _cli(*args, "--out", str(tmp_path / "rerun"))
    _, stderr = q.communicate(timeout=300)
    assert q.returncode == 0, stderr
    rec = json.loads((tmp_path / "rerun" / "manifest.json").read_text())["stages"][0]["scorers"][0]["cache"]
    assert rec["cached"] == 2 * done and rec["computed"] == len(ds) - 2 * done
    got = pd.read_parquet(tmp_path / "rerun" / "scores.parquet")
    np.testing.assert_allclose(got["ifd"].to_numpy(), local_scores["ifd"]["ifd"].to_numpy(), rtol=1e-5)


def test_without_ray_the_error_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from thresher.cli import main\n"
            f"sys.exit(main(['score', 'x.jsonl', '--scorer', 'length', '--executor', 'ray', '--out', "
            f"{str(tmp_path / 'o')!r}]))")
    (tmp_path / "x.jsonl").write_text(json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.returncode == 2, p.stderr
    assert "pip install 'thresher[ray]'" in p.stderr and "Traceback" not in p.stderr

