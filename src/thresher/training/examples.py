"""Training examples: the scoring code's templates and response spans turned into (input_ids, labels).

One row of the table becomes one example: the row's chosen assistant turn (``turns`` = "last" or
"first", as scoring's ``split_turns``) rendered with ``thresher.data.templates.render`` and tokenised by
``thresher.models.spans.build_spans`` (offsets rule). So the tokens a scorer scores are exactly the tokens
training supervises:

  mask_prompt=True   labels = -100 everywhere except the response span [start, end) that the IFD scorer
                     uses for ``loss_cond``; plus one end-of-sequence token after the response when
                     ``add_eos`` and the response was not cut by max_length (so the model learns to stop;
                     every paper's trainer appends one).
  mask_prompt=False  every real token is a label (CLUES trains on the full Alpaca sequence). Position 0 is
                     never predicted by a causal LM, whatever its label.
Padding is added by the collator with label -100. Rows whose span is empty (the prompt fills max_length,
an empty response) cannot be trained on; they are dropped and reported with the scorer's reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from thresher.data.table import Dataset
from thresher.errors import ConfigError
from thresher.models.spans import OK, build_spans
from thresher.scoring.common import render_units

IGNORE = -100            # label of a token that carries no loss (torch cross-entropy's ignore_index)
TRAIN_TURNS = ("last", "first")


@dataclass
class Examples:
    input_ids: list[np.ndarray]            # per kept row: int64 token ids, length <= max_length
    labels: list[np.ndarray]               # same shapes; IGNORE where no loss
    span: list[tuple[int, int]]            # per kept row: the scorer's response span [start, end)
    rows: np.ndarray                       # (n_kept,) positions of the kept rows in the input table
    skipped: dict[int, str] = field(default_factory=dict)   # row position -> reason it was dropped

    def __len__(self) -> int:
        return len(self.input_ids)

    def n_tokens(self) -> int:
        return int(sum(len(x) for x in self.input_ids))


def build_examples(table: Dataset, tokenizer, *, template: str = "alpaca", max_length: int = 512,
                   mask_prompt: bool = True, add_eos: bool = True, turns: str = "last") -> Examples:
    """Tokenise every row of ``table`` for supervised fine-tuning (see the module docstring)."""
    if turns not in TRAIN_TURNS:
        raise ConfigError(f"The 'turns' parameter of training must be one of {', '.join(TRAIN_TURNS)} "
                          f"(one supervised response per row). Got {turns!r}.")
    units, owner = render_units(table, template, turns, tokenizer)
    sp = build_spans(tokenizer, units, max_length, "offsets", template) if units else None
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ConfigError("add_eos=True needs a tokenizer with an end-of-sequence token; this one has none. "
                          "Pass add_eos=False.")
    out = Examples([], [], [], np.zeros(0, dtype=np.int64))
    has_unit = np.zeros(len(table), dtype=bool)
    has_unit[owner] = True
    kept = []
    for u, r in enumerate(owner):                   # one unit per row (turns is last/first)
        if sp.status[u] != OK:
            out.skipped[int(r)] = sp.status[u]
            continue
        ids, (start, end) = sp.cond_ids[u], sp.cond_span[u]
        # The scorer cuts the sequence right after the kept response; a room left below max_length
        # means the whole response fits, so the end-of-sequence token can follow it.
        if add_eos and len(ids) < max_length:
            ids = np.append(ids, np.int64(eos))
        labels = ids.copy() if not mask_prompt else np.full(len(ids), IGNORE, dtype=np.int64)
        if mask_prompt:
            labels[start:] = ids[start:]            # response span (+ eos); prompt stays IGNORE
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.span.append((int(start), int(end)))
        kept.append(int(r))
    for r in np.flatnonzero(~has_unit):
        out.skipped[int(r)] = "no assistant turn"
    out.rows = np.asarray(kept, dtype=np.int64)
    return out
