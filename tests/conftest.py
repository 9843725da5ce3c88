"""Shared fixtures. Caches point at a per-session temp dir; the bundled model is loaded once."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

_CACHE = tempfile.mkdtemp(prefix="thresher-test-cache-")
atexit.register(shutil.rmtree, _CACHE, True)     # it holds the converted bundled model: ~0.5 GB a session
os.environ["THRESHER_CACHE"] = _CACHE          # before any thresher import reads it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache_root():
    return _CACHE


@pytest.fixture(scope="session")
def ctx():
    """One ModelContext with the bundled SmolLM2 loaded, shared by every real-model test."""
    from thresher.models.context import ModelContext

    c = ModelContext("bundled", device="cpu", dtype="float32")
    c.lm().setup()
    return c


@pytest.fixture(scope="session")
def sharegpt_1500():
    """The first 1500 valid records of the bundled ShareGPT."""
    from thresher.data.readers import bundled_sharegpt_path, load

    return load(bundled_sharegpt_path(), limit=1500, lenient=True, on_invalid="skip")


@pytest.fixture(scope="session")
def sharegpt_long_texts(sharegpt_1500):
    """Real ShareGPT first turns (user message + reply) longer than 3,000 characters: 150 of them."""
    from thresher.data.records import split_turns

    texts = []
    for msgs in sharegpt_1500.messages:
        context, resp = split_turns(msgs, "first")[0]
        text = "\n".join(m["content"] for m in context) + "\n" + resp
        if len(text) > 3000:
            texts.append(text)
    assert len(texts) >= 150, f"only {len(texts)} long first turns in the first 1500 records"
    return texts[:150]


@pytest.fixture(scope="session")
def sharegpt_short(sharegpt_1500):
    """Real ShareGPT first-turn pairs, short enough (prompt and response under 400 characters)
    that a real-model test runs in seconds and nothing is truncated at max_length 512."""
    from thresher.data.records import split_turns

    ds = sharegpt_1500
    keep = []
    for i, msgs in enumerate(ds.messages):
        context, resp = split_turns(msgs, "first")[0]
        if len(context) == 1 and 20 <= len(context[0]["content"]) <= 400 and 40 <= len(resp) <= 400:
            keep.append(i)
    assert len(keep) >= 80, f"only {len(keep)} short pairs in the first 1500 records"
    return ds.subset(keep[:80])


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one intra-op thread for a module: two threads spin against other processes on a shared
    2-core machine, and one is faster there."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def hub_calls(monkeypatch):
    """``datasets.load_dataset`` replaced by an unreachable hub that records the names asked of it."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def unreachable(name, split=None):
        calls.append(name)
        raise ConnectionError("Couldn't reach 'huggingface.co'")
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    return calls
