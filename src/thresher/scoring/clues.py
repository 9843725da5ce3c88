"""CLUES (METHODS.md 1.3): lr-weighted inner product of Adam-preconditioned gradients with mean validation
gradients.

(row scope) score_i = (1/|C|) sum_c eta_c sum_l w_l <Gamma_i^c, gbar_l^c>, gbar_l = mean SGD gradient of
validation file l, w = 1 for ``own_domain`` and ``scoring_weight`` for the others. Gamma = Adam-
preconditioned (``precondition: adam``, the reference's noproj_adam) or raw (``sgd``). Unprojected by
default: each batch's gradients are dotted with the fixed direction and dropped, never stored.
Real-valued, scale ~ eta * |g|^2; higher = a step on the sample lowers validation loss more (keep).
Anchors scored by the same scorer give the same-scale values the global threshold needs. The run,
rendering and caches: thresher.scoring.gradient_base.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.config import choice, option
from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.io import sha256_hex
from thresher.scoring.gradient_base import GradientParams, GradientScorer, file_labels


@dataclass
class CluesParams(GradientParams):
    validation: list = option(default_factory=list, help="validation data files (required), one domain per file")
    own_domain: str | None = option(None, help="the client's own domain: one of the validation files (path or file "
                                               "stem), weight 1; null: the first")
    scoring_weight: float = option(1.0, help="weight of the other validation domains (CLUES Compute_score: 1.0; "
                                             "Scoring.sh: 0)")
    precondition: str = choice("adam", "adam", "sgd", help="adam: Adam-preconditioned pool gradients (CLUES's "
                                                           "noproj_adam); sgd: raw gradients (noproj)")
    proj_dim: int | None = option(None, help="random projection of the gradients, an int >= 1 (CLUES's projected "
                                             "variants: 8192); null: none (CLUES's noproj)")
    proj_seed: int = option(42, help="seed of the projection (CLUES: 42)")

    def data_params(self):
        return ("validation",)


class CluesScorer(GradientScorer):
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
