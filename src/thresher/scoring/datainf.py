"""DataInf (METHODS.md 6.4): closed-form LoRA influence of each pool row on the mean validation loss.

(dataset scope) I_k = -sum_l h_l . g_kl (DataInf closed form), raw unprojected gradients at the ``which``
checkpoint(s) (default the last; "all" = mean of I over checkpoints), validation = mean gradient of all
validation rows; ``layers: per_param`` = each LoRA tensor is a layer (DataInf's IFEngine), ``single`` = one
layer (CLUES's DataInf.py). Column ``datainf`` = -I (higher = more beneficial: keep the highest),
``datainf_influence`` = I (negative = lowers validation loss, large positive = harmful). Memory stays O(P):
three streamed passes over the pool's gradients, recomputed (``gradients: recompute``, 3 forward/backward
passes, no disk: each pass runs on the executor's workers over shards of the pool, the driver combining the
shards' results in order) or written once to a GradientStore of raw gradients and read back (``gradients:
store``, 1 pass on the workers, n x P x 4 bytes of the driver's disk, the three passes over it on the
driver). The run, rendering and caches: thresher.scoring.gradient_base.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.config import choice, option
from thresher.data.fingerprint import row_hashes
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.io import sha256_hex
from thresher.scoring.gradient_base import GradientParams, GradientScorer


@dataclass
class DataInfParams(GradientParams):
    which: str = choice("last", "all", "last", help="checkpoints used: the last, or all (the mean of the influence "
                                                    "over them)")
    validation: list = option(default_factory=list, help="validation data files (required); their mean gradient "
                                                         "is the direction")
    lambda_const_param: float = option(10.0, help="damping lambda_l = mean squared gradient of layer l / this, a "
                                                  "float > 0 (DataInf and CLUES: 10)")
    layers: str = choice("per_param", "per_param", "single",
                         help="per_param: each LoRA tensor is a layer (DataInf); single: all LoRA gradients as one "
                              "layer (CLUES's DataInf.py)")
    gradients: str = choice("recompute", "recompute", "store",
                            help="recompute: 3 forward/backward passes, no disk; store: 1 pass, the raw gradients "
                                 "written to disk (n x P x 4 bytes)")

    def data_params(self):
        return ("validation",)

    def check(self, owner):
        super().check(owner)
        if not self.lambda_const_param > 0:
            raise ConfigError(f"The 'lambda_const_param' parameter of {owner} must be a float > 0. "
                              f"Got {self.lambda_const_param}.")


class DataInfScorer(GradientScorer):
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
        from thresher.gradients.pipeline import datainf_streamed, store_batches

        p, run = self.params, self.run()
        tok = self.ctx.lm().tokenizer_only()
        units, owner = self.units(rows, tok)
        sel = self.layout()
        layers = self.layer_slices(sel)
        vals = self.validation_means(tok)
        if p.gradients == "store":       # one forward/backward pass, raw gradients on disk
            pool_hash = sha256_hex(*row_hashes(rows))
            paths = [self.grads_dir() / f"raw-pool-{sha256_hex(self.settings_key(), ck.fingerprint, pool_hash)[:24]}"
                     for ck in run.checkpoints]
            stores = self.fill_stores(paths, [rows.ids[o] for o in owner], units, sel, adam=False, dtype="float32",
                                      meta=lambda ck: {"step": ck.step, "checkpoint": ck.fingerprint})
            infl = np.zeros(len(units))
            for store, v in zip(stores, vals):
                infl += datainf_streamed(store_batches(store), len(units), v, layers, p.lambda_const_param)
        else:                                # three forward/backward passes on the workers, nothing on disk
            infl = self.influence_on_workers(units, vals, layers, sel.dim)
        infl /= len(run.checkpoints)
        return {"datainf": self.to_rows(-infl, owner, len(rows)),
                "datainf_influence": self.to_rows(infl, owner, len(rows)),
                "status": self.status(units, owner, len(rows), tok)}

    def validation_means(self, tok) -> list[np.ndarray]:
        """Per checkpoint, the (P,) float64 mean gradient of every validation row (cached), summed per shard on
        the workers and combined here in shard order."""
        v_units, _, _, v_hash = self.labelled_units("validation", tok)

        def compute(cks):
            total, count = np.zeros((len(cks), self.layout().dim)), np.zeros(len(cks), dtype=np.int64)
            for part in self.map_shards(validation_sums, self.shard_items(v_units, cks)):
                for k, (sums, scored) in enumerate(part):           # in shard order: a fixed float sum
                    total[k] += sums
                    count[k] += scored
            self.require_scored("validation", count.min(keepdims=True), [", ".join(self.params.validation)])
            return list(total / count[:, None])
        return self.cached_per_checkpoint("datainf-val", [sha256_hex(self.settings_key(), ck.fingerprint, v_hash)
                                                          for ck in self.run().checkpoints], compute)

    def influence_on_workers(self, units, vals: list[np.ndarray], layers: list[slice], dim: int) -> np.ndarray:
        """(n,) I summed over the run's checkpoints: DataInf's three passes (pipeline.datainf_streamed) over
        shards of the units on the workers, all checkpoints at once; the driver combines each pass in shard order
        (pass 1: rows of (a, s2) -> lambda, c; pass 2: partial sums S -> h; pass 3: rows of -h.g)."""
        from thresher.gradients.pipeline import datainf_coefficients, datainf_direction

        cks, n, L = self.run().checkpoints, len(units), len(layers)
        spans, items = self.shard_spans(n), self.shard_items(units, cks)
        a, s2, seen = np.zeros((len(cks), n, L)), np.zeros((len(cks), n, L)), np.zeros((len(cks), n), dtype=bool)
        for sl, part in zip(spans, self.map_shards(datainf_stats, items, vals=vals, layers=layers)):     # pass 1
            for k, (a_k, s2_k, seen_k) in enumerate(part):
                a[k, sl], s2[k, sl], seen[k, sl] = a_k, s2_k, seen_k
        coef = [datainf_coefficients(a[k], s2[k], seen[k], layers, self.params.lambda_const_param)
                for k in range(len(cks))]                              # per checkpoint: (c, lambda, m)
        items2 = [(shard_units, shard_cks, [c[sl] for c, _, _ in coef])
                  for (shard_units, shard_cks), sl in zip(items, spans)]
        S = np.zeros((len(cks), dim))
        for part in self.map_shards(datainf_sums, items2, layers=layers, dim=dim):                      # pass 2
            for k in range(len(cks)):                                  # in shard order: a fixed float sum
                S[k] += part[k]
        hs = [datainf_direction(vals[k], S[k], m, lam, layers) for k, (_, lam, m) in enumerate(coef)]
        infl = np.zeros(n)
        for sl, part in zip(spans, self.map_shards(datainf_scores, items, hs=hs)):                      # pass 3
            for k in range(len(cks)):
                infl[sl] += part[k]
        return infl


# ---------------------------------------------------------------- per-shard functions (run on the workers)
def validation_sums(scorer: DataInfScorer, item) -> list[tuple[np.ndarray, int]]:
    """item = (units, checkpoints): per checkpoint, ((P,) float64 sum of the units' gradients, scored units)."""
    from thresher.gradients.pipeline import group_sums

    units, checkpoints = item
    groups = np.zeros(len(units), dtype=np.int64)

    def reduce(k, stream, dim):
        sums, counts = group_sums(stream, groups, 1, dim)
        return sums[0], int(counts[0])
    return scorer.per_checkpoint(units, checkpoints, reduce)


def datainf_stats(scorer: DataInfScorer, item, *, vals: list[np.ndarray], layers: list[slice]) -> list[tuple]:
    """Pass 1, item = (units, checkpoints): per checkpoint k, ((b, L) a, (b, L) s2, (b,) seen) against vals[k]."""
    from thresher.gradients.pipeline import datainf_layer_stats

    units, checkpoints = item
    return scorer.per_checkpoint(units, checkpoints,
                                 lambda k, stream, dim: datainf_layer_stats(stream, len(units), vals[k], layers))


def datainf_sums(scorer: DataInfScorer, item, *, layers: list[slice], dim: int) -> list[np.ndarray]:
    """Pass 2, item = (units, checkpoints, per checkpoint (b, L) c): per checkpoint, the (P,) partial S."""
    from thresher.gradients.pipeline import datainf_weighted_sum

    units, checkpoints, coef = item
    return scorer.per_checkpoint(units, checkpoints,
                                 lambda k, stream, _: datainf_weighted_sum(stream, coef[k], layers, dim))


def datainf_scores(scorer: DataInfScorer, item, *, hs: list[np.ndarray]) -> list[np.ndarray]:
    """Pass 3, item = (units, checkpoints): per checkpoint k, (b,) I = -hs[k] . g (NaN: unscorable units)."""
    from thresher.gradients.pipeline import datainf_dots

    units, checkpoints = item
    return scorer.per_checkpoint(units, checkpoints, lambda k, stream, _: datainf_dots(stream, len(units), hs[k]))
