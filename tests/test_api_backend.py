"""OpenAIChat against a real loopback HTTP server that injects faults (tests/fake_openai.py).

No mocks: every request goes over a socket to ``FakeOpenAI``, whose answers are a deterministic
function of the prompt and which records every request it receives and every completion it bills.
"""

from __future__ import annotations

import email.utils
import json
import os
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fake_openai import NONNUMERIC_REPLY, FakeOpenAI, prompt_hash, read_log, start_subprocess, usage_for

from thresher.errors import ConfigError
from thresher.models.api import OpenAIChat, backoff_delay, retry_after_seconds
from thresher.models.chat import ChatRequest, ChatResult
from thresher.models.request_cache import RequestCache

SYSTEM = "You rate the quality of a response from 1 to 10."
SECRET = "sk-test-SECRET123"


def req(prompt: str, **sampling) -> ChatRequest:
    return ChatRequest.of([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                          **sampling)


def client(srv, **kw) -> OpenAIChat:
    kw = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, **kw}
    return OpenAIChat("fake-judge", base_url=srv.url, **kw)


@pytest.fixture(autouse=True)
def _no_real_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


# --------------------------------------------------------------------------- (1) faults, no loss

PROMPTS = [f"Sample {i}: is this answer helpful and correct?" for i in range(60)]
PLANNED = {PROMPTS[1]: ["429:1"], PROMPTS[2]: ["500", "503"], PROMPTS[3]: ["hang"],
           PROMPTS[4]: ["malformed"], PROMPTS[5]: ["truncated"], PROMPTS[6]: ["nocontent"],
           PROMPTS[8]: ["429:date:2", "500", "truncated"], PROMPTS[9]: ["503:0.5"]}


def test_faulty_server_every_request_answered_once_and_billed_once(tmp_path):
    with FakeOpenAI(faults=PLANNED, rates={"500": 0.1, "429": 0.05, "malformed": 0.05, "truncated": 0.05},
                    seed=3, retry_after=0.1, latency=0.02, hang_seconds=1.0,
                    nonnumeric={PROMPTS[7]}) as srv:
        b = client(srv, concurrency=8, timeout=0.4, cache_path=tmp_path / "c.sqlite",
                   price_input_per_1m=1.0, price_output_per_1m=2.0)
        res = b.chat([req(p) for p in PROMPTS])
        records = list(srv.records)
        billed = dict(srv.billed)

    # No loss, the server's deterministic answers, in input order; the non-numeric reply is text.
    assert [r.error for r in res] == [None] * 60
    assert [r.text for r in res] == [srv.expected(p) for p in PROMPTS]
    assert res[7].text == NONNUMERIC_REPLY and not res[7].text.strip().isdigit()
    assert res[0].text.split("\n")[0].isdigit()
    # Billed exactly once per prompt, although many prompts were requested more than once.
    assert billed == {prompt_hash(p): 1 for p in PROMPTS}
    kinds = [r["kind"] for r in records]
    assert sum(k != "ok" for k in kinds) >= 13, kinds              # planned 11 + rate faults
    assert {"hang", "malformed", "truncated", "nocontent", "500", "503"} <= {k.split(":")[0] for k in kinds}

    s = b.stats()
    assert s["calls"] == len(records)
    assert s["retries"] == sum(k != "ok" for k in kinds)           # each fault cost exactly one retry
    assert (s["requests"], s["cached"], s["failed"]) == (60, 0, 0)
    usage = [usage_for([{"content": SYSTEM}, {"content": p}], srv.expected(p)) for p in PROMPTS]
    assert s["prompt_tokens"] == sum(u[0] for u in usage)
    assert s["completion_tokens"] == sum(u[1] for u in usage)
    assert s["cost"] == pytest.approx((s["prompt_tokens"] * 1.0 + s["completion_tokens"] * 2.0) / 1e6)
    assert [(r.prompt_tokens, r.completion_tokens) for r in res] == usage

    # Retry-After honoured: the retry of a 429 arrives no earlier than the header allowed.
    def attempts(prompt):
        return sorted((r for r in records if r["prompt"] == prompt_hash(prompt)), key=lambda r: r["attempt"])

    a1 = attempts(PROMPTS[1])
    assert a1[0]["retry_after"] == "1"
    assert a1[1]["t_arrival"] - a1[0]["t_reply"] >= 1.0
    a8 = attempts(PROMPTS[8])
    allowed = email.utils.parsedate_to_datetime(a8[0]["retry_after"]).timestamp() - a8[0]["wall_reply"]
    assert allowed > 0.9
    assert a8[1]["t_arrival"] - a8[0]["t_reply"] >= allowed - 0.01
    a9 = attempts(PROMPTS[9])                         # 503: this request waits, the others do not
    assert a9[0]["status"] == 503 and a9[0]["retry_after"] == "0.5"
    assert a9[1]["t_arrival"] - a9[0]["t_reply"] >= 0.5
    # A 429 pauses every thread of the backend: nothing arrives while the 1 s window is open.
    t429 = a1[0]["t_reply"]
    assert not [r for r in records if t429 + 0.05 < r["t_arrival"] < t429 + 0.95]


