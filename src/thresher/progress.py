"""Progress of long passes, a model-usage meter, and the run's log file.

One reporter serves every long pass (scoring shards, a dataset-scope scorer's per-shard passes, gradient
chunks, judge requests)::

    with progress.reporter("stage:ifd", total=len(ds), unit="rows") as p:
        p.update(64, tokens=9000)             # 64 rows computed, 9000 model tokens
        p.update(1024, cached=True)           # rows that came from the cache: done, but not in the rate

Modes (``set_mode``; the CLI's ``--progress``, default: ``bar`` when stderr is a terminal, else ``log``):
  bar   a tqdm bar on stderr: done/total, rows/s, tokens/s and ETA;
  log   INFO lines on the ``thresher.progress`` logger, at most one every ``interval`` seconds (10 s) and
        one at the end: done/total, the smoothed rate, tokens/s and ETA;
  none  nothing.
The default for library use is ``log``: lines go through logging, which only the CLI (or the caller)
configures, so a library user sees them only when their logging shows INFO.

The rate is an exponential moving average over time of the computed (not cached) units: each update of
n units after dt seconds moves it towards n/dt with weight ``1 - exp(-dt / tau)`` (tau = ``SMOOTHING_S``),
so a burst of results after a pause neither spikes nor stalls the ETA; ETA = units left / rate.

``metered()`` counts model passes and input tokens where the models run (``count_model``, called by the
backends in thresher.models and the gradient passes); it is per thread, so shards scored in threads or on
Ray workers each count their own and send the counts back with their results.

``run_log(folder)`` appends the ``thresher`` logger's records, with timestamps, to ``folder/run.log``
while a run writes into ``folder``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from thresher.errors import ConfigError

MODES = ("bar", "log", "none")
SMOOTHING_S = 30.0            # tau of the rate's moving average, in seconds
RUN_LOG = "run.log"
log = logging.getLogger("thresher.progress")
_settings = {"mode": "log", "interval": 10.0}


def default_mode(stream=None) -> str:
    """``bar`` when ``stream`` (stderr) is a terminal, else ``log``."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


def set_mode(mode: str | None = None, *, interval: float | None = None) -> None:
    """Set how progress is shown from now on (``mode`` one of MODES; ``interval``: seconds between log
    lines, > 0). None leaves a setting as it is."""
    if mode is not None and mode not in MODES:
        raise ConfigError(f"The 'progress' option must be one of {', '.join(MODES)}. Got {mode!r}.")
    if interval is not None and not (isinstance(interval, (int, float)) and interval > 0):
        raise ConfigError(f"The progress interval must be a number of seconds > 0. Got {interval!r}.")
    if mode is not None:
        _settings["mode"] = mode
    if interval is not None:
        _settings["interval"] = float(interval)


def get_mode() -> str:
    return _settings["mode"]


@contextmanager
def progress_mode(mode: str | None = None, *, interval: float | None = None):
    """``set_mode`` for the duration of a ``with`` block (the earlier settings come back after it)."""
    saved = dict(_settings)
    set_mode(mode, interval=interval)
    try:
        yield
    finally:
        _settings.update(saved)


def _duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Rate:
    """Exponential moving average over time of a count's rate (units per second)."""

    def __init__(self, tau: float = SMOOTHING_S):
        self.tau, self.value = tau, None

    def add(self, n: float, dt: float) -> None:
        """``n`` units in the last ``dt`` seconds; the first sample sets the rate."""
        if dt <= 0:
            dt = 1e-6
        if self.value is None:
            self.value = n / dt
            return
        w = 1.0 - math.exp(-dt / self.tau)
        self.value += w * (n / dt - self.value)


