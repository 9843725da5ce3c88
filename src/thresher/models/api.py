"""Chat backend for any OpenAI-compatible ``/chat/completions`` HTTP API (LLM judges).

``OpenAIChat(model, base_url=..., concurrency=8, cache_path=...)`` implements the
``ChatBackend`` protocol of ``thresher.models.chat``:

* ``chat(requests)`` first serves every request it can from the on-disk request cache
  (``cached=True``, no HTTP call, not paid again), merges identical requests (one HTTP call, the
  result is shared), then sends the rest through the backend's request gate: one first-in first-out
  queue served by ``concurrency`` worker threads, shared by every ``chat`` call running at the same
  time (e.g. the engine scoring several shards at once). So the requests in flight never exceed
  ``concurrency``, and stay at it while any call has requests waiting: a call's slowest request does
  not hold the next call's requests back. A request that another running call is already sending (same
  cache key) is not sent again: the later call waits for that answer (counted in ``deduplicated``).
  Each success is committed to the cache as soon as it arrives, so a killed run loses only the
  requests in flight.
* Transient failures are retried up to ``max_retries`` times with exponential backoff and full
  jitter (a wait drawn uniformly from [0, min(backoff_max, backoff_base * 2**attempt)]): HTTP 408,
  409, 425, 429 and 5xx, timeouts, connection errors, and 200 replies whose body is truncated, not
  JSON, or has no ``choices[0].message.content`` string. A ``Retry-After`` header (seconds or an
  HTTP date; also ``retry-after-ms``) on 429/503 is honoured: the retry never comes earlier, and
  after a 429 carrying one no thread of this backend sends anything until it has passed (rate limits are per
  key, not per request).
* A reply is read in chunks and refused once it passes ``max_response_bytes`` (default 4 MiB; a
  ``Content-Length`` above the cap is refused before the body is read): "reply larger than N bytes".
  Each attempt (connect, send, wait, read) must end within ``deadline`` seconds (default 5 x
  ``timeout``; a watchdog shuts the socket down), so a server trickling a body byte by byte cannot
  hold a request open: "no complete reply within N s". Both are retried like a timeout.
* Other 4xx replies fail that request at once (no retry; ``transient=False``). 404 (model or endpoint
  not found) applies to every request, so the rest of the call is not sent. 401/403 (key rejected)
  stop the call at once with a ``ConfigError`` naming the key's environment variable: the requests
  in flight finish (answers are cached), nothing more is sent.
* A request that still fails is a ``ChatResult(text=None, error=..., transient=True)`` (a later run
  should ask again: nothing failed is cached); ``chat`` raises only for configuration errors
  (``ConfigError``: missing, rejected or unusable API key, unusable cache file) and for items that are
  not ``ChatRequest``s (``TypeError``).
* A successful reply is returned as text, whatever it says: parsing a rating is the caller's job.
  A caller that re-asks after an unparseable reply must change the request (e.g. its ``seed``),
  otherwise the cache (or a temperature-0 model) hands back the same text.

The API key is read from the environment variable ``api_key_env`` (a valid variable name, never a
key) when a request has to be sent (a fully cached call needs no key; a loopback ``base_url`` needs
none). It is never stored on the backend; it, and every run of 8+ of its characters, is removed from
every error text and reply before anything is cut, logged, raised or cached
(``thresher.keys.scrub_key``): logs, exceptions, cache rows, stats and ``identity()`` never
contain it. An ``http://`` base URL to a host other than loopback would send the key in clear text and
is refused (``ConfigError``, before any connection) unless ``allow_http=True``.

``timeout`` bounds each socket operation (connect, send, each read); ``deadline`` the whole attempt.
Connections are kept alive and reused while any ``chat`` call is sending (the worker threads and the
connections are released when the last running call ends); ``HTTPS_PROXY`` / ``HTTP_PROXY`` /
``NO_PROXY`` from the environment are honoured (never for loopback addresses).
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import ipaddress
import json
import logging
import numbers
import os
import random
import socket
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import replace

from thresher.checks import is_int, is_real, param_error
from thresher.errors import ConfigError
from thresher.io import cache_dir
from thresher.keys import check_key_env, scrub_key
from thresher.models.chat import ChatRequest, ChatResult, ChatStats
from thresher.models.request_cache import RequestCache
from thresher.progress import reporter

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429})          # plus every 5xx
FATAL_STATUS = frozenset({401, 403, 404})                # concern every request: stop sending
MAX_RETRY_AFTER = 600.0                                  # a longer Retry-After is taken as 600 s
MAX_RESPONSE_BYTES = 4 * 1024 * 1024                     # judge replies are a few KB; 4 MiB is plenty
DEADLINE_FACTOR = 5.0                                    # default deadline per attempt: 5 x timeout
_READ_CHUNK = 64 * 1024


# --------------------------------------------------------------------------- small helpers

def retry_after_seconds(headers, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or HTTP date) or ``retry-after-ms``.

    ``headers``: a mapping with ``.get`` (case-insensitive, e.g. an http.client message) or a
    plain dict. ``now``: the current Unix time, for dates (default ``time.time()``). Returns None
    when no usable header is present; the result is clipped to [0, MAX_RETRY_AFTER].
    """
    ms, value, secs = _header(headers, "retry-after-ms"), _header(headers, "retry-after"), None
    if ms is not None:
        try:
            secs = float(ms) / 1000.0
        except ValueError:
            secs = None
    if secs is None and value is not None:
        value = value.strip()
        try:
            secs = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when is None or when.tzinfo is None:
                return None
            secs = when.timestamp() - (time.time() if now is None else now)
    if secs is None or secs != secs:          # absent or NaN
        return None
    return min(max(secs, 0.0), MAX_RETRY_AFTER)