def test_retry_after_on_503_delays_only_that_request():
    with FakeOpenAI(faults={"busy": ["503:0.6"]}, latency=0.02) as srv:
        res = client(srv, concurrency=2).chat([req("busy"), req("b"), req("c"), req("d")])
        records = list(srv.records)
    assert [r.text for r in res] == [srv.expected(p) for p in ("busy", "b", "c", "d")]
    busy = [r for r in records if r["prompt"] == prompt_hash("busy")]
    assert [r["status"] for r in busy] == [503, 200]
    assert busy[1]["t_arrival"] - busy[0]["t_reply"] >= 0.6
    others = [r for r in records if r["prompt"] != prompt_hash("busy")]
    assert max(r["t_arrival"] for r in others) < busy[0]["t_reply"] + 0.5    # not paused


# --------------------------------------------------------------------------- (2) cache and dedup

def test_rerun_is_served_from_cache_without_http(tmp_path):
    path = tmp_path / "cache.sqlite"
    prompts = PROMPTS[:30]
    with FakeOpenAI(faults={prompts[0]: ["500"]}, latency=0.01) as srv:
        first = client(srv, cache_path=path).chat([req(p) for p in prompts])
        n_calls = len(srv.records)
        assert n_calls == 31
        b = client(srv, cache_path=path)                      # a new process would do the same
        again = b.chat([req(p) for p in prompts])
        assert len(srv.records) == n_calls                    # zero HTTP calls
    assert [r.text for r in again] == [r.text for r in first] == [srv.expected(p) for p in prompts]
    assert all(r.cached for r in again) and not any(r.cached for r in first)
    assert [(r.prompt_tokens, r.completion_tokens) for r in again] == \
        [(r.prompt_tokens, r.completion_tokens) for r in first]
    s = b.stats()
    assert (s["requests"], s["cached"], s["calls"], s["retries"], s["cost"]) == (30, 30, 0, 0, 0.0)
    assert len(RequestCache(path)) == 30


def test_sampling_parameters_are_part_of_the_cache_key(tmp_path):
    with FakeOpenAI() as srv:
        b = client(srv, cache_path=tmp_path / "c.sqlite")
        b.chat([req("same prompt")])
        b.chat([req("same prompt", temperature=0.7), req("same prompt", seed=1), req("same prompt")])
        assert len(srv.records) == 3                           # the last one came from the cache
    assert b.stats()["cached"] == 1


def test_identical_requests_in_one_call_share_one_http_call():
    with FakeOpenAI(latency=0.05) as srv:
        b = client(srv, concurrency=4)
        res = b.chat([req("dup A")] * 5 + [req("dup B")] + [req("dup A")])
        assert len(srv.records) == 2
    assert [r.text for r in res] == [srv.expected("dup A")] * 5 + [srv.expected("dup B"), srv.expected("dup A")]
    assert res[0] is not res[1]                                 # copies, not one aliased object
    s = b.stats()
    assert (s["requests"], s["calls"], s["extra"]["deduplicated"]) == (7, 2, 5)
    assert s["prompt_tokens"] == 2 * usage_for([{"content": SYSTEM}, {"content": "dup A"}], "")[0]


def test_exhausted_retries_fail_without_caching_and_are_retried_next_run(tmp_path):
    path = tmp_path / "c.sqlite"
    with FakeOpenAI(faults={"flaky": ["500", "500", "500"]}) as srv:
        b = client(srv, max_retries=2, cache_path=path)
        (bad, good) = b.chat([req("flaky"), req("fine")])
        assert bad.text is None and "gave up after 3 attempts" in bad.error and "HTTP 500" in bad.error
        assert good.text == srv.expected("fine")
        assert sum(r["prompt"] == prompt_hash("flaky") for r in srv.records) == 3
        assert b.stats()["failed"] == 1 and b.stats()["retries"] == 2
        assert len(RequestCache(path)) == 1                      # only the success
        (bad2, good2) = b.chat([req("flaky"), req("fine")])       # 4th attempt is clean
    assert bad2.text == srv.expected("flaky") and not bad2.cached and good2.cached


