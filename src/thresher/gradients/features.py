"""Per-sample gradient features of rendered units: gradient -> (Adam preconditioning) -> (projection).

Units are rendered with thresher.data.templates.render and tokenised by thresher.data.spans.build_spans
(the same response spans as IFD scoring); the loss is the mean NLL of the conditioned response span.
Samples are sorted by length into batches (less padding), and results are returned in input order.
Unscorable units (span status not 'ok') get a NaN row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from thresher.data.templates import Rendered
from thresher.gradients.adam import adam_precondition
from thresher.gradients.persample import ParamSelection, make_batch, per_sample_grads
from thresher.gradients.projection import RademacherProjector
from thresher.gradients.store import write_store
from thresher.data.spans import OK, build_spans
from thresher.progress import count_model


def feature_dim(sel: ParamSelection, projector: RademacherProjector | None) -> int:
    return projector.out_dim if projector is not None else sel.dim


@torch.no_grad()      # torch wraps each step of a generator, so the consumer's code keeps its grad mode
def iter_gradients(model, tokenizer, units: list[Rendered], sel: ParamSelection, *, max_length: int = 512,
                   batch_size: int = 4, project_batch: int = 64,
                   moments: tuple[torch.Tensor, torch.Tensor] | None = None,
                   projector: RademacherProjector | None = None, span_rule: str = "offsets",
                   template: str = "") -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (unit indices (b,), (b, d) float32 features on the model's device) for every scorable unit,
    length-sorted; unscorable units (span status not 'ok') are never yielded. Keyword args as in
    ``gradient_features``; a consumer that reduces each chunk (a dot product, a running sum) never holds
    more than one chunk of gradients."""
    model.eval()
    sp = build_spans(tokenizer, units, max_length, span_rule, template)
    ok = np.flatnonzero([s == OK for s in sp.status])
    order = ok[np.argsort([len(sp.cond_ids[i]) for i in ok], kind="stable")]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    step = max(batch_size, project_batch if projector is not None else batch_size)
    for s in range(0, len(order), step):                 # loop over batches, not samples
        chunk, grads = order[s: s + step], []
        for b in range(0, len(chunk), batch_size):
            idx = chunk[b: b + batch_size]
            batch = make_batch([sp.cond_ids[i] for i in idx], [sp.cond_span[i] for i in idx], pad)
            g = per_sample_grads(model, sel, batch)        # (b, P)
            count_model(1, sum(len(sp.cond_ids[i]) for i in idx))
            grads.append(adam_precondition(g, *moments) if moments is not None else g)
        g = torch.cat(grads)                               # (step, P)
        yield chunk, (projector.project(g) if projector is not None else g)


def gradient_features(model, tokenizer, units: list[Rendered], sel: ParamSelection, *, max_length: int = 512,
                      batch_size: int = 4, project_batch: int = 64,
                      moments: tuple[torch.Tensor, torch.Tensor] | None = None,
                      projector: RademacherProjector | None = None, span_rule: str = "offsets",
                      template: str = "") -> np.ndarray:
    """(N, d) float32 features. ``moments`` = (exp_avg, exp_avg_sq) flat (P,) tensors (see
    adam.flat_moments) switch on Adam preconditioning; ``projector`` maps P -> d; ``template``
    is passed to build_spans (the 'cherry' span rule needs it).

    Two batch sizes because the costs differ: forward/backward runs on small length-sorted batches of
    ``batch_size`` (on a CPU, compute-bound, padding is pure waste), while the projection, whose cost is
    dominated by drawing R once per call, runs on ``project_batch`` samples at a time
    (memory: project_batch x P floats, 64 x 460,800 x 4 B = 118 MB for LoRA r=8 on q,v of SmolLM2).
    """
    return collect_features(iter_gradients(model, tokenizer, units, sel, max_length=max_length,
                                           batch_size=batch_size, project_batch=project_batch, moments=moments,
                                           projector=projector, span_rule=span_rule, template=template),
                            len(units), feature_dim(sel, projector))


def collect_features(stream: Iterator[tuple[np.ndarray, torch.Tensor]], n: int, dim: int) -> np.ndarray:
    """(n, dim) float32 rows of a gradient stream (``iter_gradients``) in unit order; NaN rows for units it
    never yields (unscorable)."""
    out = np.full((n, dim), np.nan, dtype=np.float32)
    for idx, feats in stream:
        out[idx] = feats.cpu().numpy()
    return out


def store_meta(sel: ParamSelection, projector: RademacherProjector | None, preconditioned: bool,
               meta: dict | None = None) -> dict:
    """The manifest metadata of a gradient feature store: what decides its features, plus ``meta``."""
    return {"params": sel.names, "P": sel.dim, "proj_seed": projector.seed if projector is not None else None,
            "preconditioned": preconditioned, **(meta or {})}


def write_gradient_store(path: str | Path, ids: list[str], model, tokenizer, units: list[Rendered],
                         sel: ParamSelection, *, shard_size: int = 256, dtype: str = "float32",
                         meta: dict | None = None, **kw) -> Path:
    """Resumable store of ``gradient_features`` (keyword args as there), one shard at a time."""
    proj = kw.get("projector")
    return write_store(path, ids, lambda rows: gradient_features(model, tokenizer, [units[i] for i in rows], sel, **kw),
                       feature_dim(sel, proj), shard_size=shard_size, dtype=dtype,
                       meta=store_meta(sel, proj, kw.get("moments") is not None, meta))
