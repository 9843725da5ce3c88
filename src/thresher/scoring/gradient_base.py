"""The shared base of the gradient scorers over a LoRA training run: ``less`` (scoring/less.py), ``clues``
(scoring/clues.py) and ``datainf`` (scoring/datainf.py).

Each reads a training run directory (``checkpoints``: what ``thresher train`` writes, one
``checkpoint-<step>/`` per save) and the base model of the scorer's ModelContext, wraps the base model with
the run's LoRA adapter, and at each checkpoint takes per-sample gradients of the mean response NLL (units
rendered as the IFD scorer renders them: ``template``, ``turns``, ``max_length``, ``span_rule``; unset
values take the training run's own). ``GradientScorer`` holds what the three share: the run, the data files
a parameter names (target or validation files), rendering, the settings key of a gradient feature, Adam
moments, and small arrays cached in memory and under ``<cache_root>/grads``.
Rows that cannot be scored (prompt fills max_length, no assistant turn) get NaN and a ``status`` reason.

Where the gradients are taken: the dataset-scope scorers (less, datainf) send every pass over gradients
through ``Scorer.map_shards`` in shards of ``POOL_SHARD`` units (rendered units and the run's ``Checkpoint``s
travel to the workers; the module-level functions here and in less.py / datainf.py run there, on the
worker's model), and combine the per-shard results on the driver in shard order. The driver renders and
tokenises (tokenizer only: it never loads the model's weights) and writes every cache file: stores,
target features, validation means. clues is row scope: the engine runs all of it on the workers.

thresher.gradients imports torch: its imports stay inside the methods, so that the scorer classes load
(for ``thresher validate`` and ``thresher ls``) without torch.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thresher.config import choice, option
from thresher.data import load
from thresher.data.fingerprint import row_hashes
from thresher.data.spans import SPAN_RULES, build_spans
from thresher.data.table import Dataset
from thresher.data.templates import TEMPLATES, render_units
from thresher.errors import ConfigError
from thresher.io import atomic_path, cache_dir, file_sha256, sha256_hex
from thresher.progress import reporter
from thresher.models.runs import TrainingRunFolder
from thresher.scoring.base import Scorer
from thresher.scoring.common import row_status

POOL_SHARD = 256                     # rows per GradientStore shard: the unit of resume for pool stores
PROJECT_BYTES = 2 << 30              # bound on the block of full gradients held for one projection call

log = logging.getLogger(__name__)


@dataclass
class GradientParams:
    checkpoints: str = option("", help="training run directory, what thresher train writes: one "
                                       "checkpoint-<step>/ per save (required)")
    which: str = choice("all", "all", "last", help="checkpoints used: all (CLUES: 4, LESS: one per epoch) or the last")
    notation: str | list = option("all", help="LoRA parameters in the gradient: all, q, k, v, o, A, B, layers.N "
                                              "(CLUES's output_notation) or a list of name substrings")
    template: str | None = option(None, help="prompt template; null: the training run's own, else alpaca")
    max_length: int | None = option(None, help="tokens per sequence, an int >= 8; null: the training run's own, "
                                               "else 512")
    turns: str | None = option(None, help="assistant turn scored: last | first; null: the training run's own, "
                                          "else last")
    batch_size: int = option(8, help="rows per forward/backward pass, an int >= 1: memory against speed (the "
                                     "papers use 1)")
    span_rule: str = choice("offsets", *SPAN_RULES, help="how the response tokens are found: tokenizer offsets, "
                                                         "or Cherry's prefix re-tokenisation")

    def check(self, owner):
        if not isinstance(self.checkpoints, str) or not self.checkpoints.strip():
            raise ConfigError(f"The 'checkpoints' parameter of {owner} must be the path of a training run directory "
                              f"(the output of 'thresher train'). Got {self.checkpoints!r}.")
        if self.max_length is not None and not (isinstance(self.max_length, int) and self.max_length >= 8):
            raise ConfigError(f"The 'max_length' parameter of {owner} must be an int >= 8 or null (the training "
                              f"run's). Got {self.max_length!r}.")
        if self.template is not None and self.template not in TEMPLATES:
            raise ConfigError(f"The 'template' parameter of {owner} must be one of {', '.join(TEMPLATES)} or null "
                              f"(the training run's). Got {self.template!r}.")
        if self.turns is not None and self.turns not in ("last", "first"):
            raise ConfigError(f"The 'turns' parameter of {owner} must be last, first or null (the training run's). "
                              f"Got {self.turns!r}.")
        if self.batch_size < 1:
            raise ConfigError(f"The 'batch_size' parameter of {owner} must be an int >= 1. Got {self.batch_size}.")
        for name in self.data_params():
            paths = getattr(self, name)
            if not paths or not all(isinstance(x, str) and x.strip() for x in paths):
                raise ConfigError(f"The {name!r} parameter of {owner} must be a non-empty list of data file paths. "
                                  f"Got {paths!r}.")
        proj = getattr(self, "proj_dim", None)
        if proj is not None and proj < 1:
            raise ConfigError(f"The 'proj_dim' parameter of {owner} must be an int >= 1 or null (no projection). "
                              f"Got {proj}.")

    def data_params(self) -> tuple[str, ...]:
        return ()


def file_labels(paths: list[str]) -> list[str]:
    """A short label per data file: its stem, or the path as given where two stems coincide."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else p for s, p in zip(stems, paths)]


