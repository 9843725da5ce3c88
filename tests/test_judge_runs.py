"""LLM-judge scoring end to end.

API judge: `thresher run` against a real OpenAI-compatible HTTP server on loopback (tests/fake_openai.py)
that injects 429 with Retry-After, 500, a hang past the client timeout, malformed and truncated bodies,
and a non-numeric rating. The run is killed with SIGKILL mid-way and restarted: no sample is lost, no
prompt is billed twice, finished prompts are never requested again, and the ratings equal the server's
deterministic answers. Local judge: the packaged recipes run on the bundled model on short real records.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fake_openai import FakeOpenAI, prompt_hash, rating_of
from test_engine import ALPACA
from thresher.data import load
from thresher.scoring.judge import sample_fields
from thresher.scoring.prompts import load_prompt

ROOT = Path(__file__).resolve().parent.parent
PROMPT = {"name": "ten", "parser": "first_number", "scale": [1, 10],
          "user": "Rate this response from 1 to 10.\nInstruction: {{instruction}} {{input}}\nResponse: {{response}}"}


def _records(n: int) -> list[dict]:
    return [{**ALPACA[i % len(ALPACA)], "instruction": f"{ALPACA[i % len(ALPACA)]['instruction']} (#{i})"}
            for i in range(n)]


def _user_texts(path: Path, prompt_path: Path) -> list[str]:
    ds, prompt = load(path), load_prompt(str(prompt_path))
    return [prompt.render(**sample_fields(m, meta, "last"), dimension="accuracy")[-1]["content"]
            for m, meta in zip(ds.messages, ds.meta)]


def _run(recipe, data: Path, out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "THRESHER_CACHE": str(cache), "PYTHONPATH": str(ROOT / "src")}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "thresher", "run", str(recipe), "--data", str(data),
                             "--out", str(out), *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_api_rating_run_survives_faults_and_kill(tmp_path):
    data, prompt_file = tmp_path / "data.json", tmp_path / "ten.yaml"
    data.write_text(json.dumps(_records(40)))
    prompt_file.write_text(yaml.safe_dump(PROMPT))
    users = _user_texts(data, prompt_file)
    faults = {users[1]: ["429:0.5", "500"], users[2]: ["hang"], users[3]: ["malformed"],
              users[4]: ["truncated", "503"], users[30]: ["500", "500", "500"]}
    with FakeOpenAI(latency=0.12, faults=faults, nonnumeric={users[5]}, hang_seconds=3.0) as srv:
        recipe = tmp_path / "api.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "api-rating", "shard_size": 4,
            "judge": {"kind": "api", "model": "fake-judge", "base_url": srv.url, "concurrency": 2,
                      "timeout": 1.0, "max_retries": 6},
            "stages": [{"name": "rate", "score": [{"scorer": "judge", "params": {"prompt": str(prompt_file),
                                                                                "mode": "generate"}}],
                        "select": {"selector": "top_k", "params": {"ratio": 0.5}}}]}))
        out, cache = tmp_path / "run", tmp_path / "cache"
        proc = _run(recipe, data, out, cache)
        deadline = time.monotonic() + 60
        while sum(srv.billed.values()) < 14 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)                      # let replies to the dead client's in-flight requests settle
        killed_at = time.monotonic()
        done_before = {h for h, n in srv.billed.items() if n}
        assert 14 <= len(done_before) < 40, "the kill must land mid-run"

        proc = _run(recipe, data, out, cache)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        after = [r for r in srv.records if r["t_arrival"] > killed_at]

    # Every prompt billed; finished prompts never asked again. The only exception a kill allows: the
    # requests in flight at that moment (at most `concurrency` = 2), answered but never received.
    asked_again = {r["prompt"] for r in after} & done_before
    assert len(asked_again) <= 2
    assert set(srv.billed) == {prompt_hash(u) for u in users}
    assert sum(srv.billed.values()) == 40 + len(asked_again)
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 40
    expected = np.array([math.nan if i == 5 else float(rating_of(u)) for i, u in enumerate(users)])
    np.testing.assert_array_equal(scores["rating"].to_numpy(), expected)
    assert scores["status"].tolist() == ["unparsed" if i == 5 else "ok" for i in range(40)]
    summary = json.loads((out / "summary.json").read_text())
    stage = summary["stages"][0]
    assert stage["columns"]["rating"]["nan"] == 1 and stage["columns"]["rating"]["nan_reasons"] == {"unparsed": 1}
    assert stage["selected"] == 20
    assert "judge:" in stdout and "unparsed: 1" in stdout


@pytest.fixture(scope="module")
def short_alpaca(tmp_path_factory):
    path = tmp_path_factory.mktemp("alpaca") / "short.json"
    path.write_text(json.dumps(ALPACA[:12]))
    return path


@pytest.mark.slow
# Expected scores (alpagasus, deita) are continuous and must vary; DS2's compressed classes from a 135M
# model's most probable overall rating are legitimately all 0 on easy alpaca rows, so only the range is
# checked there, plus the raw 1-9 overall ratings the compression read.
@pytest.mark.parametrize("recipe,column,lo,hi,varies", [("alpagasus", "rating", 0, 5, True),
                                                        ("ds2", "ds2_score", 0, 5, False),
                                                        ("deita", "quality_rating", 1, 6, True)])
def test_local_judge_recipes_run_on_bundled_model(recipe, column, lo, hi, varies, short_alpaca, tmp_path,
                                                  cache_root):
    from thresher.cli import main

    out = tmp_path / recipe
    assert main(["-q", "run", recipe, "--data", str(short_alpaca), "--out", str(out), "--cache-dir", cache_root]) == 0
    scores = pd.read_parquet(out / "scores.parquet")
    v = scores[column].to_numpy(dtype=float)
    assert len(v) == 12 and np.isfinite(v).all() and (v >= lo).all() and (v <= hi).all()
    if varies:
        assert len(set(np.round(v, 6))) > 1, "a judge that gives every sample the same score is not rating"
    else:
        overall = scores["overall"].to_numpy()
        assert set(overall) <= set(range(1, 10))
        assert np.array_equal(scores["rating"].to_numpy(), np.clip(overall, 4, 9) - 4)
    selected = (out / "selected_ids.txt").read_text().split()
    assert 1 <= len(selected) <= 2 and set(selected) <= set(scores["id"])


# ------------------------------------------------------------------------------------------- OpenCS
TOPICS = [("translat", ["Translation"]), ("french", ["translation"]), ("sum", ["Math calculation!"]),
          ("temperature", ["math calculations", "unit conversion"]), ("haiku", ["creative writing"]),
          ("name", ["Creative Writing"]), ("noun", ["grammar explanation"]), ("antonym", ["grammar explanation"])]


def _tag_reply(prompt: str) -> str:
    if "[Instruction 1]:" in prompt:                        # a pair prompt: score each response
        resp = [prompt.split(f"[Response {k}]: ", 1)[1].split("\n")[0] for k in (1, 2)]
        return "Both are fine.\n" + "\n".join(f"[Response {k}]: [{_pair_score(r)}]" for k, r in zip((1, 2), resp))
    ins = prompt.split("[begin]\n", 1)[1].split("\n[end]", 1)[0].lower()
    tags = [t for key, ts in TOPICS if key in ins for t in ts] or ["question answering"]
    tags.append(["step by step", "concise answer", "formal tone", "examples"][int(ins.split("(#")[1][:-1]) % 4])
    if "#3)" in ins:
        tags.append("one-off tag")                          # seen once: dropped by the frequency filter
    body = json.dumps([{"tag": t, "explanation": "because"} for t in tags])
    return f"Here are the tags:\n```json\n{body}\n```"


def _pair_score(response: str) -> int:
    return 10 + len(response.split("\n")[0]) % 90         # first line: all the fake judge reads of it


def test_opencs_recipe_through_api_judge(tmp_path):
    from thresher.data import load

    data = tmp_path / "data.json"
    data.write_text(json.dumps(_records(32)))
    with FakeOpenAI(reply_fn=_tag_reply) as srv:
        out, cache = tmp_path / "run", tmp_path / "cache"
        proc = _run("opencs", data, out, cache, "--judge", "api", "--judge-model", "fake", "--judge-base-url",
                    srv.url, "--set", "stages.0.select.params.per_cluster=2")
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr
    s = pd.read_parquet(out / "scores.parquet")
    ds = load(data)
    assert (s["status"] == "ok").all()
    tags = [json.loads(t) for t in s["tags"]]
    assert tags[3][-1] == "one-off tag"
    sets = [tuple(json.loads(x)) for x in s["label_set"]]
    assert all(sets) and len({c for st in sets for c in st}) <= 8
    # Same normalised tags -> same label set ("Math calculation!" and "math calculations" stem alike).
    norm = {}
    for i, t in enumerate(tags):
        from thresher.scoring.tags import normalise_tag
        key = tuple(sorted({normalise_tag(x) for x in t if x != "one-off tag"}))
        norm.setdefault(key, set()).add(sets[i])
    assert all(len(v) == 1 for v in norm.values())
    # One representative per label set: the longest response, ties to the lowest index.
    resp = [m[-1]["content"] for m in ds.messages]
    rank = s["opencs_rank"].to_numpy()
    for st in set(sets):
        rows = [i for i in range(len(sets)) if sets[i] == st]
        best = max(rows, key=lambda i: (len(resp[i]), -i))
        assert [i for i in rows if rank[i] >= 0] == [best]
    # Pairs inside clusters (representatives in rank order), scored by the fake judge's rule.
    reps = sorted(np.flatnonzero(rank >= 0), key=lambda i: rank[i])
    clusters = {c: [i for i in reps if c in sets[i]] for c in sorted({c for st in sets for c in st})}
    expect = {}
    for c, mem in clusters.items():
        for a, b in zip(mem[0::2], mem[1::2]):
            expect.setdefault(a, {})[str(c)] = _pair_score(resp[a])
            expect.setdefault(b, {})[str(c)] = _pair_score(resp[b])
    got = {i: json.loads(x) for i, x in enumerate(s["opencs_cluster_scores"]) if json.loads(x)}
    assert got == expect
    # Selection: clusters by ascending size, up to 2 best not yet taken from each.
    picked = []
    for c in sorted(clusters, key=lambda c: len(clusters[c])):
        cand = [i for i in clusters[c] if str(c) in expect.get(i, {}) and i not in picked]
        picked += sorted(cand, key=lambda i: -expect[i][str(c)])[:2]
    assert len(picked) >= 4 and len(expect) >= 6
    assert (out / "selected_ids.txt").read_text().split() == [ds.ids[i] for i in picked]


@pytest.mark.slow
def test_judge_turns_all_rates_every_turn(ctx, cache_root):
    """turns: all rates each assistant turn (DEITA multi-turn); each per-turn logit rating equals the rating
    of that turn scored alone, and ``rating`` is their mean."""
    from thresher.data.table import Dataset, LoadReport
    from thresher.engine.scoring import score_dataset
    from thresher.scoring import make_scorer

    msgs = [[{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "2+2 equals 4."},
             {"role": "user", "content": "And the capital of France?"},
             {"role": "assistant", "content": "The capital of France is Paris."}],
            [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]]
    ds = Dataset(ids=["a", "b"], messages=msgs, raw=[{}, {}], meta=[{"index": 0}, {"index": 1}],
                 fmt="messages", container="jsonl", source="t", report=LoadReport("t", "messages", "jsonl"))
    run = lambda turns: score_dataset(ds, make_scorer("judge", prompt="deita_quality", mode="logits", turns=turns),
                                      ctx, cache_root=cache_root)
    both, first, last = run("all"), run("first"), run("last")
    turns_a = both["rating_turns"][0]
    np.testing.assert_allclose(turns_a, [first["rating"][0], last["rating"][0]], atol=1e-5)
    assert abs(turns_a[0] - turns_a[1]) > 1e-4                 # two different turns, two different ratings
    np.testing.assert_allclose(both["rating"][0], turns_a.mean(), atol=1e-9)
    np.testing.assert_allclose(both["rating_turns"][1], [first["rating"][1]], atol=1e-5)
    assert list(both["status"]) == ["ok", "ok"]