def test_non_retryable_400_fails_at_once_and_others_proceed():
    with FakeOpenAI(faults={"too long": ["400"]}) as srv:
        res = client(srv, concurrency=2).chat([req("too long"), req("ok 1"), req("ok 2")])
        assert sum(r["prompt"] == prompt_hash("too long") for r in srv.records) == 1
    assert res[0].text is None and "HTTP 400" in res[0].error and "not retried" in res[0].error
    assert [r.text for r in res[1:]] == [srv.expected("ok 1"), srv.expected("ok 2")]


def test_404_stops_the_rest_of_the_call():
    prompts = ["first", "second", "third", "fourth"]
    with FakeOpenAI(faults={"first": ["404"]}) as srv:
        b = client(srv, concurrency=1)
        res = b.chat([req(p) for p in prompts])
        assert len(srv.records) == 1                             # the other three were never sent
    assert "HTTP 404" in res[0].error and "'fake-judge'" in res[0].error
    assert all(r.text is None and r.error.startswith("not sent: HTTP 404") for r in res[1:])
    assert b.stats()["failed"] == 4 and b.stats()["calls"] == 1


# --------------------------------------------------------------------------- (3) kill and resume

DRIVER = textwrap.dedent("""
    import json, sys
    from thresher.models.api import OpenAIChat
    from thresher.models.chat import ChatRequest
    url, cache, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    b = OpenAIChat("fake-judge", base_url=url, cache_path=cache, concurrency=4, backoff_base=0.01)
    res = b.chat([ChatRequest.of([{"role": "user", "content": f"resume sample {i}"}]) for i in range(n)])
    with open(out, "w") as f:
        json.dump({"texts": [r.text for r in res], "errors": [r.error for r in res], "stats": b.stats()}, f)
""")


def test_killed_run_resumes_without_re_requesting_finished_prompts(tmp_path):
    n = 200
    prompts = [f"resume sample {i}" for i in range(n)]
    driver, cache, out = tmp_path / "driver.py", tmp_path / "judge.sqlite", tmp_path / "out.json"
    driver.write_text(DRIVER)
    proc, url, log = start_subprocess(tmp_path, "--latency", "0.05")
    try:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        run = [sys.executable, str(driver), url, str(cache), str(n), str(out)]
        victim = subprocess.Popen(run, env=env)
        deadline = time.monotonic() + 30
        while sum(r["billed"] for r in read_log(log)) < 60:
            assert victim.poll() is None and time.monotonic() < deadline, "driver ended before the kill"
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert not out.exists()
        time.sleep(0.2)                                # in-flight replies reach the server log
        before = read_log(log)

        ident = OpenAIChat("fake-judge", base_url=url).identity()
        keys = [ChatRequest.of([{"role": "user", "content": p}]).key(ident) for p in prompts]
        with RequestCache(cache) as c:
            saved = c.get_many(keys)
        done = {prompt_hash(p) for p, k in zip(prompts, keys) if k in saved}
        assert 50 <= len(done) < n
        assert all(saved[k].text == FakeOpenAI().expected(p) for p, k in zip(prompts, keys) if k in saved)
        # Killed mid-run, the cache lost at most the 4 requests in flight.
        billed_before = {r["prompt"] for r in before if r["billed"]}
        assert done <= billed_before and len(billed_before - done) <= 4

        subprocess.run(run, env=env, check=True, timeout=60)
        after = read_log(log)[len(before):]
        resumed = json.loads(out.read_text())
    finally:
        proc.terminate()
        proc.wait()

    assert not done & {r["prompt"] for r in after}    # nothing finished before the kill was asked again
    assert resumed["errors"] == [None] * n
    assert resumed["stats"]["cached"] == len(done) and resumed["stats"]["calls"] == n - len(done)
    # Same answers as an uninterrupted run (fresh cache, in process, same deterministic server rule).
    with FakeOpenAI(latency=0.0) as srv:
        straight = OpenAIChat("fake-judge", base_url=srv.url, concurrency=8,
                              cache_path=tmp_path / "straight.sqlite").chat(
            [ChatRequest.of([{"role": "user", "content": p}]) for p in prompts])
    assert resumed["texts"] == [r.text for r in straight] == [srv.expected(p) for p in prompts]


