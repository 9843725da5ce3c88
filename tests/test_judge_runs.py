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


def _run(recipe, data: Path, out: Path, cache: Path, *extra: str, env: dict | None = None,
         verbose: bool = False) -> subprocess.Popen:
    env = {**os.environ, "THRESHER_CACHE": str(cache), "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "thresher", *(["-v"] if verbose else []), "run", str(recipe), "--data", str(data),
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
        resp = [prompt.split(f"[Response {k}]:\n<<<SAMPLE\n", 1)[1].split("\n")[0] for k in (1, 2)]
        return "Both are fine.\n" + "\n".join(f"[Response {k}]: [{_pair_score(r)}]" for k, r in zip((1, 2), resp))
    ins = prompt.split("[begin]\n<<<SAMPLE\n", 1)[1].split("\nSAMPLE>>>\n[end]", 1)[0].lower()
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
        from thresher.algorithms.opencs_tags import normalise_tag
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


# ------------------------------------------------------------------ issue 13: nothing lost, nothing leaked
def _api_recipe(tmp_path: Path, url: str, prompt_file: Path, **extra) -> Path:
    judge = {"kind": "api", "model": "fake-judge", "base_url": url, "concurrency": 2, "timeout": 2.0,
             "max_retries": 1, **extra.pop("judge", {})}
    recipe = tmp_path / "api.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "api-rating", "shard_size": 4, "judge": judge, **extra,
        "stages": [{"name": "rate", "score": [{"scorer": "judge", "params": {"prompt": str(prompt_file),
                                                                            "mode": "generate"}}]}]}))
    return recipe


def _judge_setup(tmp_path: Path, n: int = 12):
    data, prompt_file = tmp_path / "data.json", tmp_path / "ten.yaml"
    data.write_text(json.dumps(_records(n)))
    prompt_file.write_text(yaml.safe_dump(PROMPT))
    return data, prompt_file, _user_texts(data, prompt_file)


def test_failed_requests_are_not_cached_and_a_rerun_asks_only_them(tmp_path):
    """Reproduction: requests that failed after their retries became NaN rows of a cached shard, so a rerun
    against a healthy server sent 0 requests and kept the NaNs; and the run exited 0."""
    data, prompt_file, users = _judge_setup(tmp_path)
    failing = [1, 2, 9]                                    # shards [0-3] and [8-11]; shard [4-7] is clean
    with FakeOpenAI(faults={users[i]: ["500", "503"] for i in failing}) as srv:
        recipe = _api_recipe(tmp_path, srv.url, prompt_file)
        out, cache = tmp_path / "run", tmp_path / "cache"
        stdout, stderr = (p := _run(recipe, data, out, cache)).communicate(timeout=120)
        assert p.returncode == 2, stderr                   # every failed row counts: default max ratio 0
        first = len(srv.records)
        summary = json.loads((out / "summary.json").read_text())
        scores = pd.read_parquet(out / "scores.parquet")
        shards = list((cache / "scores").rglob("*.parquet"))
        stdout2, stderr2 = (p := _run(recipe, data, out, cache)).communicate(timeout=120)
        assert p.returncode == 0, stderr2
        again = srv.records[first:]
    assert first == 12 + len(failing)                      # one retry each for the failing prompts
    assert summary["failed"] == {"rows": 3, "of": 12, "ratio": 0.25, "max_ratio": 0.0, "exceeded": True,
                                 "resume": summary["failed"]["resume"]}
    assert "rerun the same command" in summary["failed"]["resume"]
    assert np.isnan(scores["rating"].to_numpy()[failing]).all() and scores["rating"].isna().sum() == 3
    assert all(scores["status"][i].startswith("failed: gave up after 2 attempts") for i in failing)
    assert "failed: 3 of 12 scored rows (25.0%) got no judge answer" in stdout
    assert "thresher: error: failed: 3 of 12" in stderr and "rerun the same command" in stderr
    assert len(shards) == 1                                # only the clean shard is cached as final
    # The rerun asks exactly the failed prompts, once each, and ends with no NaN.
    assert sorted(r["prompt"] for r in again) == sorted(prompt_hash(users[i]) for i in failing)
    rerun = pd.read_parquet(out / "scores.parquet")
    np.testing.assert_array_equal(rerun["rating"].to_numpy(), [float(rating_of(u)) for u in users])
    assert (rerun["status"] == "ok").all() and len(list((cache / "scores").rglob("*.parquet"))) == 3
    assert json.loads((out / "summary.json").read_text())["failed"]["rows"] == 0
    assert "failed:" not in stdout2


