"""Gradient-based scorers over a LoRA training run: LESS (METHODS.md 6.3), CLUES (1.3) and DataInf (6.4).

Each reads a training run directory (``checkpoints``: what ``thresher train`` writes, one
``checkpoint-<step>/`` per save) and the base model of the scorer's ModelContext, wraps the base model with
the run's LoRA adapter, and at each checkpoint takes per-sample gradients of the mean response NLL (units
rendered as the IFD scorer renders them: ``template``, ``turns``, ``max_length``, ``span_rule``).

less     (dataset scope) S_i = max_task mean_{t in task} sum_c w_c cos(Gamma_i^c, g_t^c), w_c = eta_c / sum eta.
         Pool: Adam-preconditioned, projected (``proj_dim`` 8192, ``proj_seed`` 0), stored per checkpoint in a
         resumable GradientStore under ``cache_root/grads/less-pool-<key>``; the key covers the model, the
         checkpoint's content, the gradient settings and the pool rows but not the target, so another
         target reuses the store. Target: plain SGD gradients of each target file (one task per file, or
         per ``task`` field of the records). Range [-1, 1]; higher = closer to some target task (keep).
clues    (row scope) score_i = (1/|C|) sum_c eta_c sum_l w_l <Gamma_i^c, gbar_l^c>, gbar_l = mean SGD gradient
         of validation file l, w = 1 for ``own_domain`` and ``scoring_weight`` for the others. Gamma = Adam-
         preconditioned (``precondition: adam``, the reference's noproj_adam) or raw (``sgd``). Unprojected
         by default: each batch's gradients are dotted with the fixed direction and dropped, never stored.
         Real-valued, scale ~ eta * |g|^2; higher = a step on the sample lowers validation loss more (keep).
         Anchors scored by the same scorer give the same-scale values the global threshold needs.
datainf  (dataset scope) I_k = -sum_l h_l . g_kl (DataInf closed form), raw unprojected gradients at the
         ``which`` checkpoint(s) (default the last; "all" = mean of I over checkpoints), validation = mean
         gradient of all validation rows; ``layers: per_param`` = each LoRA tensor is a layer (DataInf's
         IFEngine), ``single`` = one layer (CLUES's DataInf.py). Column ``datainf`` = -I (higher = more
         beneficial: keep the highest), ``datainf_influence`` = I (negative = lowers validation loss,
         large positive = harmful). Memory stays O(P): three streamed passes over the pool's gradients,
         recomputed (``gradients: recompute``, 3 forward/backward passes, no disk) or written once to a
         GradientStore of raw gradients and read back (``gradients: store``, 1 pass, n x P x 4 bytes of disk).
Rows that cannot be scored (prompt fills max_length, no assistant turn) get NaN and a ``status`` reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thresher.config import choice
from thresher.data.table import Dataset
from thresher.io import file_sha256, sha256_hex
from thresher.data.fingerprint import row_hashes
from thresher.errors import ConfigError
from thresher.scoring.base import Scorer
from thresher.data.templates import render_units
from thresher.scoring.common import row_status

TEMPLATES = ("alpaca", "wiz", "vicuna", "none", "chat")
POOL_SHARD = 256                     # rows per GradientStore shard: the unit of resume for the LESS pool store
PROJECT_BYTES = 2 << 30              # bound on the block of full gradients held for one projection call

log = logging.getLogger(__name__)



@dataclass
class GradientParams:
    checkpoints: str = ""              # training run directory (required)
    which: str = choice("all", "all", "last")
    notation: str | list = "all"       # parameter subset (gradients.persample.select_parameters)
    template: str | None = None        # None: the training run's own (its config.json), else alpaca
    max_length: int | None = None      # None: the training run's own, else 512
    turns: str | None = None           # None: the training run's own, else last
    batch_size: int = 8
    span_rule: str = choice("offsets", "offsets", "cherry")

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


@dataclass
class LessParams(GradientParams):
    target: list = dataclasses.field(default_factory=list)     # data files; one task per file (or record 'task')
    proj_dim: int | None = 8192
    proj_seed: int = 0
    store_dtype: str = choice("float32", "float32", "float16")

    def data_params(self):
        return ("target",)


@dataclass
class CluesParams(GradientParams):
    validation: list = dataclasses.field(default_factory=list)  # data files; one validation domain per file
    own_domain: str | None = None       # one of the validation files (path or file stem); default the first
    scoring_weight: float = 1.0         # weight of the other domains (CLUES Compute_score: 1.0; Scoring.sh: 0)
    precondition: str = choice("adam", "adam", "sgd")
    proj_dim: int | None = None
    proj_seed: int = 42

    def data_params(self):
        return ("validation",)


@dataclass
class DataInfParams(GradientParams):
    which: str = choice("last", "all", "last")
    validation: list = dataclasses.field(default_factory=list)
    lambda_const_param: float = 10.0
    layers: str = choice("per_param", "per_param", "single")
    gradients: str = choice("recompute", "recompute", "store")

    def data_params(self):
        return ("validation",)

    def check(self, owner):
        super().check(owner)
        if not self.lambda_const_param > 0:
            raise ConfigError(f"The 'lambda_const_param' parameter of {owner} must be a float > 0. "
                              f"Got {self.lambda_const_param}.")


def file_labels(paths: list[str]) -> list[str]:
    """A short label per data file: its stem, or the path as given where two stems coincide."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else p for s, p in zip(stems, paths)]