# --------------------------------------------------------------------------- (4) the key never leaks

def _all_log_text(caplog) -> str:
    return "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)


def test_api_key_is_never_logged_raised_cached_or_reported(tmp_path, monkeypatch, caplog):
    caplog.set_level("DEBUG", logger="thresher")
    monkeypatch.setenv("THRESHER_TEST_KEY", SECRET)
    with FakeOpenAI(api_key="sk-the-right-one") as srv:
        # Planted defect: this server quotes back the key it was given, as some servers do.
        rq = urllib.request.Request(srv.url + "/chat/completions", data=b'{"messages": []}',
                                    headers={"Authorization": f"Bearer {SECRET}"})
        with pytest.raises(urllib.error.HTTPError) as http_err:
            urllib.request.urlopen(rq, timeout=5)
        assert SECRET in http_err.value.read().decode()

        b = client(srv, api_key_env="THRESHER_TEST_KEY", concurrency=2)
        with pytest.raises(ConfigError) as rejected:              # a wrong key stops the call at once
            b.chat([req(f"secret test {i}") for i in range(10)])
        assert len(srv.records) <= 1 + 2                        # rejected key: the rest is not sent
    assert "THRESHER_TEST_KEY" in str(rejected.value) and "rejected" in str(rejected.value)
    assert "HTTP 401" in str(rejected.value)

    with FakeOpenAI(api_key=SECRET) as srv:                     # now the key is right
        path = tmp_path / "k.sqlite"
        b2 = client(srv, api_key_env="THRESHER_TEST_KEY", cache_path=path, max_retries=1)
        ok = b2.chat([req(f"secret test {i}") for i in range(10)] + [req("x")])
        assert [r.text for r in ok[:10]] == [srv.expected(f"secret test {i}") for i in range(10)]
        b2.close()

    monkeypatch.setenv("THRESHER_TEST_KEY", SECRET + " x")       # a key with a space is refused

    with pytest.raises(ConfigError) as bad_key:
        OpenAIChat("m", base_url="https://api.invalid/v1", api_key_env="THRESHER_TEST_KEY").chat([req("a")])

    texts = [r.error or "" for r in ok] + [str(rejected.value), str(bad_key.value), _all_log_text(caplog),
                                                 json.dumps(b.stats()), json.dumps(b2.stats()),
                                                 b.identity(), repr(b)]
    assert "THRESHER_TEST_KEY" in str(bad_key.value)
    assert caplog.records                                        # something was logged and checked
    for t in texts:
        assert SECRET not in t
    assert SECRET.encode() not in pickle.dumps(b2)
    files = list(tmp_path.glob("k.sqlite*"))
    assert files and all(SECRET.encode() not in f.read_bytes() for f in files)


# --------------------------------------------------------------------------- (5) configuration

def test_missing_key_variable_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    b = OpenAIChat("gpt-4o-mini", base_url="https://api.invalid/v1", api_key_env="MY_JUDGE_KEY")
    with pytest.raises(ConfigError, match="MY_JUDGE_KEY"):
        b.chat([req("anything")])
    monkeypatch.setenv("MY_JUDGE_KEY", "   ")                  # empty counts as missing
    with pytest.raises(ConfigError, match="MY_JUDGE_KEY"):
        b.chat([req("anything")])
    assert b.chat([]) == []