def test_all_failed_exits_2_unless_max_failed_ratio_allows_it(tmp_path):
    data, prompt_file, users = _judge_setup(tmp_path)
    with FakeOpenAI(rates={"500": 1.0}, rate_attempts=10**6) as srv:     # a server that only fails
        out, cache = tmp_path / "run", tmp_path / "cache"
        recipe = _api_recipe(tmp_path, srv.url, prompt_file)
        p = _run(recipe, data, out, cache, "--max-failed-ratio", "0.9")
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 2, stderr
        assert "failed: 12 of 12 scored rows (100.0%)" in stdout and "more than max_failed_ratio 0.9" in stderr
        assert json.loads((out / "summary.json").read_text())["failed"]["exceeded"] is True
        assert len(srv.records) == 24 and not list((cache / "scores").rglob("*.parquet"))
        # The recipe key allows every row to fail: exit 0, but the summary still says so and how to resume.
        recipe = _api_recipe(tmp_path, srv.url, prompt_file, max_failed_ratio=1.0)
        p = _run(recipe, data, out, cache)
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        assert "failed: 12 of 12 scored rows" in stdout and "within max_failed_ratio 1" in stdout
        assert "rerun the same command" in stdout and "thresher: error" not in stderr
    p = _run(recipe, data, out, cache, "--max-failed-ratio", "1.5")
    assert p.communicate(timeout=60)[1].strip().endswith("Got 1.5.") and p.returncode == 2


def test_rejected_key_stops_the_run_at_once(tmp_path):
    """Reproduction: a wrong key (401) was tried by every shard, each failing all its rows."""
    data, prompt_file, users = _judge_setup(tmp_path, n=40)
    with FakeOpenAI(api_key="sk-the-right-key-0000000000") as srv:
        recipe = _api_recipe(tmp_path, srv.url, prompt_file, judge={"api_key_env": "THRESHER_JUDGE_KEY"})
        p = _run(recipe, data, tmp_path / "run", tmp_path / "cache",
                 env={"THRESHER_JUDGE_KEY": "sk-a-wrong-key-1111111111"})
        stdout, stderr = p.communicate(timeout=60)
        sent = len(srv.records)
    assert p.returncode == 2
    assert sent <= 2                                      # at most the requests in flight (concurrency 2)
    (line,) = stderr.strip().splitlines()[-1:]
    assert line.startswith("thresher: error: The API key from the environment variable THRESHER_JUDGE_KEY was "
                           "rejected") and "HTTP 401" in line
    assert "Traceback" not in stderr and "1111111111" not in stderr + stdout