class _RunScorer(Scorer):
    """Shared plumbing: the run, the data files, rendering, keys, small on-disk caches."""

    uses = ("lm",)

    def __init__(self, **params):
        super().__init__(**params)
        self._run = None
        self._sets: dict[str, list[tuple[str, Dataset]]] = {}
        self._memo: dict[str, np.ndarray] = {}
        self._moments: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------ run, data, identity
    def setup(self, ctx) -> None:
        super().setup(ctx)
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
        import json

        cfg_file = Path(self.params.checkpoints) / "config.json"
        saved = json.loads(cfg_file.read_text(encoding="utf-8")).get("config", {}) if cfg_file.is_file() else {}
        for key, default in (("template", "alpaca"), ("max_length", 512), ("turns", "last")):
            if getattr(self.params, key) is None:
                setattr(self.params, key, saved.get(key, default))
        if self.params.turns == "all":            # a gradient is per sample: one response span per row
            log.warning("training run %s supervised every assistant turn; gradients are taken on each row's last "
                        "turn (set turns: first to use the first)", self.params.checkpoints)
            self.params.turns = "last"

    def data_sets(self, name: str) -> list[tuple[str, Dataset]]:
        """(path, Dataset) of each file of a data-file parameter; errors name the parameter and the file."""
        from thresher.data import load

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
        from thresher.data.spans import build_spans

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
        from thresher.models.bundled import cache_dir

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
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                with open(tmp, "wb") as f:
                    np.save(f, arr)
                os.replace(tmp, path)                  # a file that exists is complete
                self._memo[name] = arr
        return self._memo[name]

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