def _header(headers, name: str):
    """A header value by case-insensitive name (http.client messages are; plain dicts are not)."""
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt 0 = first retry)."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 60)))


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_completion(data) -> tuple[str, int, int]:
    """(text, prompt_tokens, completion_tokens) of a chat-completions reply; ValueError if unusable."""
    try:
        text = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("reply has no choices[0].message.content") from None
    if not isinstance(text, str):
        raise ValueError(f"choices[0].message.content is {type(text).__name__}, not a string")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    pt, ct = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    pt = int(pt) if isinstance(pt, numbers.Real) and not isinstance(pt, bool) else 0
    ct = int(ct) if isinstance(ct, numbers.Real) and not isinstance(ct, bool) else 0
    return text, pt, ct


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None, rate_limited: bool = False):
        super().__init__(message)
        self.retry_after, self.rate_limited = retry_after, rate_limited


class _Refused(Exception):
    def __init__(self, message: str, fatal: bool, key_rejected: bool = False):
        super().__init__(message)
        self.fatal, self.key_rejected = fatal, key_rejected


class _Watchdog:
    """Shuts a connection's socket down when one attempt runs past its deadline (a body trickled one
    byte at a time keeps every single read under the socket timeout; only a clock on the whole
    attempt stops it). One timer thread per attempt, cancelled when the attempt ends."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float):
        self.conn, self.expired, self._done = conn, False, False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            sock = self.conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)       # the blocked read returns at once
                except OSError:
                    pass

    def stop(self) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


class _Connections:
    """Keep-alive HTTP(S) connections of the backend's request gate, each used by one thread at a time."""

    def __init__(self, url: urllib.parse.SplitResult, timeout: float):
        self.https = url.scheme == "https"
        self.host, self.port, self.timeout = url.hostname, url.port, timeout
        self.path = url.path.rstrip("/") + "/chat/completions"
        self.proxy, self.proxy_headers = None, {}
        proxy = None if is_loopback(self.host) else urllib.request.getproxies().get(url.scheme)
        if proxy and not urllib.request.proxy_bypass(self.host):
            p = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
            self.proxy = (p.hostname, p.port or 8080)
            if p.username:
                cred = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
                self.proxy_headers = {"Proxy-Authorization": "Basic " + base64.b64encode(cred.encode()).decode()}
            if not self.https:    # plain HTTP through a proxy: absolute URL as the request target
                self.path = f"http://{url.netloc.rsplit('@', 1)[-1]}{self.path}"
        self._idle: list[http.client.HTTPConnection] = []
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def get(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if self.proxy and self.https:
            conn = http.client.HTTPSConnection(*self.proxy, timeout=self.timeout)
            conn.set_tunnel(self.host, self.port, headers=self.proxy_headers)
        elif self.proxy:
            conn = http.client.HTTPConnection(*self.proxy, timeout=self.timeout)
        elif self.https:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        with self._lock:
            self._all.append(conn)
        return conn

    def put(self, conn) -> None:
        with self._lock:
            self._idle.append(conn)

    def close_all(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all, self._idle = [], []


class _Abort:
    """First fatal refusal (401/403/404) of a backend: the requests not yet sent are never sent.
    ``key_error``: the message of a rejected key (401/403), raised as a ConfigError once the call stops."""

    def __init__(self):
        self.message: str | None = None
        self.key_error: str | None = None


# --------------------------------------------------------------------------- the backend

def _bad(param: str, must: str, got) -> ConfigError:
    return param_error("OpenAIChat", param, must, got)


class OpenAIChat:
    """Chat backend for an OpenAI-compatible HTTP API. Cheap to construct; no network until ``chat``.

    Parameters: ``model`` (sent as is), ``base_url`` (up to and including the version, e.g.
    ``https://api.openai.com/v1``), ``api_key_env`` (name of the environment variable holding the
    key), ``concurrency`` (requests in flight), ``max_retries`` (retries after the first attempt),
    ``timeout`` (seconds per socket operation), ``cache_path`` (SQLite request cache, or None),
    ``price_input_per_1m`` / ``price_output_per_1m`` (cost per million prompt / completion tokens),
    ``backoff_base`` / ``backoff_max`` (seconds; the backoff cap of attempt a is
    min(backoff_max, backoff_base * 2**a)), ``max_response_bytes`` (largest reply body read),
    ``deadline`` (seconds for a whole attempt; None = 5 x timeout), ``allow_http`` (permit an
    ``http://`` URL to a non-loopback host, which sends the key unencrypted).
    """

    def __init__(self, model: str, *, base_url: str = "https://api.openai.com/v1",
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, max_retries: int = 6,
                 timeout: float = 60.0, cache_path=None, price_input_per_1m: float = 0.0,
                 price_output_per_1m: float = 0.0, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, deadline: float | None = None,
                 allow_http: bool = False):
        if not isinstance(model, str) or not model.strip():
            raise _bad("model", "a non-empty string", model)
        if not isinstance(base_url, str):
            raise _bad("base_url", "an http:// or https:// URL", base_url)
        url = urllib.parse.urlsplit(base_url.strip())
        if url.scheme not in ("http", "https") or not url.hostname:
            raise _bad("base_url", "an http:// or https:// URL such as 'https://api.openai.com/v1'", base_url)
        if url.username or url.password or url.query or url.fragment:
            raise ConfigError("The 'base_url' parameter of OpenAIChat must not contain credentials, a query "
                              "or a fragment; give the key through the environment variable named by "
                              "'api_key_env'.")
        check_base_url(base_url, allow_http, "OpenAIChat")
        api_key_env = check_key_env(api_key_env, "OpenAIChat")
        if not is_int(concurrency) or concurrency < 1:
            raise _bad("concurrency", "an int >= 1", concurrency)
        if not is_int(max_retries) or max_retries < 0:
            raise _bad("max_retries", "an int >= 0", max_retries)
        if not is_real(timeout) or timeout <= 0:
            raise _bad("timeout", "a number of seconds > 0", timeout)
        if deadline is not None and (not is_real(deadline) or deadline <= 0):
            raise _bad("deadline", "a number of seconds > 0 (or None for 5 x timeout)", deadline)
        if not is_int(max_response_bytes) or max_response_bytes < 1024:
            raise _bad("max_response_bytes", "an int >= 1024", max_response_bytes)
        for name, value in (("price_input_per_1m", price_input_per_1m),
                            ("price_output_per_1m", price_output_per_1m),
                            ("backoff_base", backoff_base), ("backoff_max", backoff_max)):
            if not is_real(value) or value < 0:
                raise _bad(name, "a number >= 0", value)
        self.model = model
        self.base_url = urllib.parse.urlunsplit(url).rstrip("/")
        self._url = urllib.parse.urlsplit(self.base_url)
        self.api_key_env = api_key_env
        self.concurrency, self.max_retries, self.timeout = int(concurrency), int(max_retries), float(timeout)
        self.deadline = float(deadline) if deadline is not None else DEADLINE_FACTOR * self.timeout
        self.max_response_bytes, self.allow_http = int(max_response_bytes), bool(allow_http)
        self.cache_path = None if cache_path is None else os.fspath(cache_path)
        self.price_input_per_1m, self.price_output_per_1m = float(price_input_per_1m), float(price_output_per_1m)
        self.backoff_base, self.backoff_max = float(backoff_base), float(backoff_max)
        self._init_runtime()

    @classmethod
    def from_judge_config(cls, cfg, ctx) -> "OpenAIChat":
        """The judge of ``kind: api`` (thresher.models.judges); the request cache defaults to
        ``<cache dir>/judge/requests.sqlite``. ``ctx`` is not used: the model is remote."""
        cache = cfg.cache or str(cache_dir() / "judge" / "requests.sqlite")
        return cls(cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
                   max_retries=cfg.max_retries, timeout=cfg.timeout, cache_path=cache,
                   price_input_per_1m=cfg.price_input_per_1m, price_output_per_1m=cfg.price_output_per_1m,
                   allow_http=cfg.allow_http, max_response_bytes=cfg.max_response_bytes, deadline=cfg.deadline)

    _RUNTIME = ("_lock", "_stats", "_cache", "_pause_until", "_rng", "_gate", "_sending", "_inflight",
                "_abort")

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._stats = ChatStats(extra={"deduplicated": 0})
        self._cache = None
        self._pause_until = 0.0               # time.monotonic() before which nothing is sent (429)
        self._rng = random.Random()
        self._gate = None                     # (worker pool, connections) while a call is sending, else None
        self._abort = _Abort()                # a fatal refusal (bad key, model, URL): no later request is sent
        self._sending = 0                     # chat calls holding the gate
        self._inflight: dict[str, Future] = {}   # request key -> its result, while a call is getting it

    # Picklable for worker processes: locks, the SQLite connection, the RNG and the gate are rebuilt.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return (f"OpenAIChat({self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r}, "
                f"concurrency={self.concurrency})")

    # ------------------------------------------------------------------ protocol
    def identity(self) -> str:
        return f"api:{self.base_url}:{self.model}"

    def stats(self) -> dict:
        with self._lock:
            return replace(self._stats, extra=dict(self._stats.extra)).as_dict()

    def close(self) -> None:
        """Close the request cache (it is reopened by the next ``chat``)."""
        with self._lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            cache.close()

    def chat(self, requests) -> list[ChatResult]:
        """Results in the order of ``requests``; a request that fails is ``text=None`` plus ``error``."""
        requests = list(requests)
        for i, r in enumerate(requests):
            if not isinstance(r, ChatRequest):
                raise TypeError(f"OpenAIChat.chat expects a list of ChatRequest; item {i} is "
                                f"{type(r).__name__}.")
        ident = self.identity()
        keys = [r.key(ident) for r in requests]
        unique = dict(zip(keys, requests))                   # first request per key, in order
        owned, joined = self._claim(unique)
        try:
            found = self._open_cache().get_many(owned) if self.cache_path and owned else {}
            for k, res in found.items():
                self._settle(k, owned[k], res)
            todo = {k: unique[k] for k in owned if k not in found}
            log.info("%s: %d requests: %d from cache, %d duplicates merged, %d to send (concurrency %d)",
                     ident, len(requests), sum(k in found for k in keys), len(keys) - len(owned),
                     len(todo), self.concurrency)
            if todo:
                self._send_all(todo, owned)
            done = {k: f.result() for k, f in (owned | joined).items()}
        finally:
            for k, fut in owned.items():                 # after an error: calls waiting on these go on
                if not fut.done():
                    self._settle(k, fut, ChatResult(None, error="not sent: the call sending it stopped",
                                                    transient=True))
        # Each position gets its own copy: callers may annotate results without aliasing.
        results = [replace(done[k]) for k in keys]
        with self._lock:
            s = self._stats
            s.requests += len(results)
            s.cached += sum(r.cached for r in results)
            s.failed += sum(r.text is None for r in results)
            s.extra["deduplicated"] += len(keys) - len(owned)
        return results

    # ------------------------------------------------------------------ internals
    def _open_cache(self):
        with self._lock:
            if self._cache is None:
                self._cache = RequestCache(self.cache_path)
            return self._cache

    def _claim(self, unique: dict[str, ChatRequest]) -> tuple[dict[str, Future], dict[str, Future]]:
        """(owned, joined): a new future for each key that no running call is getting (this call answers
        it: from the cache or over HTTP), and the futures of the keys another running call is getting."""
        owned, joined = {}, {}
        with self._lock:
            for k in unique:
                if k in self._inflight:
                    joined[k] = self._inflight[k]
                else:
                    owned[k] = self._inflight[k] = Future()
        return owned, joined

    def _settle(self, key: str, fut: Future, result: ChatResult | None = None,
                error: BaseException | None = None) -> None:
        """Give ``fut`` (the claim on ``key``) its result or error, unless it has one, and release the key.
        A success is already in the request cache: a call claiming the key from now on finds it there."""
        with self._lock:
            if fut.done():
                return
            if self._inflight.get(key) is fut:
                del self._inflight[key]
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

    def _open_gate(self) -> tuple[ThreadPoolExecutor, _Connections, _Abort]:
        """The worker pool (``concurrency`` threads, first in first out) and connections that every running
        call sends through, started by the first call and shared by the calls that overlap it, and the
        backend's abort flag (a key refused for one request stops every queued and later request)."""
        with self._lock:
            if self._gate is None:
                pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="thresher-api")
                self._gate = (pool, _Connections(self._url, min(self.timeout, self.deadline)), self._abort)
            self._sending += 1
            return self._gate

    def _close_gate(self) -> None:
        """One call is done sending; the last one stops the idle workers and closes the connections
        (a keep-alive connection left open between runs would meet a server-side idle timeout)."""
        with self._lock:
            self._sending -= 1
            gate = self._gate if self._sending == 0 else None
            if gate is not None:
                self._gate = None
        if gate is not None:
            gate[0].shutdown(wait=False)
            gate[1].close_all()

    def _api_key(self) -> str | None:
        """The key from the environment (None on loopback without one); never stored on self."""
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            if is_loopback(self._url.hostname):
                return None
            raise ConfigError(f"The environment variable {self.api_key_env} holding the API key for "
                              f"{self.base_url} is not set (or empty). Set it, or pass "
                              f"api_key_env='NAME' to read the key from another variable.")
        if not all(33 <= ord(c) < 127 for c in key):
            # Do not let http.client put the key into a header-validation error message.
            raise ConfigError(f"The environment variable {self.api_key_env} holds spaces, control or "
                              f"non-ASCII characters, which an API key cannot contain. Check its value.")
        return key

    def _send_all(self, todo: dict[str, ChatRequest], claims: dict[str, Future]) -> None:
        """Send ``todo`` through the gate and wait until each claim in ``claims`` has its result. If this
        raises (or is interrupted), the requests not yet started are not sent; those in flight finish."""
        key = self._api_key()
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "thresher-judge"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        failed, n_done = [], 0
        pool, conns, abort = self._open_gate()
        t0 = time.monotonic()
        tasks = []
        try:
            tasks = [pool.submit(self._send_one, k, r, claims[k], conns, headers, key, abort)
                     for k, r in todo.items()]
            with reporter(self.identity(), len(todo), unit="requests") as progress:
                for fut in as_completed([claims[k] for k in todo]):
                    n_done += 1
                    res = fut.result()
                    if res.text is None:
                        failed.append(res)
                    progress.update(1, tokens=res.prompt_tokens + res.completion_tokens)
        finally:
            for task in tasks:
                task.cancel()                      # not started yet: never sent
            wait(tasks)
            self._close_gate()
        if abort.key_error is not None:
            raise ConfigError(abort.key_error)
        (log.warning if failed else log.info)(
            "%s: %d sent requests done in %.1f s, %d failed%s", self.identity(), n_done,
            time.monotonic() - t0, len(failed), f" (first error: {failed[0].error})" if failed else "")

    def _send_one(self, k: str, r: ChatRequest, claim: Future, conns: _Connections, headers: dict,
                  key: str | None, abort: _Abort) -> None:
        """One request on a gate worker: a success is committed to the cache (survives a kill) before the
        claim is settled, so that a call claiming ``k`` afterwards finds it there."""
        try:
            res = self._request(r, conns, headers, key, abort)
            if res.text is not None and self.cache_path:
                self._open_cache().put(k, res)
        except BaseException as e:                 # e.g. a full disk: raised by the waiting calls
            self._settle(k, claim, error=e)
            return
        self._settle(k, claim, res)

    def _payload(self, r: ChatRequest) -> bytes:
        body = {"model": self.model, "messages": r.as_messages(), "max_tokens": r.max_tokens,
                "temperature": r.temperature, "top_p": r.top_p}
        if r.seed is not None:
            body["seed"] = r.seed
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _request(self, r: ChatRequest, conns: _Connections, headers: dict, key: str | None,
                 abort: _Abort) -> ChatResult:
        """One request with retries; never raises for an HTTP or network failure."""
        body, last = self._payload(r), None
        for attempt in range(self.max_retries + 1):
            if abort.message is not None:
                return ChatResult(None, error=f"not sent: {abort.message}", transient=True)
            self._wait_for_pause()
            with self._lock:
                self._stats.calls += 1
                self._stats.retries += attempt > 0
            try:
                text, pt, ct = self._post(conns, body, headers, key)
            except _Refused as e:
                if e.fatal and abort.message is None:
                    abort.message = str(e)
                    if e.key_rejected:
                        abort.key_error = str(e)          # raised by _send_all as a ConfigError
                    else:
                        log.error("%s", e)
                return ChatResult(None, error=str(e), transient=e.fatal)
            except _Retryable as e:
                last = e.with_traceback(None)     # keep the message, not the frames (a refused body)
                if attempt == self.max_retries:
                    break
                wait = backoff_delay(attempt, self.backoff_base, self.backoff_max, self._rng)
                if e.retry_after is not None:
                    wait = max(wait, e.retry_after)
                    if e.rate_limited:
                        self._pause(e.retry_after)
                log.debug("%s: retry %d/%d in %.2f s after: %s", self.identity(), attempt + 1,
                          self.max_retries, wait, e)
                time.sleep(wait)
                continue
            cost = (pt * self.price_input_per_1m + ct * self.price_output_per_1m) / 1e6
            with self._lock:
                self._stats.prompt_tokens += pt
                self._stats.completion_tokens += ct
                self._stats.cost += cost
            return ChatResult(text, prompt_tokens=pt, completion_tokens=ct)
        msg = f"gave up after {self.max_retries + 1} attempts; last error: {last}"
        log.debug("%s: %s", self.identity(), msg)
        return ChatResult(None, error=msg, transient=True)

    def _pause(self, seconds: float) -> None:
        with self._lock:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def _wait_for_pause(self) -> None:
        while True:
            with self._lock:
                left = self._pause_until - time.monotonic()
            if left <= 0:
                return
            time.sleep(left)

    def _post(self, conns: _Connections, body: bytes, headers: dict, key: str | None) -> tuple[str, int, int]:
        """One HTTP attempt -> (text, prompt_tokens, completion_tokens); raises _Retryable / _Refused."""
        where = f"{self.base_url}/chat/completions"
        late = f"no complete reply from {where} within {self.deadline:g} s (the deadline of one attempt)"
        conn = conns.get()
        dog = _Watchdog(conn, self.deadline)
        try:
            try:
                if conn.sock is None:             # connect first: a watchdog firing mid-connect has no socket
                    conn.connect()                # to shut down, so the expiry is checked right after
                    if dog.expired:
                        raise _Retryable(late)
                conn.request("POST", conns.path, body=body, headers=headers)
                resp = conn.getresponse()
                raw = self._read_body(resp, where)
            finally:
                dog.stop()
        except _Retryable as e:
            conn.close()
            raise (_Retryable(late) if dog.expired else e) from None
        except TimeoutError:
            conn.close()
            raise _Retryable(late if dog.expired else f"no reply from {where} within the "
                             f"{min(self.timeout, self.deadline):g} s timeout") from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise _Retryable(late if dog.expired else
                             scrub_key(f"request to {where} failed: {type(e).__name__}: {e}", key)) from None
        if dog.expired:                           # cut short by the watchdog at the very end
            conn.close()
            raise _Retryable(late)
        conns.put(conn)
        return self._answer(resp.status, resp.headers, raw, where, key)

    def _read_body(self, resp: http.client.HTTPResponse, where: str) -> bytes:
        """The body, read in chunks; _Retryable past ``max_response_bytes`` or when cut short."""
        cap = self.max_response_bytes
        too_big = f"reply from {where} larger than {cap} bytes (max_response_bytes)"
        if resp.length is not None and resp.length > cap:          # Content-Length: refuse unread
            raise _Retryable(f"{too_big}: Content-Length {resp.length}")
        buf = bytearray()
        while chunk := resp.read1(_READ_CHUNK):                     # b"" at the end of the body
            buf += chunk
            if len(buf) > cap:
                raise _Retryable(too_big)
        if resp.length:                                             # Content-Length not reached
            raise _Retryable(f"reply from {where} cut short: {len(buf)} bytes, {resp.length} missing")
        resp.close()                                                # complete: the connection is reusable
        return bytes(buf)

    def _answer(self, status: int, headers, raw: bytes, where: str, key: str | None) -> tuple[str, int, int]:
        """(text, prompt_tokens, completion_tokens) of a 2xx reply; else _Retryable or _Refused."""
        if 200 <= status < 300:
            try:
                text, pt, ct = parse_completion(json.loads(raw))
            except ValueError as e:               # json.JSONDecodeError is a ValueError
                raise _Retryable(f"malformed reply from {where} (HTTP {status}, {len(raw)} bytes): "
                                 f"{scrub_key(str(e), key)}") from None
            return scrub_key(text, key), pt, ct   # a reply that quotes the key is not cached with it
        detail = _error_detail(raw, key)
        if status in RETRY_STATUS or status >= 500:
            after = retry_after_seconds(headers) if status in (429, 503) else None
            raise _Retryable(f"HTTP {status} from {where}: {detail}", after, rate_limited=status == 429)
        if status in (401, 403):
            sent = "" if key is not None else " (not set: no key was sent)"
            raise _Refused(f"The API key from the environment variable {self.api_key_env}{sent} was rejected by "
                           f"{where} (HTTP {status}: {detail}). Put a valid key for this server into "
                           f"{self.api_key_env} (or name another variable with api_key_env / "
                           f"--judge-api-key-env) and rerun: answered requests are cached.",
                           fatal=True, key_rejected=True)
        if status == 404:
            raise _Refused(f"HTTP 404 from {where}: model {self.model!r} or the endpoint was not found; "
                           f"check 'model' and 'base_url' ({detail})", fatal=True)
        raise _Refused(f"HTTP {status} from {where} (not retried): {detail}", fatal=False)