def test_http_judge_url_to_a_remote_host_is_refused_through_the_cli(tmp_path):
    """No network: the fake server doubles as the http proxy, so any request to 10.0.0.1 would reach it."""
    data, prompt_file, users = _judge_setup(tmp_path, n=4)
    with FakeOpenAI() as srv:
        proxy = {"http_proxy": f"http://127.0.0.1:{srv.port}", "HTTP_PROXY": f"http://127.0.0.1:{srv.port}",
                 "NO_PROXY": "", "no_proxy": "", "THRESHER_JUDGE_KEY": "sk-some-key-22222222222222"}
        base = ["--judge", "api", "--judge-model", "fake-judge", "--judge-base-url", "http://10.0.0.1:8000/v1",
                "--judge-api-key-env", "THRESHER_JUDGE_KEY", "--shard-size", "4"]
        recipe = _api_recipe(tmp_path, srv.url, prompt_file)
        t = time.monotonic()
        p = _run(recipe, data, tmp_path / "run", tmp_path / "cache", *base, env=proxy)
        stderr = p.communicate(timeout=60)[1]
        assert p.returncode == 2 and "unencrypted" in stderr and "--judge-allow-http" in stderr
        assert srv.records == [] and time.monotonic() - t < 30
        p = _run(recipe, data, tmp_path / "run", tmp_path / "cache", *base, "--judge-allow-http", env=proxy)
        stderr = p.communicate(timeout=60)[1]
        assert p.returncode == 0, stderr
        assert len(srv.records) == 4                      # opted in: sent (here through the loopback proxy)


FAKE_KEY = "sk-THRESHERFAKEKEY-0123456789abcdefghijklmnopqrstu"       # 50 characters


def _text_of(path: Path) -> str:
    """Raw bytes of a file, plus the decoded cells of a parquet file or the rows of an SQLite file (their
    compressed or paged storage would hide a string from a byte search)."""
    import sqlite3
    raw = path.read_bytes().decode("latin-1")
    if path.suffix == ".parquet":
        raw += pd.read_parquet(path).to_json()
    elif path.name.endswith(".sqlite"):
        con = sqlite3.connect(path)
        raw += "\n".join(con.iterdump())
        con.close()
    return raw


def test_fault_injection_run_never_leaks_the_key(tmp_path):
    """A server that echoes the key it received in every error body, across the 300-character cut, with
    500s that exhaust the retries, 429s, malformed bodies; then a rejected key. Every 8-character piece of
    the key is searched in the run folder, the cache folder and the captured stdout/stderr."""
    data, prompt_file, users = _judge_setup(tmp_path)
    faults = {users[0]: ["500", "500"], users[3]: ["500", "500"], users[4]: ["429:0.1"], users[7]: ["503"],
              users[8]: ["malformed"], users[10]: ["400"]}
    out, cache, texts = tmp_path / "run", tmp_path / "cache", []
    env = {"FAKE_JUDGE_VAR": FAKE_KEY}
    with FakeOpenAI(api_key=FAKE_KEY, echo_key_at=270, faults=faults) as srv:
        recipe = _api_recipe(tmp_path, srv.url, prompt_file, judge={"api_key_env": "FAKE_JUDGE_VAR"})
        p = _run(recipe, data, out, cache, env=env, verbose=True)
        texts += p.communicate(timeout=120)
        assert p.returncode == 2 and "failed: 2 of 12 scored rows" in texts[0]   # the 400 is final, not counted
        assert "retry 1/1" in texts[1]                     # debug logging was on: retry errors were printed
        env_wrong = {"FAKE_JUDGE_VAR": FAKE_KEY[::-1]}   # now a key the server rejects and echoes
        p = _run(recipe, data, tmp_path / "run2", cache, env=env_wrong, verbose=True)
        texts += p.communicate(timeout=120)
        assert p.returncode == 2 and "rejected" in texts[-1]
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["status"][0].startswith("failed: gave up") and "[redacted]" in scores["status"][0]
    assert "HTTP 400" in scores["status"][10]
    files = [f for root in (out, tmp_path / "run2", cache) if root.exists() for f in root.rglob("*") if f.is_file()]
    assert any(f.name == "summary.json" for f in files) and any(f.suffix == ".sqlite" for f in files)
    texts += [_text_of(f) for f in files]
    for key in (FAKE_KEY, FAKE_KEY[::-1]):
        leaks = {piece for piece in (key[i:i + 8] for i in range(len(key) - 7)) for t in texts if piece in t}
        assert not leaks, leaks
