"""A fault-injecting fake OpenAI-compatible chat server on 127.0.0.1 (tests and benchmarks).

Every reply waits ``latency`` seconds; with ``jitter`` j, a wait drawn per (seed, prompt, attempt)
uniformly from [latency * (1 - j), latency * (1 + j)] (mean ``latency``), as a real API's replies vary.
The reply to a request is a deterministic function of its last user message (``reply_for``): a
rating 1..10 from a SHA-256 of the prompt on the first line, then a short explanation, with usage
counts (prompt tokens = whitespace-separated words of all messages, completion tokens = words of
the reply). Prompts listed in ``nonnumeric`` always get a well-formed reply whose text is not a
number. In process, ``reply_fn(prompt) -> text`` replaces the rating reply (OpenCS tags and pairs).

Faults, per prompt and attempt (attempt n = the n-th request this server saw for that prompt):
  * ``faults={prompt: [kind, kind, ...]}``: attempt i gets the i-th kind, later attempts are clean;
  * ``rates={kind: probability}``: attempts below ``rate_attempts`` get a fault drawn from a hash
    of (seed, prompt, attempt), so a run is reproducible and every prompt succeeds eventually.
Kinds: ``429`` (Retry-After = ``retry_after`` seconds; ``429:2.5`` for 2.5 s, ``429:date:2`` for an
HTTP date about 2 s ahead, ``429:none`` for no header), ``500``, ``503`` (``503:1`` adds
Retry-After: 1), ``hang`` (no reply for
``hang_seconds``, then the connection is closed), ``malformed`` (200, not JSON), ``truncated`` (200,
Content-Length larger than the body sent, connection closed), ``nocontent`` (200, JSON without
choices), ``400``, ``404``, ``huge`` (200, a well-formed reply of ``huge_bytes`` bytes, streamed in
64 KiB pieces so the server holds little of it; ``huge:nolength`` sends no Content-Length and closes
the connection at the end), ``trickle`` (200, Content-Length set, the body sent one byte every
``trickle_seconds``).
With ``api_key`` set, a request without ``Authorization: Bearer <api_key>`` gets 401 and a body
that quotes the key it received (as a careless server would), so clients must scrub error texts.
With ``echo_key_at=N`` every error body (401, 429, 5xx, 400, 404) quotes the received key starting
at character N of its message (e.g. 270: across a 300-character cut).

Every request is recorded in ``records`` on arrival and completed when its reply is sent: prompt
hash, attempt, kind, status (None while pending or for a hang), ``billed``, the Retry-After header
sent, arrival and reply times on the ``time.monotonic`` clock (system-wide on Linux) and the reply's
wall-clock time. ``billed`` counts well-formed 200 completions per prompt hash. With ``log_path``
(always in subprocess mode) each completed record is appended to a JSON-lines file.
``inflight`` (in process) is the number of requests in flight over time: a ``(time.monotonic(), count)``
pair at every change, a request counting from the moment its headers are read until its reply (or, for a
hang, its silence) ends; ``inflight_timeline()`` returns a copy.

In process::

    with FakeOpenAI(latency=0.05, faults={"p1": ["429", "500"]}) as srv:
        OpenAIChat("fake", base_url=srv.url)...

As a subprocess::

    python tests/fake_openai.py --port-file PORT --log-file LOG.jsonl --latency 0.3 --rate 429=0.02
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

KINDS = ("429", "500", "503", "hang", "malformed", "truncated", "nocontent", "400", "404", "huge", "trickle")
NONNUMERIC_REPLY = "I cannot give this response a rating."


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def rating_of(prompt: str) -> int:
    """The fake judge's rating of a prompt: 1..10 from a hash."""
    return 1 + int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16) % 10


def reply_for(prompt: str, nonnumeric=()) -> str:
    if prompt in nonnumeric:
        return NONNUMERIC_REPLY
    return f"{rating_of(prompt)}\nThe response is rated {rating_of(prompt)} (fake judge, {prompt_hash(prompt)})."


def usage_for(messages: list[dict], reply: str) -> tuple[int, int]:
    return sum(len(str(m.get("content", "")).split()) for m in messages), len(reply.split())


def last_user_message(messages) -> str:
    users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


