"""DataInf (METHODS.md 6.4): closed-form LoRA influence of each pool row on the mean validation loss.

(dataset scope) I_k = -sum_l h_l . g_kl (DataInf closed form), raw unprojected gradients at the ``which``
checkpoint(s) (default the last; "all" = mean of I over checkpoints), validation = mean gradient of all
validation rows; ``layers: per_param`` = each LoRA tensor is a layer (DataInf's IFEngine), ``single`` = one
layer (CLUES's DataInf.py). Column ``datainf`` = -I (higher = more beneficial: keep the highest),
``datainf_influence`` = I (negative = lowers validation loss, large positive = harmful). Memory stays O(P):
three streamed passes over the pool's gradients, recomputed (``gradients: recompute``, 3 forward/backward
passes, no disk) or written once to a GradientStore of raw gradients and read back (``gradients: store``,
1 pass, n x P x 4 bytes of disk). The run, rendering and caches: thresher.scoring.gradient_base.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.config import choice, option
from thresher.data.fingerprint import row_hashes
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.io import sha256_hex
from thresher.scoring.gradient_base import POOL_SHARD, GradientParams, GradientScorer


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