class Reporter:
    """Progress of one pass: units done of ``total`` (None: unknown), shown as the mode says (module doc).

    ``clock``: seconds (time.monotonic; tests inject one). ``transient``: a pass inside another one (its bar
    is removed when done, no closing log line). Thread-safe: updates may come from threads."""

    def __init__(self, label: str, total: int | None = None, unit: str = "rows", *, mode: str | None = None,
                 interval: float | None = None, clock=time.monotonic, file=None, transient: bool = False):
        self.label, self.total, self.unit, self.transient = label, total, unit, transient
        self.mode = mode or _settings["mode"]
        self.interval = interval if interval is not None else _settings["interval"]
        self.clock = clock
        self.done = self.computed = self.cached = self.tokens = 0
        self.rate, self.token_rate = Rate(), Rate()
        self.t0 = self.t_last = self.t_shown = clock()
        self._lock = threading.Lock()
        self._bar = self._open_bar(file) if self.mode == "bar" else None

    def _open_bar(self, file):
        from tqdm.auto import tqdm     # installed with transformers; imported only when a bar is shown

        return tqdm(total=self.total, desc=self.label, unit=self.unit, file=file or sys.stderr, leave=not self.transient, disable=False,
                    dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                                   "{unit} [{elapsed}{postfix}]")

    def update(self, n: int = 1, *, tokens: int = 0, cached: bool = False) -> None:
        """``n`` more units done (``cached``: from a cache, not counted in the rate) and ``tokens`` processed."""
        with self._lock:
            now = self.clock()
            self.done += n
            if cached:
                self.cached += n
            else:
                self.computed += n
                self.tokens += tokens
                self.rate.add(n, now - self.t_last)
                self.token_rate.add(tokens, now - self.t_last)
                self.t_last = now
            if self._bar is not None:
                self._bar.set_postfix_str(self._postfix(), refresh=False)
                self._bar.update(n)
            elif self.mode == "log" and now - self.t_shown >= self.interval:
                self.t_shown = now
                log.info("%s", self.line())

    def eta(self) -> float | None:
        """Seconds left at the smoothed rate (None: unknown total or no rate yet)."""
        if self.total is None or not self.rate.value:
            return None
        return max(self.total - self.done, 0) / self.rate.value

    def _postfix(self) -> str:
        parts = [f"{self.rate.value or 0:.3g} {self.unit}/s"]
        if self.tokens:
            parts.append(f"{self.token_rate.value or 0:.0f} tok/s")
        eta = self.eta()
        parts.append(f"ETA {_duration(eta) if eta is not None else '?'}")
        return ", " + ", ".join(parts)

    def line(self) -> str:
        """One progress line: ``[label] done/total unit (pct)  rate unit/s  tok/s  ETA  (cached)``."""
        of = f"/{self.total} {self.unit} ({100.0 * self.done / max(self.total, 1):.0f}%)" if self.total is not None \
            else f" {self.unit}"
        text = f"[{self.label}] {self.done}{of}  {self.rate.value or 0:.3g} {self.unit}/s"
        if self.tokens:
            text += f"  {self.token_rate.value or 0:.0f} tok/s"
        eta = self.eta()
        text += f"  ETA {_duration(eta) if eta is not None else '?'}"
        if self.cached:
            text += f"  ({self.cached} cached)"
        return text

    def close(self) -> None:
        """Finish: the bar is closed; in log mode one last line with the totals, when anything was computed."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log" and self.computed and not self.transient:
            elapsed = max(self.clock() - self.t0, 1e-9)
            tok = f", {self.tokens / elapsed:.0f} tok/s" if self.tokens else ""
            log.info("[%s] done: %d %s (%d computed, %d cached) in %s, %.3g %s/s%s", self.label, self.done,
                     self.unit, self.computed, self.cached, _duration(elapsed), self.computed / elapsed, self.unit,
                     tok)

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reporter(label: str, total: int | None = None, unit: str = "rows", **kw) -> Reporter:
    """A Reporter in the current mode (see Reporter for the keywords)."""
    return Reporter(label, total, unit, **kw)


# ----------------------------------------------------------------------------------- model-usage meter
@dataclass
class Usage:
    """Model work: forward passes (batches through a model) and the input tokens they processed."""
    passes: int = 0
    tokens: int = 0


_meters = threading.local()


@contextmanager
def metered():
    """Count the model passes of this thread inside the block into the Usage it yields; on exit the counts
    are added to an enclosing ``metered`` block of the same thread, if any."""
    stack = _meters.__dict__.setdefault("stack", [])
    usage = Usage()
    stack.append(usage)
    try:
        yield usage
    finally:
        stack.pop()
        if stack:
            stack[-1].passes += usage.passes
            stack[-1].tokens += usage.tokens


def count_model(passes: int = 1, tokens: int = 0) -> None:
    """Record ``passes`` forward passes over ``tokens`` input tokens (a no-op outside ``metered``)."""
    stack = getattr(_meters, "stack", None)
    if stack:
        stack[-1].passes += int(passes)
        stack[-1].tokens += int(tokens)


# ----------------------------------------------------------------------------------- run.log
@contextmanager
def run_log(folder, what: str = "run"):
    """Append the ``thresher`` logger's records (INFO and up, with timestamps) to ``folder/run.log`` for the
    duration; a header line marks each start, so a resumed run's log follows the earlier one's."""
    path = Path(folder) / RUN_LOG
    logger = logging.getLogger("thresher")
    level, effective = logger.level, logger.getEffectiveLevel()
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(min(logging.INFO, effective))     # -v: debug lines too; -q: the file still gets INFO
    consoles = _console_handlers(effective)
    for h in consoles:
        h.setLevel(effective)          # the stderr handlers keep the user's level when the logger is lowered
    logger.setLevel(handler.level)
    handler.stream.write(f"==== thresher {what} started {time.strftime('%Y-%m-%dT%H:%M:%S%z')} "
                         f"(pid {os.getpid()}) ====\n")
    handler.flush()
    logger.addHandler(handler)
    try:
        yield path
    except BaseException as err:        # the CLI prints the error on stderr; the file records how the run ended
        handler.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} run stopped: {type(err).__name__}: {err}\n")
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        for h in consoles:
            h.setLevel(logging.NOTSET)
        handler.close()


def _console_handlers(level: int) -> list[logging.Handler]:
    """The root's stream handlers (set up by the CLI) that pass records below ``level`` (NOTSET ones)."""
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and h.level == logging.NOTSET and level > logging.NOTSET]
