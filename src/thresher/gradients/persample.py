"""Per-sample gradients of a model's trainable (LoRA) weights, one batched backward per batch.

Why hooks and not ``torch.func.vmap(grad(...))``: both give exact per-sample gradients, but vmap over
the HF decoder (sdpa attention, rotary embeddings, embedding backward) ran only about 1.4x faster than
a one-sample loop on this CPU (4 samples: 10 s vs 14 s), because several ops fall back to per-sample
loops under vmap. For a linear layer y = x W^T the gradient of one sample's loss is
  dL_i/dW = sum_t  g_i[t]^T x_i[t]          (g = dL/dy, x = layer input; t over that sample's tokens)
and since the samples of a padded batch do not interact (causal attention, right padding, loss = sum of
per-sample losses) one ordinary batched backward yields every g_i. So we record each selected LoRA
linear's input on the forward pass, ask autograd for dL/dy of those outputs only, and form the
per-sample outer products with one einsum. Cost: one batched forward + backward of activations
(frozen weights get no weight gradients), and the output head runs only on response positions.

Loss per sample: mean next-token NLL over that sample's response span (labels -100 on the prompt,
as LESS and CLUES compute it). The model runs in eval mode: LoRA dropout off, so gradients are
deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from thresher.errors import ConfigError

# CLUES output_notation -> parameter-name substrings (METHODS.md 1.4). In the reference an always-true
# `elif notation == 'noproj' or 'noproj_adam'` sent every notation to "all LoRA params"; here every
# notation selects what it names, and a pattern that matches nothing is an error.
NOTATIONS = {
    "all": (), "qv": (), "noproj": (), "noproj_adam": (),
    "q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("o_proj",),
    "A": ("lora_A",), "B": ("lora_B",),
}


@dataclass
class ParamSelection:
    """Selected trainable weights, in the model's named_parameters order.

    ``offsets[i]:offsets[i+1]`` is parameter i's slice of the flattened per-sample gradient (P values).
    """
    names: list[str]
    shapes: list[tuple[int, ...]]
    modules: list[nn.Linear]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in self.shapes])]).astype(np.int64)

    @property
    def dim(self) -> int:
        return int(self.offsets[-1])

    def layer_slices(self, pattern: str = r"layers\.(\d+)\.") -> list[slice]:
        """Contiguous slices grouping parameters by layer number (DataInf's per-layer blocks)."""
        keys = [m.group(1) if (m := re.search(pattern, n)) else n for n in self.names]
        off, out, start = self.offsets, [], 0
        for i in range(1, len(keys) + 1):
            if i == len(keys) or keys[i] != keys[start]:
                out.append(slice(int(off[start]), int(off[i])))
                start = i
        return out


def notation_patterns(notation: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Name substrings for a CLUES ``output_notation`` ('q', 'v', 'A', 'B', 'layers.N', 'all', ...)
    or an explicit list of substrings. ``()`` means every trainable parameter."""
    if isinstance(notation, (list, tuple)):
        return tuple(notation)
    if notation in NOTATIONS:
        return NOTATIONS[notation]
    if m := re.fullmatch(r"layers\.(\d+)", notation):
        return (f"layers.{m.group(1)}.",)    # trailing dot: layers.1 must not match layers.10
    return (notation,)


def select_parameters(model: nn.Module, notation="all") -> ParamSelection:
    """Trainable linear weights whose name contains any of the notation's substrings."""
    pats = notation_patterns(notation)
    modules = dict(model.named_modules())
    names, shapes, mods = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or (pats and not any(s in name for s in pats)):
            continue
        owner = modules.get(name.rsplit(".", 1)[0])
        if not (isinstance(owner, nn.Linear) and name.endswith(".weight") and owner.bias is None):
            raise ConfigError(f"Per-sample gradients support bias-free linear weights (LoRA A/B); the trainable "
                              f"parameter {name!r} is not one. Narrow the 'notation' parameter to exclude it.")
        names.append(name), shapes.append(tuple(p.shape)), mods.append(owner)
    if not names:
        raise ConfigError(f"The 'notation' parameter {notation!r} matches no trainable parameter. Use one of "
                          f"{', '.join(NOTATIONS)}, 'layers.N' or name substrings of the trainable weights.")
    return ParamSelection(names, shapes, mods)


@dataclass
class GradBatch:
    """A right-padded batch with flat indices of the scored (response) tokens."""
    input_ids: torch.Tensor      # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    row: torch.Tensor            # (N_tok,) sample of each scored token
    pos: torch.Tensor            # (N_tok,) position whose logits predict it (token index - 1)
    target: torch.Tensor         # (N_tok,) token id to predict


def make_batch(ids: list[np.ndarray], spans: list[tuple[int, int]], pad_id: int = 0) -> GradBatch:
    """Pad token sequences on the right; token j of span [s, e) is predicted from position j - 1."""
    if any(s < 1 or e <= s or e > len(x) for x, (s, e) in zip(ids, spans)):
        raise ConfigError("Every sample needs a non-empty response span [s, e) with 1 <= s < e <= length; "
                          "drop rows whose span status is not 'ok' first.")
    T = max(len(x) for x in ids)
    inp = torch.full((len(ids), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, x in enumerate(ids):                # copying rows into the padded tensor, O(B)
        inp[i, : len(x)] = torch.as_tensor(x)
        mask[i, : len(x)] = 1
    lens = np.array([e - s for s, e in spans])
    row = np.repeat(np.arange(len(ids)), lens)
    tok = np.concatenate([np.arange(s, e) for s, e in spans])
    row_t, tok_t = torch.as_tensor(row), torch.as_tensor(tok)
    return GradBatch(inp, mask, row_t, tok_t - 1, inp[row_t, tok_t])


def _decoder_and_head(model: nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def per_sample_grads(model: nn.Module, sel: ParamSelection, batch: GradBatch) -> torch.Tensor:
    """(B, P) float32: row i is d(mean response NLL of sample i)/d(selected weights), flattened in
    ``sel.names`` order. Exact per-sample gradients from one batched forward and backward."""
    decoder, head = _decoder_and_head(model)
    dev = next(model.parameters()).device
    row, pos, target = batch.row.to(dev), batch.pos.to(dev), batch.target.to(dev)
    inputs, outputs = [], []

    def record(module, args, out):              # x: (B, T, in), out: (B, T, out)
        inputs.append(args[0].detach())
        outputs.append(out)

    hooks = [m.register_forward_hook(record) for m in sel.modules]
    try:
        with torch.enable_grad():
            # No attention mask: with right padding and causal attention a real token never sees a pad, and
            # the unmasked causal path is the fast one (an explicit mask made the batch ~1.4x slower on CPU).
            hidden = decoder(input_ids=batch.input_ids.to(dev)).last_hidden_state
            logits = head(hidden[row, pos]).float()                         # (N_tok, V), response only
            nll = nn.functional.cross_entropy(logits, target, reduction="none")
            B = batch.input_ids.shape[0]
            count = torch.zeros(B, device=dev).index_add_(0, row, torch.ones_like(nll))
            loss = (torch.zeros(B, device=dev).index_add_(0, row, nll) / count).sum()    # sum of per-sample means
            gouts = torch.autograd.grad(loss, outputs)
    finally:
        for h in hooks:
            h.remove()
    # A module called twice (shared weights) would record twice; the selection forbids ambiguity.
    if len(outputs) != len(sel.modules):
        raise ConfigError("A selected LoRA module ran more or fewer times than once per forward; "
                          "per-sample gradients by hooks need each selected module called exactly once.")
    cols = [torch.einsum("bto,bti->boi", g.float(), x.float()).reshape(B, -1) for g, x in zip(gouts, inputs)]
    return torch.cat(cols, dim=1)                                            # (B, P)
