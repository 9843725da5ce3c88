"""Judge backends by registry: JudgeConfig's kinds are JUDGE_BACKENDS' names, an unknown kind is refused with a
"Did you mean", each kind is built by its registered class, and a backend's module is imported only when
that kind is chosen (no model is loaded here)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thresher.config import build
from thresher.errors import ConfigError
from thresher.models.judges import JUDGE_BACKENDS, JudgeConfig
from thresher.pipeline.recipe import check_recipe

SRC = str(Path(__file__).resolve().parent.parent / "src")


def test_kind_choices_are_the_registered_backends():
    kind = next(f for f in dataclasses.fields(JudgeConfig) if f.name == "kind")
    assert kind.metadata["choices"] == tuple(JUDGE_BACKENDS.names()) == ("local", "api", "vllm")
    assert kind.default == "local"


@pytest.mark.parametrize("kind, hint", [("vlm", "Did you mean 'vllm'?"), ("lcoal", "Did you mean 'local'?"),
                                        ("openai", "")])
def test_an_unknown_kind_is_refused_with_the_known_ones(kind, hint):
    with pytest.raises(ConfigError, match=f"The 'kind' parameter of judge must be one of 'local', 'api', 'vllm'. "
                                          f"Got '{kind}'.") as err:
        build(JudgeConfig, {"kind": kind}, "judge")
    assert str(err.value).endswith(f"Got {kind!r}.{' ' + hint if hint else ''}")
    with pytest.raises(ConfigError, match=f"recipe r.yaml: judge.*Got '{kind}'"):     # before any stage runs
        check_recipe({"judge": {"kind": kind}, "stages": [{"name": "s", "score": [{"scorer": "length"}]}]},
                     "r.yaml")


_PROBE = """
import json, sys
from thresher.models.context import ModelContext
from thresher.models.judges import make_judge
ctx = ModelContext("bundled", device="cpu", dtype="float32")
out = {}
for spec in json.loads(sys.argv[1]):
    judge = make_judge(spec, ctx)
    out[spec["kind"] + ":" + str(spec.get("model"))] = {
        "class": type(judge).__name__,
        "model": judge.lm.model_spec if hasattr(judge, "lm") else getattr(judge, "model_spec", None),
        "shares_lm": getattr(judge, "lm", None) is ctx._lm,
        "vllm_chat_imported": "thresher.models.vllm_chat" in sys.modules,
        "local_judge_imported": "thresher.models.local_judge" in sys.modules}
print(json.dumps(out))
"""


def _probe(specs: list[dict]) -> dict:
    """make_judge on each spec in a fresh interpreter (so sys.modules shows what each choice imported)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(specs)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_each_kind_is_built_by_its_registered_class_and_imports_only_its_module(tmp_path):
    api = {"kind": "api", "model": "m", "base_url": "http://127.0.0.1:9/v1", "cache": str(tmp_path / "c.sqlite")}
    got = _probe([api])
    assert got["api:m"]["class"] == "OpenAIChat"
    assert not got["api:m"]["vllm_chat_imported"] and not got["api:m"]["local_judge_imported"]

    got = _probe([{"kind": "local"}, {"kind": "local", "model": "other-model"}, {"kind": "vllm"}])
    assert got["local:None"]["class"] == "LocalChat" and got["local:None"]["shares_lm"]   # the run's own model
    assert got["local:other-model"]["class"] == "LocalChat" and not got["local:other-model"]["shares_lm"]
    assert got["local:other-model"]["model"] == "other-model"
    assert not got["local:other-model"]["vllm_chat_imported"]
    assert got["vllm:None"] == {**got["vllm:None"], "class": "VLLMChat", "model": "bundled",
                                "vllm_chat_imported": True}