def test_fully_cached_call_needs_no_key_and_no_network(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    b = OpenAIChat("gpt-4o-mini", base_url="https://api.invalid/v1", api_key_env="MY_JUDGE_KEY",
                   cache_path=tmp_path / "c.sqlite")
    r = req("cached already")
    with RequestCache(tmp_path / "c.sqlite") as c:
        c.put(r.key(b.identity()), ChatResult("7", prompt_tokens=11, completion_tokens=1))
    (out,) = b.chat([r])
    assert (out.text, out.cached, out.prompt_tokens) == ("7", True, 11)


@pytest.mark.parametrize("kw, message", [
    ({"concurrency": 0}, "The 'concurrency' parameter of OpenAIChat must be an int >= 1. Got 0."),
    ({"concurrency": True}, "The 'concurrency' parameter of OpenAIChat must be an int >= 1. Got True."),
    ({"max_retries": -1}, "The 'max_retries' parameter of OpenAIChat must be an int >= 0. Got -1."),
    ({"timeout": 0}, "The 'timeout' parameter of OpenAIChat must be a number of seconds > 0. Got 0."),
    ({"price_input_per_1m": -1.0}, "The 'price_input_per_1m' parameter of OpenAIChat must be a number >= 0."),
    ({"base_url": "ftp://host/v1"}, "The 'base_url' parameter of OpenAIChat must be an http:// or https://"),
    ({"base_url": "https://user:pw@host/v1"}, "must not contain credentials"),
    ({"api_key_env": ""}, "The 'api_key_env' parameter of OpenAIChat must be the name of"),
])
def test_parameter_errors(kw, message):
    with pytest.raises(ConfigError) as e:
        OpenAIChat("m", **kw)
    assert message in str(e.value)


def test_identity_and_pickling():
    b = OpenAIChat("gpt-4o-mini", base_url="https://example.org/v1/", concurrency=3)
    assert b.identity() == "api:https://example.org/v1:gpt-4o-mini"
    b2 = pickle.loads(pickle.dumps(b))
    assert (b2.identity(), b2.concurrency, b2.stats()["calls"]) == (b.identity(), 3, 0)


def test_retry_after_parsing_hand_checked():
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    t = email.utils.parsedate_to_datetime(date).timestamp()
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"Retry-After": "-3"}) == 0.0
    assert retry_after_seconds({"Retry-After": "99999"}) == 600.0
    assert retry_after_seconds({"Retry-After": date}, now=t - 30) == 30.0
    assert retry_after_seconds({"Retry-After": date}, now=t + 30) == 0.0
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert retry_after_seconds({}) is None


def test_backoff_is_full_jitter_under_the_cap():
    rng = random.Random(0)
    for attempt, bound in [(0, 0.5), (1, 1.0), (3, 4.0), (10, 6.0)]:
        d = [backoff_delay(attempt, 0.5, 6.0, rng) for _ in range(2000)]
        assert 0 <= min(d) < 0.05 * bound and 0.95 * bound < max(d) <= bound
        assert sum(d) / len(d) == pytest.approx(bound / 2, rel=0.08)


# --------------------------------------------------------------------------- request cache

def test_request_cache_round_trip_chunks_threads_and_refusals(tmp_path):
    path = tmp_path / "sub" / "rc.sqlite"
    c = RequestCache(path)
    keys = [f"k{i}" for i in range(1200)]                         # > one SELECT chunk
    errors = []

    def writer(part):
        try:
            for k in part:
                c.put(k, ChatResult(f"text {k}", prompt_tokens=len(k), completion_tokens=2))
        except Exception as e:                                   # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(keys[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(c) == 1200
    with pytest.raises(ValueError, match="failed result"):
        c.put("bad", ChatResult(None, error="HTTP 500"))
    c.close()
    got = RequestCache(path).get_many(keys[::-1] + ["absent"])   # reopened: persisted
    assert len(got) == 1200 and "absent" not in got
    assert got["k1199"] == ChatResult("text k1199", prompt_tokens=5, completion_tokens=2, cached=True)

    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(ConfigError, match="not a thresher request cache"):
        RequestCache(other)


# --------------------------------------------------------------------------- (6) concurrency

def test_concurrency_overlaps_requests():
    with FakeOpenAI(latency=0.2) as srv:
        times = {}
        for conc in (1, 8):
            b = client(srv, concurrency=conc)
            t = time.perf_counter()
            res = b.chat([req(f"conc {conc} {i}") for i in range(16)])
            times[conc] = time.perf_counter() - t
            assert [r.text for r in res] == [srv.expected(f"conc {conc} {i}") for i in range(16)]
    assert times[1] >= 16 * 0.2
    assert times[1] / times[8] > 3, times


# --------------------------------------------------------------------------- (7) bounded replies