class GradientScorer(Scorer):
    """Shared plumbing: the run, the data files, rendering, keys, small on-disk caches."""

    uses = ("lm",)

    def __init__(self, **params):
        super().__init__(**params)
        self._run = None
        self._sets: dict[str, list[tuple[str, Dataset]]] = {}
        self._memo: dict[str, np.ndarray] = {}
        self._moments: dict[tuple, tuple] = {}
        self._layout = None

    # ------------------------------------------------------------------ run, data, identity
    def setup(self, ctx) -> None:
        super().setup(ctx)
        self._layout = None                   # the parameter layout of this context's model (layout())
        self.run()
        for name in self.params.data_params():
            self.data_sets(name)

    def run(self):
        from thresher.gradients.pipeline import open_run

        if self._run is None:
            self._run = open_run(self.params.checkpoints, self.params.which, owner=f"scorer {self.name!r}")
            self._fill_from_run()
        return self._run

    def _fill_from_run(self) -> None:
        """Unset template/max_length/turns take the training run's values, so the gradients are taken on the
        sequences the adapter was trained on (defaults alpaca/512/last for runs without thresher's config)."""
        saved = TrainingRunFolder(self.params.checkpoints).config_or_none() or {}
        for key, default in (("template", "alpaca"), ("max_length", 512), ("turns", "last")):
            if getattr(self.params, key) is None:
                setattr(self.params, key, saved.get(key, default))
        if self.params.turns == "all":            # a gradient is per sample: one response span per row
            log.warning("training run %s supervised every assistant turn; gradients are taken on each row's last "
                        "turn (set turns: first to use the first)", self.params.checkpoints)
            self.params.turns = "last"

    def data_sets(self, name: str) -> list[tuple[str, Dataset]]:
        """(path, Dataset) of each file of a data-file parameter; errors name the parameter and the file."""
        if name not in self._sets:
            out = []
            for path in getattr(self.params, name):
                if not Path(path).is_file():
                    raise ConfigError(f"The {name!r} parameter of scorer {self.name!r} names {path!r}, which "
                                      f"{'is not a file' if Path(path).exists() else 'does not exist'}.")
                out.append((path, load(path)))       # an empty or unreadable file raises DataError naming it
            self._sets[name] = out
        return self._sets[name]

    def model_identity(self, ctx) -> str:
        return f"{super().model_identity(ctx)}|run={self.run().fingerprint}"

    def param_dict(self) -> dict:
        """Parameters plus the content of the data files they name (a changed file misses the cache)."""
        d = super().param_dict()
        for name in self.params.data_params():
            d[f"{name}_sha"] = [file_sha256(p) for p in getattr(self.params, name)]
        return d

    # ------------------------------------------------------------------ rendering and gradients
    def units(self, rows: Dataset, tokenizer):
        """One unit per row with an assistant turn: (units, owner row of each unit)."""
        return render_units(rows, self.params.template, self.params.turns, tokenizer)

    def status(self, units, owner, n_rows: int, tokenizer) -> np.ndarray:
        """(n_rows,) 'ok' or the reason a row's unit cannot be scored (as the gradient functions decide)."""
        p = self.params
        sp = build_spans(tokenizer, units, p.max_length, p.span_rule, p.template)
        return row_status(sp.status, owner, n_rows)

    def grad_kw(self, sel=None) -> dict:
        """Keyword arguments of the gradient functions. With a projection, samples are projected
        ``project_batch`` at a time (amortising the draw of R), capped so that the (project_batch, P)
        block of full gradients stays under PROJECT_BYTES (LoRA r=128 on q,k,v,o of a 7B model:
        P = 134M, 4 samples per block)."""
        p = self.params
        kw = {"max_length": p.max_length, "batch_size": p.batch_size, "span_rule": p.span_rule,
              "template": p.template}
        if sel is not None and getattr(p, "proj_dim", None) is not None:
            kw["project_batch"] = int(max(1, min(64, PROJECT_BYTES // (4 * sel.dim))))
        return kw

    def projector(self, sel):
        from thresher.gradients.projection import RademacherProjector

        dim = getattr(self.params, "proj_dim", None)
        return None if dim is None else RademacherProjector(sel.dim, dim, seed=self.params.proj_seed)

    def settings_key(self) -> str:
        """Everything except the data that decides a gradient feature."""
        p = self.params
        return sha256_hex(self.ctx.lm().identity(), self.ctx.dtype, p.notation, getattr(p, "proj_dim", None),
                          getattr(p, "proj_seed", None), p.template, p.max_length, p.turns, p.span_rule)

    def grads_dir(self) -> Path:
        return Path(self.cache_root or cache_dir()) / "grads"

    def moments(self, ckpt, model, sel):
        """The checkpoint's flat Adam moments on the model's device; read from optimizer.pt once per scorer
        (kept on the CPU: row-scope scorers see many shards)."""
        from thresher.gradients.pipeline import checkpoint_moments

        key = (ckpt.fingerprint, tuple(sel.names))
        if key not in self._moments:
            self._moments[key] = checkpoint_moments(ckpt, model, sel, device="cpu")
        dev = next(model.parameters()).device
        return tuple(t.to(dev) for t in self._moments[key])

    def cached(self, kind: str, key: str, compute) -> np.ndarray:
        """A small array (target features, validation means) kept in memory and in ``grads/<kind>-<key>.npy``."""
        name = f"{kind}-{key[:32]}"
        if name not in self._memo:
            path = self.grads_dir() / f"{name}.npy"
            if path.is_file():
                self._memo[name] = np.load(path)
            else:
                arr = np.asarray(compute())
                with atomic_path(path) as tmp, open(tmp, "wb") as f:     # a file that exists is complete
                    np.save(f, arr)
                self._memo[name] = arr
        return self._memo[name]

    def is_cached(self, kind: str, key: str) -> bool:
        """Whether ``cached(kind, key, ...)`` would return without computing."""
        name = f"{kind}-{key[:32]}"
        return name in self._memo or (self.grads_dir() / f"{name}.npy").is_file()

    def cached_per_checkpoint(self, kind: str, keys: list[str], compute) -> list[np.ndarray]:
        """``cached(kind, keys[c], ...)`` for each checkpoint c of the run; those not cached are computed together
        by ``compute(checkpoints) -> [array per checkpoint]`` (one pass over the executor's workers for all)."""
        cks = self.run().checkpoints
        todo = [c for c, key in enumerate(keys) if not self.is_cached(kind, key)]
        fresh = dict(zip(todo, compute([cks[c] for c in todo]))) if todo else {}
        return [self.cached(kind, key, lambda c=c: fresh[c]) for c, key in enumerate(keys)]

    # ------------------------------------------------------------------ passes on the executor's workers
    @contextmanager
    def adapted(self):
        """(this process's model with the run's LoRA layers, its tokenizer, the selected parameters) for the
        duration of a ``with`` block: the worker side of the per-shard functions."""
        from thresher.gradients import select_parameters
        from thresher.gradients.pipeline import adapted_model

        lm = self.ctx.lm().setup()
        with adapted_model(lm.model, self.run()) as model:
            yield model, lm.tokenizer, select_parameters(model, self.params.notation)

    def local_checkpoint(self, ck):
        """This process's checkpoint of the run with the step and content of ``ck`` (the driver's)."""
        for mine in self.run().checkpoints:
            if (mine.step, mine.fingerprint) == (ck.step, ck.fingerprint):
                return mine
        raise ConfigError(f"The 'checkpoints' parameter of scorer {self.name!r}: checkpoint-{ck.step} of "
                          f"{self.params.checkpoints!r} is missing or has other content on this worker than on "
                          "the driver. Give every worker the same copy of the training run directory.")

    def layout(self):
        """The selected parameters' names and shapes (a ``ParamSelection`` without modules: ``dim``,
        ``offsets``, ``names``), asked of a worker, so that the driver never loads the model's weights."""
        from thresher.gradients.persample import ParamSelection

        if self._layout is None:
            names, shapes = list(self.map_shards(selection_layout, [None]))[0]
            self._layout = ParamSelection(list(names), [tuple(x) for x in shapes], [])
        return self._layout

    @staticmethod
    def shard_spans(n: int) -> list[slice]:
        """Consecutive shards of ``POOL_SHARD`` units out of n, in order."""
        return [slice(s, min(s + POOL_SHARD, n)) for s in range(0, n, POOL_SHARD)]

    def shard_items(self, units, checkpoints) -> list[tuple]:
        """Items of the per-shard functions, one per ``shard_spans``: (its units, the checkpoints to use)."""
        return [(units[sl], tuple(checkpoints)) for sl in self.shard_spans(len(units))]

    def features(self, units, checkpoints, *, adam: bool) -> list[np.ndarray]:
        """Per checkpoint, the (len(units), d) float32 features of ``units`` (at least one; Adam-preconditioned if
        ``adam``, projected if the scorer projects; NaN rows: unscorable), computed shard by shard on the workers."""
        parts = list(self.map_shards(shard_features, self.shard_items(units, checkpoints), adam=adam,
                                     dtype="float32"))
        return [np.concatenate([part[k] for part in parts]) for k in range(len(checkpoints))]

    def fill_stores(self, paths: list[Path], ids: list[str], units, sel, *, adam: bool, dtype: str, meta) -> list:
        """One resumable GradientStore per checkpoint of the run (``paths[c]``) of the units' features (as
        ``features``), ``POOL_SHARD`` rows per store shard. The shards missing from any store are computed on
        the workers (one item per shard, for every checkpoint that lacks it) and written here, each once and
        atomically, as they come back; complete shards are skipped (resume). ``meta(checkpoint)``: the
        manifest metadata of its store."""
        from thresher.gradients import GradientStore, StoreWriter
        from thresher.gradients.features import feature_dim, store_meta

        cks, proj = self.run().checkpoints, self.projector(sel)
        writers = [StoreWriter(path, ids, feature_dim(sel, proj), shard_size=POOL_SHARD, dtype=dtype,
                               meta=store_meta(sel, proj, adam, meta(ck))) for path, ck in zip(paths, cks)]
        todo: dict[int, list[int]] = {}                       # shard -> checkpoints whose store lacks it
        for c, w in enumerate(writers):
            for i in w.missing():
                todo.setdefault(i, []).append(c)
        shards = sorted(todo)
        items = [([units[j] for j in writers[0].rows(i)], tuple(cks[c] for c in todo[i])) for i in shards]
        for i, feats in zip(shards, self.map_shards(shard_features, items, adam=adam, dtype=dtype)):
            for c, f in zip(todo[i], feats):
                writers[c].write(i, f)
        return [GradientStore(path) for path in paths]

    def per_checkpoint(self, units, checkpoints, reduce, *, adam: bool = False) -> list:
        """``[reduce(k, stream, dim) for each checkpoint k]`` on this process's model (worker side): ``stream``
        yields (unit indices, (b, dim) features) of ``units`` at checkpoint k (Adam-preconditioned if ``adam``,
        projected if the scorer projects), each scorable unit once."""
        from thresher.gradients.features import feature_dim, iter_gradients
        from thresher.gradients.pipeline import use_checkpoint

        out = []
        with self.adapted() as (model, tok, sel), reporter(f"{self.name} gradients", len(units) * len(checkpoints),
                                                            unit="units", transient=True) as progress:
            proj, kw = self.projector(sel), self.grad_kw(sel)
            for k, ck in enumerate(checkpoints):
                ck = self.local_checkpoint(ck)
                use_checkpoint(model, ck)
                moments = self.moments(ck, model, sel) if adam else None
                stream = iter_gradients(model, tok, units, sel, moments=moments, projector=proj, **kw)
                out.append(reduce(k, _reported(stream, progress), feature_dim(sel, proj)))
                progress.update(len(units) * (k + 1) - progress.done)    # unscorable units: never yielded
        return out

    def labelled_units(self, name: str, tokenizer, task_field: str | None = None):
        """Units of every file of a data-file parameter, their group index, the group names, and a
        content hash. Groups are files, or the records' ``task_field`` value where a record has one."""
        sets = self.data_sets(name)
        labels = file_labels([path for path, _ in sets])
        units, names, hashes = [], [], []
        for (path, ds), label in zip(sets, labels):
            u, owner = self.units(ds, tokenizer)
            if not u:
                raise ConfigError(f"The {name!r} parameter of scorer {self.name!r}: {path!r} has no row with an "
                                  "assistant response to take a gradient of.")
            units += u
            for r in owner:
                raw = ds.raw[r] if isinstance(ds.raw[r], dict) else {}
                task = ds.meta[r].get(task_field, raw.get(task_field)) if task_field else None
                names.append(str(task) if task is not None else label)
            hashes += row_hashes(ds)
        groups, idx = np.unique(np.asarray(names), return_inverse=True)
        return units, idx, [str(g) for g in groups], sha256_hex(*hashes, *names)

    def require_scored(self, name: str, counts: np.ndarray, groups: list[str]) -> None:
        empty = [g for g, c in zip(groups, counts) if c == 0]
        if empty:
            raise ConfigError(f"The {name!r} parameter of scorer {self.name!r}: no row of {empty[0]!r} could be "
                              f"scored (prompts fill max_length={self.params.max_length} or responses are empty). "
                              "Raise max_length or use other data.")

    def to_rows(self, values: np.ndarray, owner: np.ndarray, n_rows: int) -> np.ndarray:
        """Unit values -> row values (one unit per row; NaN for rows without one)."""
        out = np.full(n_rows, np.nan)
        out[owner] = values
        return out


def _reported(stream, progress):
    """``stream`` of (unit indices, gradients) as it is, each chunk's units counted on ``progress``."""
    for idx, g in stream:
        progress.update(len(idx))
        yield idx, g


# ---------------------------------------------------------------- per-shard functions (run on the workers)
def selection_layout(scorer: GradientScorer, item) -> tuple[list[str], list[tuple[int, ...]]]:
    """(names, shapes) of the parameters the scorer's ``notation`` selects on the adapted model."""
    with scorer.adapted() as (_, _, sel):
        return sel.names, sel.shapes


def shard_features(scorer: GradientScorer, item, *, adam: bool, dtype: str) -> list[np.ndarray]:
    """item = (units, checkpoints): per checkpoint, (len(units), d) features in ``dtype`` (NaN rows:
    unscorable units)."""
    from thresher.gradients.features import collect_features

    units, checkpoints = item
    return scorer.per_checkpoint(units, checkpoints, lambda k, stream, dim:
                                 collect_features(stream, len(units), dim).astype(dtype), adam=adam)
