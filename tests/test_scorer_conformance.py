"""Conformance of every registered scorer, generated from SCORERS. A scorer that reads no earlier score column and
runs on its default parameters with at most the run's model needs nothing here (``default_case``); any other
scorer registered without an entry in CASES fails here.

For each scorer, on a few short alpaca rows (and the score columns it reads, built here):
  - every produced column has one value per input row;
  - row-scope scorers give the same values in shards of 2 rows as in one shard (engine.scoring.score_dataset
    with shard_size 2 vs 64), and every scorer gives each row the same values when the rows come in shuffled
    order (dataset-scope scorers see the whole pool at once, so order is what can change for them); model
    scorers within a relative tolerance for float noise (batch composition changes padding), the others
    exactly. Columns that are positions in the row order by design (documented in the scorer) keep only
    their multiset of values;
  - a missing required score column is a ConfigError that names the column;
  - the class metadata is complete, and a constructed scorer pickles (workers receive scorers by pickle).
Models: the bundled SmolLM2 (ifd, perplexity, length, embedding, guard_lm), the bundled MiniLM (opencs_clusters,
guard_embed), tests/fake_openai.py's server as the judge (judge, opencs_tags, opencs_pairs), and a LoRA run of
tests/tiny_model.py's tiny random Llama for the gradient scorers (less, clues, datainf).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import yaml

from fake_openai import FakeOpenAI, reply_for
from samples import ALPACA
from thresher.data import load
from thresher.engine.scoring import score_dataset
from thresher.errors import ConfigError
from thresher.scoring import SCORERS, make_scorer

N = 8                                    # pool rows
MODEL_RTOL = 1e-4
RATING_PROMPT = {"name": "ten", "parser": "first_number", "scale": [1, 10],
                 "user": "Rate this response from 1 to 10.\nInstruction: {{instruction}} {{input}}\n"
                         "Response: {{response}}"}
TAGS = ("question answering", "translation", "math", "creative writing", "grammar")


@dataclass(frozen=True)
class Case:
    """How the suite runs one scorer."""

    context: str                                        # the fixture that gives the ModelContext
    params: Callable[[dict], dict] = lambda env: {}      # env: the fixtures below, by name
    inputs: Callable[[int], pd.DataFrame] | None = None  # the earlier score columns it reads, for n rows
    rtol: float = 0.0                                    # across shard sizes and orders
    order_defined: tuple[str, ...] = ()                  # columns that are positions in the row order
    slow: bool = True                                    # loads a model


def _unit_vectors(n: int, dim: int = 8, seed: int = 0) -> list[np.ndarray]:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return list(v / np.linalg.norm(v, axis=1, keepdims=True))


def _knn_inputs(n):
    return pd.DataFrame({"embedding": _unit_vectors(n)})


def _ds2_inputs(n):
    return pd.DataFrame({"rating": np.arange(n, dtype=np.float64) % 6, "embedding": _unit_vectors(n, seed=1)})


def _tag_inputs(n):
    return pd.DataFrame({"tags": [json.dumps([TAGS[i % 5], TAGS[(i * 2 + 1) % 5]]) for i in range(n)]})


def _pair_inputs(n):
    sets = [[i % 3] if i % 4 else [i % 3, (i + 1) % 3] for i in range(n)]
    return pd.DataFrame({"label_set": [json.dumps(s) for s in sets], "opencs_rank": np.arange(n)})


CASES: dict[str, Case] = {
    "ifd": Case("ctx", lambda env: {"max_length": 128}, rtol=MODEL_RTOL),
    "perplexity": Case("ctx", lambda env: {"max_length": 128}, rtol=MODEL_RTOL),
    "length": Case("ctx"),
    "random": Case("plain_ctx", lambda env: {"seed": 3}, slow=False),
    "embedding": Case("ctx", lambda env: {"backend": "lm", "max_length": 64}, rtol=MODEL_RTOL),
    "guard_embed": Case("ctx", lambda env: {"max_length": 64}, rtol=MODEL_RTOL),
    "knn": Case("plain_ctx", lambda env: {"k": 2}, _knn_inputs, slow=False),
    "ds2_curation": Case("plain_ctx", lambda env: {"k": 3, "hoc_rounds": 3, "hoc_steps": 60, "detect_epochs": 3},
                         _ds2_inputs, rtol=1e-6, order_defined=("ds2_report",), slow=False),
    "judge": Case("api_ctx", lambda env: {"prompt": env["rating_prompt"], "mode": "generate"}, slow=False),
    "opencs_tags": Case("api_ctx", slow=False),
    "opencs_clusters": Case("plain_ctx", lambda env: {"min_count": 1, "n_clusters": 3}, _tag_inputs,
                            rtol=MODEL_RTOL, order_defined=("opencs_rank",)),
    "opencs_pairs": Case("api_ctx", inputs=_pair_inputs, slow=False),
    "less": Case("tiny_ctx", lambda env: {"checkpoints": env["tiny_run"]["run"], "proj_dim": 64,
                                          "target": [env["tiny_run"]["t1"], env["tiny_run"]["t2"]]},
                 rtol=MODEL_RTOL),
    "clues": Case("tiny_ctx", lambda env: {"checkpoints": env["tiny_run"]["run"], "batch_size": 3,
                                           "validation": [env["tiny_run"]["t1"], env["tiny_run"]["t2"]]},
                  rtol=MODEL_RTOL),
    "datainf": Case("tiny_ctx", lambda env: {"checkpoints": env["tiny_run"]["run"], "batch_size": 3,
                                             "validation": [env["tiny_run"]["t1"]]}, rtol=MODEL_RTOL),
}


def default_case(name: str) -> Case | None:
    """The case of a scorer that needs no special inputs: no required columns, at most the run's language model
    or embedder, and valid default parameters (``max_length`` shortened where it has one); None otherwise."""
    cls = SCORERS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    try:
        scorer = cls(**({"max_length": 128} if "max_length" in fields else {}))
    except ConfigError:
        return None
    if scorer.required_columns() or not set(cls.uses) <= {"lm", "embedder"}:
        return None
    params = {"max_length": 128} if "max_length" in fields else {}
    return Case("ctx" if cls.uses else "plain_ctx", lambda env: params, rtol=MODEL_RTOL if cls.uses else 0.0,
                slow=bool(cls.uses))


def _cases() -> dict[str, Case]:
    return {n: CASES.get(n) or default_case(n) for n in SCORERS.names()}


def _scorers(predicate=lambda name: True):
    """Every registered scorer (so that one without a case fails), slow ones marked so."""
    cases = _cases()
    return [pytest.param(n, marks=[pytest.mark.slow] if cases[n] is None or cases[n].slow else [])
            for n in SCORERS.names() if predicate(n)]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def _write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return load(_write_jsonl(tmp_path_factory.mktemp("conformance") / "pool.jsonl", ALPACA[:N]))


@pytest.fixture(scope="module")
def plain_ctx():
    """A context whose models load only if used (the lm never is here; the MiniLM embedder by opencs_clusters)."""
    from thresher.models.context import ModelContext

    return ModelContext("bundled", device="cpu", dtype="float32")


def _judge_reply(prompt: str) -> str:
    """The fake judge: OpenCS pair scores from each response's first line, tags from a hash of the
    instruction, and otherwise its own 1-10 rating."""
    if "[Instruction 1]:" in prompt:
        resp = [prompt.split(f"[Response {k}]:\n<<<SAMPLE\n", 1)[1].split("\n")[0] for k in (1, 2)]
        return "\n".join(f"[Response {k}]: [{10 + len(r) % 90}]" for k, r in zip((1, 2), resp))
    if "[begin]" in prompt:
        h = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
        return json.dumps([{"tag": TAGS[h % 5], "explanation": "x"}, {"tag": TAGS[h // 5 % 5], "explanation": "y"}])
    return reply_for(prompt)


@pytest.fixture(scope="module")
def judge_server():
    with FakeOpenAI(reply_fn=_judge_reply) as srv:
        yield srv


@pytest.fixture
def api_ctx(judge_server, tmp_path):
    """An API judge on the fake server, with a request cache of this test's own."""
    from thresher.models.context import ModelContext

    return ModelContext("bundled", device="cpu", dtype="float32",
                        judge={"kind": "api", "model": "fake", "base_url": judge_server.url,
                               "cache": str(tmp_path / "requests.sqlite")})


