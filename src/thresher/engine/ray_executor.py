"""The ray executor: shards scored by long-lived Ray actors, one model set per actor.

Ray Core actors rather than Ray Data's ``map_batches``: the shard contract (content-addressed cache
files written once by the driver, the exact shards the cache lacks, results matched back to their rows,
a failed shard retried as a whole) needs control over which rows form a task and where each result goes,
which Ray Data's block scheduling does not give. Each actor builds its own ``ModelContext`` from the
driver's (same model sources: hub id, local path, bundled; models loaded on first use, once per actor) and
a copy of the scorer (same name and parameters, ``setup`` on the actor); the driver sends each shard's rows
through Ray and receives its columns. At most ``depth`` shards wait per actor, so the driver holds only a
few shards' rows at a time.

Faults: an actor killed mid-shard (``ray.kill``, SIGKILL, out of memory) is restarted by Ray and its
shards in flight are retried there (``max_restarts`` / ``max_task_retries``); the scores are those of the
local executor, since a shard is a pure function of its rows. An error raised by the scorer on a worker
(a model that cannot be loaded, a bad parameter) stops the run with that worker's message
(``WorkerError``), never a hang. ``ray.init`` runs only when this executor is chosen, and ``import ray``
appears nowhere else in thresher.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayTaskError

from thresher.engine.base import ExecutorConfig, ShardResult, Task, default_threads, score_shard
from thresher.errors import ConfigError, ThresherError, WorkerError
from thresher.io import pid_alive
from thresher.models.context import ModelContext
from thresher.progress import Usage, count_model, metered
from thresher.scoring.base import Scorer, ShardRunner

log = logging.getLogger(__name__)
MAX_RESTARTS = 3          # an actor killed more often than this stops the run
DEPTH = 2                 # shards queued per actor: one running, one waiting (hides the transfer)


class _Worker:
    """A Ray actor: one ModelContext and the scorers it has set up, keyed by scorer key."""

    def __init__(self, ctx_spec: dict, threads: int, device: str | None):
        self.ctx_spec, self.threads, self.device = ctx_spec, threads, device
        self.ctx: ModelContext | None = None
        self.scorers: dict[str, Scorer] = {}

    def pid(self) -> int:
        return os.getpid()

    def _scorer(self, key: str, cls: type, params: dict) -> Scorer:
        if self.ctx is None:
            import torch      # thread count before the first model runs

            torch.set_num_threads(self.threads)
            spec = dict(self.ctx_spec, **({"device": self.device} if self.device else {}))
            self.ctx = ModelContext(**spec)
        sc = self.scorers.get(key)
        if sc is None:
            sc = cls(**params)
            sc.cache_root = _scratch()                   # worker-local stores only: the driver's cache is its own
            sc.setup(self.ctx)
            self.scorers[key] = sc
        return sc

    def score(self, key: str, cls: type, params: dict, rows, inputs) -> ShardResult:
        with _portable_errors():
            return score_shard(self._scorer(key, cls, params), rows, inputs)

    def call(self, key: str, cls: type, params: dict, fn, item, shared: dict) -> tuple[object, Usage]:
        """(fn's result, the model passes and tokens it took: counted on the driver)."""
        with _portable_errors(), metered() as usage:
            return fn(self._scorer(key, cls, params), item, **shared), usage


def _scratch() -> Path:
    """A worker-local folder for a scorer's intermediate stores, removed when this worker exits; folders of
    workers that died without exiting (SIGKILL) are removed by the next worker on the machine."""
    tmp = Path(tempfile.gettempdir())
    for old in tmp.glob("thresher-worker-*"):
        pid = old.name.split("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"thresher-worker-{os.getpid()}-"))
    atexit.register(shutil.rmtree, path, True)
    return path


@contextmanager
def _portable_errors():
    """A worker's own error as one that unpickles on the driver: a ThresherError as it is, anything else as
    a WorkerError with its type, message and traceback text (third-party exceptions often do not unpickle)."""
    try:
        yield
    except ThresherError:
        raise
    except Exception as err:
        raise WorkerError(f"{type(err).__name__}: {err}", traceback.format_exc()) from None


class RayExecutor:
    """Shards on Ray actors: ``workers`` CPU actors, or one actor per GPU of ``devices``."""

    name = "ray"

    def __init__(self, cfg: ExecutorConfig):
        devices = cfg.device_list()
        if devices and cfg.workers and cfg.workers != len(devices):
            raise ConfigError(f"--workers {cfg.workers} and --devices {','.join(devices)} disagree: with devices "
                              "there is one worker per device (leave --workers out).")
        self.cfg = cfg
        self.n = len(devices) or cfg.workers or 2
        self.gpus = [d for d in devices if d.startswith("cuda")]
        self.threads = cfg.threads_per_worker or default_threads(self.n)
        self._actors: list = []
        self._spec_key: str | None = None
        self._started_ray = False
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ cluster and actors
    def _init_ray(self) -> None:
        if ray.is_initialized():
            return
        t0 = time.perf_counter()
        address = self.cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
        kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **kw)
        else:
            if self.gpus:      # the listed GPUs only: Ray reads CUDA_VISIBLE_DEVICES when it starts
                ids = [d.split(":", 1)[1] for d in self.gpus if ":" in d]
                if ids:
                    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
            ray.init(num_cpus=max(os.cpu_count() or 1, self.n), num_gpus=len(self.gpus), **kw)
        self._started_ray = True
        self.timings["ray_init_s"] = time.perf_counter() - t0

    def _pool(self, ctx: ModelContext) -> list:
        spec = _ctx_spec(ctx)
        key = json.dumps(spec, sort_keys=True, default=str)
        if self._actors and key == self._spec_key:
            return self._actors
        self._kill_actors()
        self._init_ray()
        res = ray.cluster_resources()
        if self.gpus and res.get("GPU", 0) < len(self.gpus):
            raise ConfigError(f"--devices asks for {len(self.gpus)} GPU worker(s) but the Ray cluster has "
                              f"{res.get('GPU', 0):g} GPU(s). Use fewer devices or a cluster with GPUs.")
        cpus = min(float(self.threads), max(res.get("CPU", 1.0) / self.n, 0.01))
        actor = ray.remote(_Worker).options(num_cpus=0 if self.gpus else cpus, num_gpus=1 if self.gpus else 0,
                                            max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS,
                                            max_concurrency=1)
        device = "cuda" if self.gpus else None       # Ray sets each actor's CUDA_VISIBLE_DEVICES to its GPU
        self._actors = [actor.remote(spec, self.threads, device) for _ in range(self.n)]
        self._spec_key = key
        log.info("ray executor: %d worker(s), %d thread(s) each%s", self.n, self.threads,
                 f", one GPU each ({','.join(self.gpus)})" if self.gpus else "")
        return self._actors

    def worker_pids(self) -> list[int]:
        """Process ids of the current actors (tests kill one)."""
        return ray.get([a.pid.remote() for a in self._actors])

    def _kill_actors(self) -> None:
        for a in self._actors:
            ray.kill(a, no_restart=True)
        self._actors, self._spec_key = [], None

    def close(self) -> None:
        if ray.is_initialized():
            self._kill_actors()
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False

    # ------------------------------------------------------------------ work
    def runner(self, scorer: Scorer, ctx: ModelContext, key: str) -> ShardRunner:
        return _RayRunner(self, ctx, key)

    def run(self, scorer: Scorer, ctx, key: str, tasks, shard_size: int) -> Iterator[tuple[Task, ShardResult]]:
        """Each task's result as it finishes (any order)."""
        actors = self._pool(ctx)
        cls, params = type(scorer), dataclasses.asdict(scorer.params)
        t0 = time.perf_counter()
        calls = ((t, lambda a, t=t: a.score.remote(key, cls, params, t.rows, t.inputs)) for t in tasks)
        for t, res in self._dispatch(actors, calls, f"scorer {scorer.name!r}"):
            self.timings.setdefault("first_shard_s", time.perf_counter() - t0)
            yield t, res

    def _dispatch(self, actors: list, calls, what: str) -> Iterator[tuple[object, object]]:
        """Send ``calls`` ((tag, submit(actor) -> ref)) to the actors, at most DEPTH waiting per actor;
        yields (tag, result) as they finish."""
        calls = iter(calls)
        inflight: dict = {}                                     # ref -> (tag, actor index)
        load = [0] * len(actors)

        def fill(i: int) -> None:
            while load[i] < DEPTH:
                nxt = next(calls, None)
                if nxt is None:
                    return
                tag, submit = nxt
                inflight[submit(actors[i])] = (tag, i)
                load[i] += 1

        try:
            for i in range(len(actors)):
                fill(i)
            while inflight:
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                tag, i = inflight.pop(ref)
                load[i] -= 1
                yield tag, _get(ref, i, what)
                fill(i)
        finally:                                            # stopped early (an error): drop the queued shards
            if ray.is_initialized():
                for ref in inflight:
                    ray.cancel(ref, force=False)


class _RayRunner(ShardRunner):
    """``Scorer.map_shards`` on the executor's actors; results in item order."""

    def __init__(self, executor: RayExecutor, ctx: ModelContext, key: str):
        self.executor, self.ctx, self.key = executor, ctx, key

    def map(self, scorer: Scorer, fn, items, **shared):
        actors = self.executor._pool(self.ctx)
        key, cls, params = self.key, type(scorer), dataclasses.asdict(scorer.params)
        shared_ref = ray.put(shared)                        # once per map, not once per item
        calls = ((j, lambda a, it=it: a.call.remote(key, cls, params, fn, it, shared_ref))
                 for j, it in enumerate(items))
        done, nxt = {}, 0
        for j, (res, usage) in self.executor._dispatch(actors, calls, f"scorer {scorer.name!r}"):
            count_model(usage.passes, usage.tokens)         # into the driver's shard (score_shard's meter)
            done[j] = res
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1


def _get(ref, actor_index: int, what: str):
    """The result of one call, or the worker's error as a WorkerError / the worker's own ThresherError."""
    try:
        return ray.get(ref)
    except RayTaskError as err:
        cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else None
        if isinstance(cause, WorkerError):
            log.debug("ray worker %d traceback:\n%s", actor_index, cause.worker_traceback)
            raise WorkerError(f"A ray worker ({actor_index}) failed while running {what}: {cause} (its traceback "
                              "is logged with -v). Finished shards are cached; a rerun resumes from them.",
                              cause.worker_traceback) from None
        if isinstance(cause, ThresherError):          # the user's to fix (a bad model path): as it was raised
            raise cause from None
        raise WorkerError(f"A ray worker ({actor_index}) failed while running {what}: "
                          f"{str(err).splitlines()[0]}") from None
    except RayActorError as err:
        raise WorkerError(f"A ray worker ({actor_index}) died {MAX_RESTARTS + 1} times while running {what} "
                          f"(killed, or out of memory: {str(err).splitlines()[0]}). Finished shards are cached; "
                          "rerun with fewer workers or a smaller --max-batch-tokens.") from err


def _ctx_spec(ctx: ModelContext) -> dict:
    if getattr(ctx, "_lm", None) is not None and ctx.model == "live":
        raise ConfigError("A live in-memory model (IterIT re-scoring) cannot be sent to Ray workers; use the "
                          "local executor.")
    return ctx.spec()