def test_reply_over_the_cap_is_refused_without_growing_memory(tmp_path):
    """Reproduction: a 300 MB reply to a 128-token request was read whole (4.5 GB RSS) and cached. Here a
    2 MiB reply against a 64 KiB cap, with and without Content-Length: refused, retried, never cached, and
    the client's traced memory stays near the cap (the servers run in their own processes, so that
    tracemalloc sees only the client; a first request warms up imports and the cache)."""
    import tracemalloc

    cap, huge = 64 * 1024, 2 << 20
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    size = ("--huge-bytes", str(huge))
    servers = [start_subprocess(tmp_path / "a", "--rate", "huge=1", "--rate-attempts", "3", *size),
               start_subprocess(tmp_path / "b", "--rate", "huge:nolength=1", "--rate-attempts", "2", *size)]
    try:
        (_, with_length, log_a), (_, no_length, log_b) = servers
        capped = [OpenAIChat("fake-judge", base_url=u, max_response_bytes=cap, max_retries=1, backoff_base=0.01,
                             cache_path=tmp_path / "c.sqlite") for u in (with_length, no_length)]
        warm = [b.chat([req("warm-up")])[0] for b in capped]
        tracemalloc.start()
        try:
            res = [b.chat([req("big")])[0] for b in capped]
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            # Planted contrast: the default 4 MiB cap takes the third, still huge, reply; the measure sees it.
            (control,) = OpenAIChat("fake-judge", base_url=with_length, max_retries=0).chat([req("big")])
            _, control_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        (fine,) = capped[1].chat([req("big")])                   # third attempt: a normal reply
        deadline = time.monotonic() + 5                          # the server logs a request once replied
        while [len(read_log(log)) for log in (log_a, log_b)] != [5, 5] and time.monotonic() < deadline:
            time.sleep(0.02)
        attempts = [len(read_log(log)) for log in (log_a, log_b)]
    finally:
        for proc, _, _ in servers:
            proc.terminate()
            proc.wait()
    assert control.text is not None and len(control.text) > huge - 1000 and control_peak > huge
    assert peak < 8 * cap, peak                                  # vs > 2 MiB when read whole
    for r in res + warm:
        assert r.text is None and r.transient
        assert f"larger than {cap} bytes" in r.error and "gave up after 2 attempts" in r.error
    assert f"Content-Length {huge}" in res[0].error                # refused from the header, body unread
    assert fine.text == FakeOpenAI().expected("big") and attempts == [5, 5]
    assert len(RequestCache(tmp_path / "c.sqlite")) == 1          # only the normal answer


def test_trickled_body_stops_at_the_deadline():
    """Reproduction: a body trickled at 1 byte/s kept a 2 s-timeout request alive for 126 s (every single
    read beat the timeout). Here one byte every 0.05 s (a ~300-byte body: 15 s) against timeout 0.5 s and
    a 1 s deadline per attempt."""
    with FakeOpenAI(faults={"slow": ["trickle", "trickle"]}, trickle_seconds=0.05) as srv:
        b = client(srv, timeout=0.5, deadline=1.0, max_retries=1)
        t = time.monotonic()
        (r,) = b.chat([req("slow")])
        took = time.monotonic() - t
        (ok,) = b.chat([req("slow")])                            # third attempt: a normal reply
    assert r.text is None and r.transient
    assert "no complete reply" in r.error and "within 1 s" in r.error
    assert 2.0 <= took < 3.5, took                               # two attempts of 1 s, plus backoff
    assert ok.text == srv.expected("slow")
    assert OpenAIChat("m", timeout=2.0).deadline == 10.0          # default: 5 x timeout


# --------------------------------------------------------------------------- (8) no key in clear text

def test_http_to_a_non_loopback_host_is_refused_before_any_connection(monkeypatch):
    """Reproduction: http:// to a remote host sent the key unencrypted without a word. A proxy on loopback
    (the fake server) would see any request to 10.0.0.1, so 'no traffic' is observed, not assumed."""
    from thresher.pipeline.recipe import check_recipe

    monkeypatch.setenv("THRESHER_TEST_KEY", SECRET)
    for var in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with FakeOpenAI() as srv:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{srv.port}")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{srv.port}")
        for url in ("http://10.0.0.1/v1", "http://judge.example.org:8000/v1", "HTTP://10.0.0.1/v1"):
            with pytest.raises(ConfigError, match="unencrypted") as e:
                OpenAIChat("m", base_url=url, api_key_env="THRESHER_TEST_KEY")
            assert "allow_http" in str(e.value) and "--judge-allow-http" in str(e.value)
        with pytest.raises(ConfigError, match="allow_http"):          # a recipe fails validation already
            check_recipe({"judge": {"kind": "api", "model": "m", "base_url": "http://10.0.0.1/v1"},
                          "stages": [{"name": "s", "score": [{"scorer": "length"}]}]}, "r.yaml")
        assert srv.records == []
        # Loopback and https stay allowed; opting in sends (here: to the proxy, i.e. the fake server).
        OpenAIChat("m", base_url="http://localhost:1/v1")
        OpenAIChat("m", base_url="https://10.0.0.1/v1")
        b = OpenAIChat("fake-judge", base_url="http://10.0.0.1/v1", api_key_env="THRESHER_TEST_KEY",
                       allow_http=True, max_retries=0)
        (r,) = b.chat([req("through the proxy")])
        assert r.text == srv.expected("through the proxy") and len(srv.records) == 1