# ----------------------------------------------------------------------------------------------- LESS
class LessScorer(_RunScorer):
    """LESS: lr-weighted cosine of Adam-preconditioned pool gradients to target-task gradients, max over tasks."""

    name = "less"
    version = "1"
    Params = LessParams
    main_column = "less"
    higher_is_better = True
    scope = "dataset"
    produces = {"less": "max over target tasks of the mean lr-weighted gradient cosine, [-1, 1]; higher = keep",
                "less_task": "the target task attaining the max",
                "status": "ok or why NaN"}

    def pool_store_key(self, ckpt, pool_hash: str) -> str:
        return sha256_hex(self.settings_key(), ckpt.step, ckpt.fingerprint, self.params.store_dtype, pool_hash)[:24]

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        from thresher.gradients import GradientStore, gradient_features, less_scores, select_parameters
        from thresher.gradients import write_gradient_store
        from thresher.gradients.pipeline import adapted_model, use_checkpoint

        p, lm, run = self.params, self.ctx.lm().setup(), self.run()
        tok = lm.tokenizer
        units, owner = self.units(rows, tok)
        t_units, t_task, tasks, t_hash = self.labelled_units("target", tok, task_field="task")
        pool_hash = sha256_hex(*row_hashes(rows))
        stores, targets = [], []
        with adapted_model(lm.model, run) as model:
            sel = select_parameters(model, p.notation)
            proj, kw = self.projector(sel), self.grad_kw(sel)
            for ck in run.checkpoints:
                use_checkpoint(model, ck)
                key = self.pool_store_key(ck, pool_hash)
                path = self.grads_dir() / f"less-pool-{key}"
                if not (path.is_dir() and GradientStore(path).complete):
                    write_gradient_store(path, [rows.ids[o] for o in owner], model, tok, units, sel,
                                         shard_size=POOL_SHARD, dtype=p.store_dtype,
                                         meta={"step": ck.step, "checkpoint": ck.fingerprint, "notation": p.notation},
                                         moments=self.moments(ck, model, sel), projector=proj, **kw)
                stores.append(GradientStore(path))
                targets.append(self.cached("less-target", sha256_hex(self.settings_key(), ck.fingerprint, t_hash),
                                           lambda: gradient_features(model, tok, t_units, sel, projector=proj, **kw)))
        ok = np.all([np.isfinite(t).all(axis=1) for t in targets], axis=0)          # (M,) scorable targets
        self.require_scored("target", np.bincount(t_task[ok], minlength=len(tasks)), tasks)
        targets = [t[ok] for t in targets]
        per_task = np.full((len(units), len(tasks)), np.nan)
        for i in range(len(stores[0].shards)):                  # shard by shard: memory ~ shard x d x |C|
            s = i * stores[0].shard_size
            feats = [st.shard(i) for st in stores]
            per_task[s: s + len(feats[0])] = less_scores(feats, targets, t_task[ok], run.lrs, per_task=True)
        filled = np.where(np.isnan(per_task), -np.inf, per_task)
        best = np.where(np.isfinite(per_task).all(axis=1), filled.argmax(axis=1), -1)     # -1: unscored row
        task_col = np.full(len(rows), "", dtype=object)
        task_col[owner] = [tasks[b] if b >= 0 else "" for b in best]
        return {"less": self.to_rows(per_task.max(axis=1), owner, len(rows)), "less_task": task_col.astype(str),
                "status": self.status(units, owner, len(rows), tok)}


