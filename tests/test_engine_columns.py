"""Scorers that read earlier score columns, and dataset-scope scorers: the bundled MiniLM embeds 16 real
alpaca-style records, the k-NN rareness scorer reads those embeddings over the whole pool. Checked against
a naive numpy computation; the cache key follows the input columns' values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from thresher.data import load
from thresher.engine.scoring import score_dataset
from thresher.errors import ConfigError
from thresher.scoring import make_scorer
from thresher.models.context import ModelContext
from test_engine import ALPACA


@pytest.fixture(scope="module")
def ds16(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "a.json"
    path.write_text(json.dumps(ALPACA))
    return load(path)


@pytest.fixture(scope="module")
def ectx():
    return ModelContext("bundled", device="cpu")


def _naive_knn_mean(emb: np.ndarray, k: int) -> np.ndarray:
    out = []
    for i in range(len(emb)):                       # deliberately one row at a time
        d = [1.0 - float(emb[i] @ emb[j]) / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[j]))
             for j in range(len(emb)) if j != i]
        out.append(np.mean(sorted(d)[:k]))
    return np.array(out)


def test_knn_reads_embeddings_and_matches_naive(ds16, ectx, tmp_path):
    emb = score_dataset(ds16, make_scorer("embedding", text="whole"), ectx, shard_size=5, cache_root=tmp_path)
    vecs = np.stack(emb["embedding"].to_numpy())
    assert vecs.shape == (16, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    knn = score_dataset(ds16, make_scorer("knn", k=3), ectx, cache_root=tmp_path, inputs=emb)
    np.testing.assert_allclose(knn["knn_distance"].to_numpy(), _naive_knn_mean(vecs, 3), atol=1e-5)
    assert knn.attrs["cache"]["computed"] == 16          # one dataset-scope unit

    again = score_dataset(ds16, make_scorer("knn", k=3), ectx, cache_root=tmp_path, inputs=emb)
    assert again.attrs["cache"] == {**again.attrs["cache"], "cached": 16, "computed": 0}
    # Other input values (embeddings of the instruction only) must miss the cache.
    emb2 = score_dataset(ds16, make_scorer("embedding", text="instruction"), ectx, cache_root=tmp_path)
    other = score_dataset(ds16, make_scorer("knn", k=3), ectx, cache_root=tmp_path, inputs=emb2)
    assert other.attrs["cache"]["computed"] == 16
    assert not np.allclose(other["knn_distance"], knn["knn_distance"])


def test_missing_input_column_is_a_clear_error(ds16, ectx, tmp_path):
    with pytest.raises(ConfigError, match=r"'embedding'.*earlier"):
        score_dataset(ds16, make_scorer("knn"), ectx, cache_root=tmp_path,
                      inputs=pd.DataFrame({"id": ds16.ids, "rating": np.zeros(16)}))


def test_recipe_check_catches_a_scorer_before_its_inputs():
    from thresher.pipeline.recipe import check_recipe

    stage = {"name": "s", "score": [{"scorer": "knn"}, {"scorer": "embedding"}],
             "select": {"selector": "top_k", "params": {"ratio": 0.1, "higher_is_better": True}}}
    with pytest.raises(ConfigError, match=r"score 0 \(knn\) reads column\(s\) 'embedding'"):
        check_recipe({"name": "bad", "stages": [stage]}, "t")
    stage["score"].reverse()
    check_recipe({"name": "ok", "stages": [stage]}, "t")
    # Prefixed judge columns count as produced (DEITA's two judges feed a column-reading scorer).
    two = {"name": "s", "score": [{"scorer": "judge", "params": {"prompt": "ds2", "prefix": "x_"}},
                                  {"scorer": "embedding"},
                                  {"scorer": "ds2_curation", "params": {"rating_column": "x_rating"}}]}
    check_recipe({"name": "ok2", "stages": [two]}, "t")
    two["score"][2]["params"]["rating_column"] = "rating"
    with pytest.raises(ConfigError, match="'rating'"):
        check_recipe({"name": "bad2", "stages": [two]}, "t")