@pytest.fixture(scope="module")
def rating_prompt(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompt") / "ten.yaml"
    path.write_text(yaml.safe_dump(RATING_PROMPT))
    return str(path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny random Llama and one LoRA run on it (r=4 on q,v, checkpoints at steps 2 and 4), the shape of
    tests/test_gradient_scorers.py's run at a fraction of its cost; two target/validation files."""
    pytest.importorskip("peft")
    from tiny_model import save_tiny_llama
    from thresher.training.sft import train

    root = tmp_path_factory.mktemp("tiny-run")
    model = save_tiny_llama(root / "model")
    data = _write_jsonl(root / "train.jsonl", ALPACA)
    train(data, out=root / "run", model=str(model), lora_r=4, lora_alpha=16, lora_dropout=0.0,
          target_modules=["q_proj", "v_proj"], template="alpaca", add_eos=False, max_length=128, max_steps=4,
          save_steps=2, batch_size=4, logging_steps=1, lr=5e-3, device="cpu", dtype="float32", seed=0)
    return {"model": str(model), "run": str(root / "run"), "t1": _write_jsonl(root / "t1.jsonl", ALPACA[8:10]),
            "t2": _write_jsonl(root / "t2.jsonl", ALPACA[10:12])}


@pytest.fixture(scope="module")
def tiny_ctx(tiny_run):
    from thresher.models.context import ModelContext

    return ModelContext(tiny_run["model"], device="cpu", dtype="float32")


class _Env(dict):
    """Fixtures by name, requested when a case's params first ask for them."""

    def __init__(self, request):
        super().__init__()
        self.request = request

    def __missing__(self, name):
        self[name] = self.request.getfixturevalue(name)
        return self[name]


def _case(name: str) -> Case:
    case = _cases()[name]
    assert case is not None, (f"scorer {name!r} reads earlier columns, needs a judge or a training run, or has no "
                              f"valid default parameters: add its case to CASES in tests/test_scorer_conformance.py")
    return case


# ------------------------------------------------------------------------------------------------ helpers
def _score(name, case, env, ds, inputs, shard_size, cache_root) -> pd.DataFrame:
    scorer = make_scorer(name, **case.params(env))
    return score_dataset(ds, scorer, env[case.context], shard_size=shard_size, cache_root=cache_root,
                         inputs=inputs)


def _assert_scored(main: pd.Series) -> None:
    """The main column holds real results for these ordinary rows (not NaN or empty for most of them)."""
    v = main.to_numpy()
    if len(v) and isinstance(v[0], (np.ndarray, list)):
        assert all(np.isfinite(np.asarray(x, float)).all() for x in v)
    elif np.issubdtype(v.dtype, np.number):
        assert np.isfinite(v.astype(float)).sum() >= len(v) / 2, v
    else:
        assert sum(x not in ("", "null", "[]") for x in v) >= len(v) / 2, v


def _assert_same(got: pd.DataFrame, want: pd.DataFrame, rtol: float, what: str, skip=()) -> None:
    assert list(got.columns) == list(want.columns), what
    assert got["id"].tolist() == want["id"].tolist(), what
    for col in want.columns:
        if col in skip:
            continue
        x, y = got[col].to_numpy(), want[col].to_numpy()
        msg = f"column {col!r}: {what}"
        if len(y) and isinstance(y[0], (np.ndarray, list)):          # per-row vectors (embeddings, turns)
            for a, b in zip(x, y):
                np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=1e-7,
                                           err_msg=msg)
        elif np.issubdtype(y.dtype, np.number) and y.dtype != bool:
            np.testing.assert_allclose(x.astype(float), y.astype(float), rtol=rtol, atol=1e-7, equal_nan=True,
                                       err_msg=msg)
        else:
            assert x.tolist() == y.tolist(), msg


# ------------------------------------------------------------------------------------------------ tests
def test_every_registered_scorer_has_a_case():
    assert not set(CASES) - set(SCORERS.names()), "CASES names a scorer that is not registered"
    assert all(_cases().values()), [n for n, c in _cases().items() if c is None]
    assert default_case("random") is not None and default_case("knn") is None and default_case("judge") is None


@pytest.mark.parametrize("name", _scorers())
def test_lengths_batch_size_and_row_order(name, pool, request, tmp_path):
    case, env = _case(name), _Env(request)
    scope = SCORERS.get(name).scope
    inputs = case.inputs(len(pool)) if case.inputs else None
    ref = _score(name, case, env, pool, inputs, 64, tmp_path / "one-shard")
    produced = make_scorer(name, **case.params(env)).produced_columns()
    assert len(ref) == len(pool) and ref["id"].tolist() == pool.ids
    assert set(ref.columns) - {"id"} <= set(produced) and len(ref.columns) > 1
    assert all(len(ref[c]) == len(pool) for c in ref.columns)
    _assert_scored(ref[make_scorer(name, **case.params(env)).main_column])
    if scope == "row":
        small = _score(name, case, env, pool, inputs, 2, tmp_path / "shards-of-2")
        assert small.attrs["cache"]["computed"] == len(pool)
        _assert_same(small, ref, case.rtol, "shards of 2 rows vs one shard")

    perm = np.random.default_rng(0).permutation(len(pool))
    shuffled = _score(name, case, env, pool.subset(perm), None if inputs is None else inputs.iloc[perm],
                      64, tmp_path / "shuffled")
    back = shuffled.iloc[np.argsort(perm)].reset_index(drop=True)
    _assert_same(back, ref, case.rtol, "rows in shuffled order", skip=case.order_defined)
    for col in case.order_defined:
        assert sorted(map(str, shuffled[col])) == sorted(map(str, ref[col])), col


@pytest.mark.parametrize("name", _scorers(lambda n: _cases()[n] is None or _cases()[n].inputs is not None))
def test_a_missing_required_column_is_named(name, pool, request, tmp_path):
    case, env = _case(name), _Env(request)
    scorer = make_scorer(name, **case.params(env))
    need = scorer.required_columns()
    assert need and case.inputs is not None, "a scorer that reads score columns needs inputs in its case"
    inputs = case.inputs(len(pool))
    for col in need:
        with pytest.raises(ConfigError, match=re.escape(repr(col))):
            score_dataset(pool, make_scorer(name, **case.params(env)), env[case.context], cache_root=tmp_path,
                          inputs=inputs.drop(columns=[col]))


@pytest.mark.parametrize("name", _scorers())
def test_metadata_is_complete_and_a_scorer_pickles(name, request):
    case, env = _case(name), _Env(request)
    cls = SCORERS.get(name)
    assert cls.name == name and isinstance(cls.version, str) and cls.version
    assert dataclasses.is_dataclass(cls.Params)
    assert cls.produces and all(isinstance(v, str) and v for v in cls.produces.values())
    assert cls.main_column in cls.produces and cls.scope in ("row", "dataset")
    assert cls.higher_is_better in (True, False, None)
    assert (cls.__doc__ or "").strip(), "the first docstring line is what `thresher ls` shows"
    scorer = make_scorer(name, **case.params(env))
    copy = pickle.loads(pickle.dumps(scorer))
    assert type(copy) is cls and copy.params == scorer.params and copy.ctx is None