def _unit(seed: int, h: str, attempt: int) -> float:
    """A reproducible uniform in [0, 1) per (seed, prompt, attempt)."""
    d = hashlib.sha256(f"{seed}:{h}:{attempt}".encode()).digest()
    return int.from_bytes(d[:8], "big") / 2.0**64


class FakeOpenAI:
    def __init__(self, *, latency: float = 0.0, jitter: float = 0.0, faults: dict | None = None,
                 rates: dict | None = None,
                 rate_attempts: int = 2, seed: int = 0, retry_after: float = 1.0, hang_seconds: float = 5.0,
                 nonnumeric=(), api_key: str | None = None, log_path=None, port: int = 0, reply_fn=None,
                 echo_key_at: int | None = None, huge_bytes: int = 1 << 20, trickle_seconds: float = 0.1):
        for kinds in (faults or {}).values():
            for k in kinds:
                if k.split(":")[0] not in KINDS:
                    raise ValueError(f"unknown fault kind {k!r}; known: {', '.join(KINDS)}")
        for k in rates or {}:
            if k.split(":")[0] not in KINDS:
                raise ValueError(f"unknown fault kind {k!r}; known: {', '.join(KINDS)}")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1]; got {jitter}")
        self.latency, self.jitter = float(latency), float(jitter)
        self.rate_attempts, self.seed = int(rate_attempts), int(seed)
        self.faults = {prompt_hash(p): list(v) for p, v in (faults or {}).items()}
        self.rates = dict(rates or {})
        self.retry_after, self.hang_seconds = retry_after, float(hang_seconds)
        self.nonnumeric = frozenset(nonnumeric)
        self.reply_fn = reply_fn          # in-process only: prompt -> reply text (e.g. JSON tags, pair scores)
        self.api_key = api_key
        self.echo_key_at, self.huge_bytes, self.trickle_seconds = echo_key_at, int(huge_bytes), float(trickle_seconds)
        self.log_path = None if log_path is None else Path(log_path)
        self.records: list[dict] = []
        self.billed: Counter = Counter()
        self.attempts: Counter = Counter()
        self.inflight: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._port = port
        self.httpd = None
        self._thread = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeOpenAI":
        fake = self

        class Handler(_Handler):
            server_state = fake

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256          # the default 5 drops connects from a burst of clients

        self.httpd = Server(("127.0.0.1", self._port), Handler)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ behaviour
    def expected(self, prompt: str) -> str:
        if self.reply_fn is not None:
            return self.reply_fn(prompt)
        return reply_for(prompt, self.nonnumeric)

    def latency_for(self, h: str, attempt: int) -> float:
        """Seconds before the reply: ``latency``, spread by ``jitter`` reproducibly per prompt and attempt."""
        return self.latency * (1.0 + self.jitter * (2.0 * _unit(self.seed, "latency:" + h, attempt) - 1.0))

    def fault_for(self, h: str, attempt: int) -> str | None:
        planned = self.faults.get(h)
        if planned is not None and attempt < len(planned):
            return planned[attempt]
        if self.rates and attempt < self.rate_attempts:
            u, acc = _unit(self.seed, h, attempt), 0.0
            for kind, p in self.rates.items():
                acc += p
                if u < acc:
                    return kind
        return None

    def track(self, change: int) -> None:
        """One request more (+1) or fewer (-1) in flight, timestamped."""
        with self.lock:
            now = (self.inflight[-1][1] if self.inflight else 0) + change
            self.inflight.append((time.monotonic(), now))

    def inflight_timeline(self) -> list[tuple[float, int]]:
        """(time.monotonic(), requests in flight from then on), at every change, in time order."""
        with self.lock:
            return list(self.inflight)

    def arrive(self, rec: dict) -> None:
        """Record a request on arrival (so a test sees it even while the reply is pending)."""
        with self.lock:
            self.records.append(rec)

    def finish(self, rec: dict) -> None:
        """Complete a record once its reply is sent: billing and the JSON-lines log."""
        with self.lock:
            if rec["billed"]:
                self.billed[rec["prompt"]] += 1
            if self.log_path is not None:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")

    def error_message(self, text: str, got: str) -> str:
        """An error message; with ``echo_key_at``, padded so that the key received starts at that offset."""
        if self.echo_key_at is None:
            return text
        lead = f"{text} You sent the key "
        return (lead + "." * max(0, self.echo_key_at - len(lead)))[:self.echo_key_at] + got + " (echoed)."

    def sent_prompts(self) -> set[str]:
        """Hashes of the prompts that reached the model (authorised requests)."""
        with self.lock:
            return {r["prompt"] for r in self.records if r["kind"] != "unauthorised"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"             # keep-alive, as real API servers do
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle's algorithm holds the body
    # until the client's delayed ACK (~40 ms per request on Linux), which would swamp the timings.
    disable_nagle_algorithm = True
    server_state: FakeOpenAI

    def log_message(self, *args) -> None:    # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None, cut: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if cut is not None:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        self.server_state.track(+1)
        try:
            self._answer()
        finally:
            self.server_state.track(-1)

    def _answer(self) -> None:
        fake = self.server_state
        t_arrival = time.monotonic()
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._send(404, b'{"error": {"message": "no such endpoint"}}')
        try:
            payload = json.loads(raw)
            messages = payload["messages"]
        except (ValueError, KeyError, TypeError):
            return self._send(400, b'{"error": {"message": "body is not a chat-completions request"}}')
        prompt = last_user_message(messages)
        h = prompt_hash(prompt)
        rec = {"prompt": h, "attempt": None, "kind": "ok", "status": 200, "billed": False,
               "t_arrival": t_arrival, "t_reply": None}
        got = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            msg = f"Incorrect API key provided: {got}." if fake.echo_key_at is None else \
                fake.error_message("Incorrect API key provided.", got)
            body = json.dumps({"error": {"message": msg, "code": "invalid_api_key"}}).encode()
            rec.update(kind="unauthorised", status=401, t_reply=time.monotonic())
            fake.arrive(rec)
            fake.finish(rec)
            return self._send(401, body)
        with fake.lock:
            attempt = fake.attempts[h]
            fake.attempts[h] += 1
        kind = fake.fault_for(h, attempt) or "ok"
        rec.update(attempt=attempt, kind=kind, status=None)
        fake.arrive(rec)
        if fake.latency:
            fake.stopping.wait(fake.latency_for(h, attempt))
        base = kind.split(":")[0]
        if base == "hang":
            fake.stopping.wait(fake.hang_seconds)
            rec.update(t_reply=time.monotonic())
            fake.finish(rec)
            self.close_connection = True          # the client gave up long ago; say nothing
            return
        reply = fake.expected(prompt)
        pt, ct = usage_for(messages, reply)
        good = json.dumps({"id": f"chatcmpl-{h}-{attempt}", "object": "chat.completion",
                           "model": payload.get("model"),
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": pt, "completion_tokens": ct,
                                     "total_tokens": pt + ct}}).encode()
        status, body, headers, cut = 200, good, {}, None
        if base == "huge":
            return self._send_huge(fake, rec, good, nolength=kind == "huge:nolength")
        if base == "trickle":
            return self._send_trickle(fake, rec, good)
        if base == "429":
            status, body = 429, json.dumps({"error": {"message": fake.error_message(
                "Rate limit reached (fake).", got)}}).encode()
            arg = kind.split(":")[1:]
            if arg[:1] == ["date"]:
                when = time.time() + float(arg[1] if len(arg) > 1 else fake.retry_after)
                headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
            elif arg[:1] != ["none"]:
                headers["Retry-After"] = f"{float(arg[0]) if arg else fake.retry_after:g}"
        elif base in ("500", "503", "400", "404"):
            status, body = int(base), json.dumps({"error": {"message": fake.error_message(
                f"fake error {base}", got)}}).encode()
            if base == "503" and kind.count(":"):
                headers["Retry-After"] = kind.split(":")[1]
        elif base == "malformed":
            body = b"<html>502 Bad Gateway</html>"
        elif base == "truncated":
            cut = len(good) // 2
        elif base == "nocontent":
            body = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
        # t_reply: when the reply starts to go out, the earliest moment the client can hold it (taken after
        # the send, a client that starts waiting on receipt could seem to wait a little less than it did).
        rec.update(retry_after=headers.get("Retry-After"), wall_reply=time.time())
        t_reply = time.monotonic()
        try:
            self._send(status, body, headers, cut)
            billed = kind == "ok"
        except OSError:
            billed = False                         # the client is gone: it never got the answer
        with fake.lock:
            rec.update(status=status, billed=billed, t_reply=t_reply)
        fake.finish(rec)


    def _send_huge(self, fake: FakeOpenAI, rec: dict, good: bytes, nolength: bool) -> None:
        """A valid completion of fake.huge_bytes bytes, its content padded with spaces, written in pieces."""
        head, tail = good.split(b'"content": "', 1)
        head += b'"content": "'
        pad = max(0, fake.huge_bytes - len(head) - len(tail))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")           # the client may stop reading mid-body
        self.close_connection = True
        if not nolength:
            self.send_header("Content-Length", str(len(head) + pad + len(tail)))
        self.end_headers()
        sent, piece = 0, memoryview(b" " * 65536)          # slices of a memoryview copy nothing
        try:
            self.wfile.write(head)
            while sent < pad:
                self.wfile.write(piece[:pad - sent])
                sent += min(len(piece), pad - sent)
            self.wfile.write(tail)
            self.wfile.flush()
        except OSError:
            self.close_connection = True          # the client stopped reading: expected
        rec.update(status=200, t_reply=time.monotonic(), sent_bytes=len(head) + sent)
        fake.finish(rec)

    def _send_trickle(self, fake: FakeOpenAI, rec: dict, good: bytes) -> None:
        """Headers at once, then the body one byte every fake.trickle_seconds."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(good)))
        self.end_headers()
        self.wfile.flush()
        sent = 0
        try:
            for i in range(len(good)):
                if fake.stopping.wait(fake.trickle_seconds):
                    break
                self.wfile.write(good[i:i + 1])
                self.wfile.flush()
                sent += 1
        except OSError:
            pass                                  # the client gave up
        self.close_connection = True
        rec.update(status=200, t_reply=time.monotonic(), sent_bytes=sent)
        fake.finish(rec)


# --------------------------------------------------------------------------- subprocess mode

def read_log(path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:                         # a line being written right now
            break
    return out


def start_subprocess(workdir, *args: str, timeout: float = 20.0) -> tuple[subprocess.Popen, str, Path]:
    """Start this file as a server process; returns (process, base_url, log path)."""
    workdir = Path(workdir)
    port_file, log_file = workdir / "fake_openai.port", workdir / "fake_openai.log.jsonl"
    for p in (port_file, log_file):
        p.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--port-file", str(port_file),
                             "--log-file", str(log_file), *args])
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"fake OpenAI server did not start (exit code {proc.poll()})")
        time.sleep(0.02)
    return proc, f"http://127.0.0.1:{int(port_file.read_text())}/v1", log_file


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True, help="the bound port is written here once serving")
    ap.add_argument("--log-file", help="JSON-lines record of every request")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    ap.add_argument("--jitter", type=float, default=0.0, help="latency spread: uniform in latency * (1 +- J)")
    ap.add_argument("--rate", action="append", default=[], metavar="KIND=P",
                    help=f"fault rate for attempts below --rate-attempts; KIND in {', '.join(KINDS)}")
    ap.add_argument("--rate-attempts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retry-after", type=float, default=1.0)
    ap.add_argument("--hang-seconds", type=float, default=5.0)
    ap.add_argument("--api-key")
    ap.add_argument("--echo-key-at", type=int, default=None)
    ap.add_argument("--huge-bytes", type=int, default=1 << 20)
    a = ap.parse_args(argv)
    rates = {k: float(v) for k, v in (r.split("=", 1) for r in a.rate)}
    srv = FakeOpenAI(latency=a.latency, jitter=a.jitter, rates=rates, rate_attempts=a.rate_attempts, seed=a.seed,
                     retry_after=a.retry_after, hang_seconds=a.hang_seconds, api_key=a.api_key,
                     echo_key_at=a.echo_key_at, huge_bytes=a.huge_bytes,
                     log_path=a.log_file, port=a.port).start()
    tmp = Path(a.port_file).with_suffix(".tmp")
    tmp.write_text(str(srv.port))
    os.replace(tmp, a.port_file)                   # atomic: a reader never sees a partial number
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    srv.stop()


if __name__ == "__main__":
    main()