# ----------------------------------------------------------------------------------------------- CLUES
class CluesScorer(_RunScorer):
    """CLUES: lr-weighted inner product of Adam-preconditioned gradients with mean validation gradients.

    Summed over validation domains (weights 1 / scoring_weight) and averaged over checkpoints."""

    name = "clues"
    version = "1"
    Params = CluesParams
    main_column = "clues"
    higher_is_better = True
    produces = {"clues": "(1/|C|) sum_c eta_c sum_l w_l <Gamma_i^c, gbar_l^c>; real, higher = keep",
                "clues_own": "the same with the own validation domain only (scoring_weight 0)",
                "status": "ok or why NaN"}

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.own_label()

    def own_label(self) -> str:
        """The label (file_labels) of the client's own validation domain."""
        p = self.params
        labels = file_labels(p.validation)
        own = p.own_domain if p.own_domain is not None else p.validation[0]
        if own in p.validation:
            return labels[p.validation.index(own)]
        if own in labels:
            return own
        raise ConfigError(f"The 'own_domain' parameter of scorer {self.name!r} must be one of the validation "
                          f"files ({', '.join(map(repr, p.validation))}) or their stems. Got {p.own_domain!r}.")

    def domain_weights(self, groups: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(w, own one-hot) over the domain names: w = 1 for the own domain, scoring_weight for the others."""
        is_own = np.array([g == self.own_label() for g in groups], dtype=np.float64)
        return np.where(is_own > 0, 1.0, self.params.scoring_weight), is_own

    def validation_means(self, model, tok, sel, proj) -> tuple[np.ndarray, list[str]]:
        """((|C|, L, d) mean SGD validation gradient of each domain at each checkpoint (cached), domain names)."""
        from thresher.gradients.features import feature_dim, iter_gradients
        from thresher.gradients.pipeline import group_means, use_checkpoint

        v_units, v_dom, doms, v_hash = self.labelled_units("validation", tok)
        out = []
        for ck in self.run().checkpoints:
            def compute(ck=ck):
                use_checkpoint(model, ck)
                grads = iter_gradients(model, tok, v_units, sel, projector=proj, **self.grad_kw(sel))
                means, counts = group_means(grads, v_dom, len(doms), feature_dim(sel, proj))
                self.require_scored("validation", counts, doms)
                return means
            out.append(self.cached("clues-val", sha256_hex(self.settings_key(), ck.fingerprint, v_hash), compute))
        return np.stack(out), doms

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        from thresher.gradients import select_parameters
        from thresher.gradients.features import iter_gradients
        from thresher.gradients.pipeline import adapted_model, gradient_dots, use_checkpoint

        p, lm, run = self.params, self.ctx.lm().setup(), self.run()
        tok = lm.tokenizer
        units, owner = self.units(rows, tok)
        dots = np.zeros((len(units), 2))
        with adapted_model(lm.model, run) as model:
            sel = select_parameters(model, p.notation)
            proj = self.projector(sel)
            means, doms = self.validation_means(model, tok, sel, proj)                # (C, L, d)
            w, own = self.domain_weights(doms)
            for c, ck in enumerate(run.checkpoints):
                use_checkpoint(model, ck)
                moments = self.moments(ck, model, sel) if p.precondition == "adam" else None
                # (d, 2) directions: eta_c sum_l w_l gbar_l, and the own-domain term alone
                dirs = run.lrs[c] * (np.stack([w, own]) @ means[c]).T
                dots += gradient_dots(iter_gradients(model, tok, units, sel, moments=moments, projector=proj,
                                                     **self.grad_kw(sel)), len(units), dirs)
        dots /= len(run.checkpoints)
        return {"clues": self.to_rows(dots[:, 0], owner, len(rows)),
                "clues_own": self.to_rows(dots[:, 1], owner, len(rows)),
                "status": self.status(units, owner, len(rows), tok)}


# ----------------------------------------------------------------------------------------------- DataInf
class DataInfScorer(_RunScorer):
    """DataInf: closed-form LoRA influence on the mean validation loss; ``datainf`` = -I, higher = keep."""

    name = "datainf"
    version = "1"
    Params = DataInfParams
    main_column = "datainf"
    higher_is_better = True
    scope = "dataset"
    produces = {"datainf": "-I (minus the DataInf influence); real, higher = more beneficial (keep)",
                "datainf_influence": "I = -sum_l h_l.g_l; negative = lowers validation loss, positive = harmful",
                "status": "ok or why NaN"}

    def layer_slices(self, sel) -> list[slice]:
        if self.params.layers == "single":
            return [slice(0, sel.dim)]
        off = sel.offsets
        return [slice(int(off[i]), int(off[i + 1])) for i in range(len(sel.names))]

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        from thresher.gradients import GradientStore, select_parameters, write_gradient_store
        from thresher.gradients.features import iter_gradients
        from thresher.gradients.pipeline import (adapted_model, datainf_streamed, group_means, store_batches,
                                                 use_checkpoint)

        p, lm, run = self.params, self.ctx.lm().setup(), self.run()
        tok = lm.tokenizer
        units, owner = self.units(rows, tok)
        v_units, _, _, v_hash = self.labelled_units("validation", tok)
        pool_hash = sha256_hex(*row_hashes(rows))
        kw = self.grad_kw()
        infl = np.zeros(len(units))
        with adapted_model(lm.model, run) as model:
            sel = select_parameters(model, p.notation)
            layers = self.layer_slices(sel)
            for ck in run.checkpoints:
                use_checkpoint(model, ck)

                def val_mean():
                    means, counts = group_means(iter_gradients(model, tok, v_units, sel, **kw),
                                                np.zeros(len(v_units), dtype=np.int64), 1, sel.dim)
                    self.require_scored("validation", counts, [", ".join(p.validation)])
                    return means[0]
                v = self.cached("datainf-val", sha256_hex(self.settings_key(), ck.fingerprint, v_hash), val_mean)
                if p.gradients == "store":       # one forward/backward pass, raw gradients on disk
                    path = self.grads_dir() / f"raw-pool-{sha256_hex(self.settings_key(), ck.fingerprint, pool_hash)[:24]}"
                    write_gradient_store(path, [rows.ids[o] for o in owner], model, tok, units, sel,
                                         shard_size=POOL_SHARD, meta={"step": ck.step, "checkpoint": ck.fingerprint},
                                         **kw)
                    batches = store_batches(GradientStore(path))
                else:                                # three forward/backward passes, nothing on disk
                    def batches():
                        return iter_gradients(model, tok, units, sel, **kw)
                infl += datainf_streamed(batches, len(units), v, layers, p.lambda_const_param)
        infl /= len(run.checkpoints)
        return {"datainf": self.to_rows(-infl, owner, len(rows)),
                "datainf_influence": self.to_rows(infl, owner, len(rows)),
                "status": self.status(units, owner, len(rows), tok)}