def _error_detail(raw: bytes, key: str | None, limit: int = 300) -> str:
    """The server's error message (OpenAI's {"error": {"message": ...}}) or the start of the body, with
    the key scrubbed *before* the text is cut to ``limit`` characters (a cut key would survive)."""
    text = raw.decode("utf-8", "replace")
    try:
        err = json.loads(text).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        if isinstance(msg, str) and msg:
            text = msg
    except (ValueError, AttributeError):
        pass
    text = " ".join(text.split())
    # A run of key characters reaching into the first `limit` characters ends within limit + len(key).
    window = limit + len(key or "") + 1
    head = scrub_key(text[:window], key)
    if len(text) > window or len(head) > limit:
        return head[:limit] + "..."
    return head or "(empty body)"


def check_base_url(base_url: str, allow_http: bool, owner: str) -> None:
    """ConfigError for an http:// URL to a non-loopback host (the key would travel in clear text),
    unless ``allow_http``; raised before any connection is made."""
    url = urllib.parse.urlsplit(base_url.strip())
    if url.scheme == "http" and not allow_http and not is_loopback(url.hostname):
        raise ConfigError(f"The 'base_url' of {owner} is plain http:// to {url.hostname}, which is not this "
                          f"machine: the API key would travel unencrypted. Use https://, or, if the network "
                          f"path is trusted (e.g. a private cluster), allow it explicitly with 'allow_http: true' "
                          f"in the judge config (CLI: --judge-allow-http).")
