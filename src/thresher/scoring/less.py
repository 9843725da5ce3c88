"""LESS (METHODS.md 6.3): lr-weighted cosine of Adam-preconditioned pool gradients to target-task gradients.

(dataset scope) S_i = max_task mean_{t in task} sum_c w_c cos(Gamma_i^c, g_t^c), w_c = eta_c / sum eta.
Pool: Adam-preconditioned, projected (``proj_dim`` 8192, ``proj_seed`` 0), stored per checkpoint in a
resumable GradientStore under ``cache_root/grads/less-pool-<key>``; the key covers the model, the
checkpoint's content, the gradient settings and the pool rows but not the target, so another target
reuses the store. The store's shards are computed on the executor's workers and written by the driver
(``GradientScorer.fill_stores``), then read back shard by shard on the driver to score. Target: plain SGD
gradients of each target file (one task per file, or per ``task`` field of the records), also computed on
the workers. Range [-1, 1]; higher = closer to some target task (keep). The run, rendering and caches:
thresher.scoring.gradient_base.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.config import choice, option
from thresher.data.fingerprint import row_hashes
from thresher.data.table import Dataset
from thresher.io import sha256_hex
from thresher.scoring.gradient_base import GradientParams, GradientScorer


@dataclass
class LessParams(GradientParams):
    target: list = option(default_factory=list, help="target-task data files (required); one task per file, or "
                                                     "per record 'task' field")
    proj_dim: int | None = option(8192, help="random (Rademacher) projection of the gradients, an int >= 1 "
                                             "(LESS: 8192); null: no projection")
    proj_seed: int = option(0, help="seed of the projection (LESS: 0)")
    store_dtype: str = choice("float32", "float32", "float16",
                              help="dtype of the stored pool gradients (LESS stores float16)")

    def data_params(self):
        return ("target",)


class LessScorer(GradientScorer):
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
        from thresher.gradients import less_scores

        p, run = self.params, self.run()
        tok = self.ctx.lm().tokenizer_only()
        units, owner = self.units(rows, tok)
        t_units, t_task, tasks, t_hash = self.labelled_units("target", tok, task_field="task")
        pool_hash = sha256_hex(*row_hashes(rows))
        sel = self.layout()
        stores = self.fill_stores([self.grads_dir() / f"less-pool-{self.pool_store_key(ck, pool_hash)}"
                                   for ck in run.checkpoints], [rows.ids[o] for o in owner], units, sel,
                                  adam=True, dtype=p.store_dtype,
                                  meta=lambda ck: {"step": ck.step, "checkpoint": ck.fingerprint,
                                                   "notation": p.notation})
        targets = self.cached_per_checkpoint(
            "less-target", [sha256_hex(self.settings_key(), ck.fingerprint, t_hash) for ck in run.checkpoints],
            lambda cks: self.features(t_units, cks, adam=False))
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