# --------------------------------------------------------------------------- (6) key scrubbing

KEY = "sk-THRESHERFAKEKEY-0123456789abcdefghijklmnopqrstu"       # 50 characters


def _pieces(key: str, n: int = 8) -> list[str]:
    return [key[i:i + n] for i in range(len(key) - n + 1)]


@pytest.mark.parametrize("offset", [0, 200, 251, 270, 290, 299, 300, 340])
def test_key_echoed_near_the_cut_is_scrubbed(offset, monkeypatch):
    """Reproduction: the error text was cut to 300 characters before the key was removed, so a key echoed
    across the cut survived in part (50 of 59 characters). Every 8-character piece must be gone."""
    monkeypatch.setenv("THRESHER_TEST_KEY", KEY)
    with FakeOpenAI(api_key=KEY, echo_key_at=offset, faults={"p": ["500", "500"]}) as srv:
        (r,) = client(srv, api_key_env="THRESHER_TEST_KEY", max_retries=1).chat([req("p")])
    assert r.text is None and "HTTP 500" in r.error
    assert offset > 290 or "[redacted]" in r.error                  # the echo was there, and removed
    assert not [p for p in _pieces(KEY) if p in r.error]


def test_scrub_key_removes_every_run_of_eight_characters():
    from thresher.keys import scrub_key

    assert scrub_key(f"a {KEY} b", KEY) == "a [redacted] b"
    assert scrub_key(f"cut: {KEY[:30]}", KEY) == "cut: [redacted]"
    assert scrub_key(f"tail:{KEY[-9:]}; mid {KEY[20:28]}x", KEY) == "tail:[redacted]; mid [redacted]x"
    assert scrub_key(f"short {KEY[:7]} stays", KEY) == f"short {KEY[:7]} stays"
    assert scrub_key("nothing here", KEY) == "nothing here" and scrub_key("x", None) == "x"


def test_api_key_env_must_be_a_variable_name_and_a_pasted_key_is_not_echoed():
    from thresher.models.judges import JudgeConfig
    from thresher.config import build

    for bad in (KEY, "1BAD", "MY KEY", "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"):
        for make in (lambda v: OpenAIChat("m", api_key_env=v),
                     lambda v: build(JudgeConfig, {"kind": "api", "model": "m", "api_key_env": v}, "judge")):
            with pytest.raises(ConfigError, match="name of an environment variable") as e:
                make(bad)
            assert not [p for p in _pieces(bad, 4) if p in str(e.value)] or len(bad) < 8
    assert "looks like an API key" in str(pytest.raises(ConfigError, OpenAIChat, "m", api_key_env=KEY).value)
    assert OpenAIChat("m", api_key_env="MY_JUDGE_KEY_2").api_key_env == "MY_JUDGE_KEY_2"


def test_manifest_argv_is_scrubbed(monkeypatch):
    from thresher.manifest import base_manifest

    monkeypatch.setenv("MY_JUDGE_VAR", "plainpassword123")             # not key-shaped: found by value
    argv = ["thresher", "score", "data/alpaca_2024.json", "--judge-api-key-env", "MY_JUDGE_VAR",
            "--judge-model", "Mixtral-8x7B-Instruct-v0.1", "--param", f"note={KEY}", KEY,
            "--set", "judge.note=xx-plainpassword123-yy", "--judge-base-url", "https://api.openai.com/v1"]
    got = base_manifest(argv)["argv"]
    assert got == ["thresher", "score", "data/alpaca_2024.json", "--judge-api-key-env", "MY_JUDGE_VAR",
                   "--judge-model", "Mixtral-8x7B-Instruct-v0.1", "--param", "note=[redacted]", "[redacted]",
                   "--set", "judge.note=xx-[redacted]-yy", "--judge-base-url", "https://api.openai.com/v1"]
