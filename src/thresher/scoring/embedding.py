"""Sample embeddings for diversity, k-NN rareness and curation (METHODS.md 0.5 item 4).

backend "sentence": a sentence-transformers model (default the bundled all-MiniLM-L6-v2, as
  Superfiltering.D; DS2 used bge-large-en-v1.5 where the hub is reachable), L2-normalised.
backend "lm": last-layer hidden states of the run's causal LM, pooled "last" (the last real token, as
  DEITA) or "mean" (as Cherry), then L2-normalised.
text: which view of the sample is embedded:
  whole        instruction (+ input) + response (Superfiltering.D)
  instruction  the prompt side only
  response     the response only
  conversation DS2's feature text, "###{role}: {content}\\n" per message (no space after ###)
Output column ``embedding``: one float32 unit vector per row. Not a score: no direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thresher.config import choice, option
from thresher.data import split_turns
from thresher.data.table import Dataset
from thresher.data.templates import instruction_and_input
from thresher.scoring.base import Scorer


@dataclass
class EmbeddingParams:
    backend: str = choice("sentence", "sentence", "lm",
                          help="sentence: a sentence-transformers model; lm: the run's causal LM's last hidden layer")
    model: str | None = option(None, help="sentence backend: a sentence-transformers id or path (null: the bundled "
                                          "all-MiniLM-L6-v2, as Superfiltering.D; DS2 used bge-large-en-v1.5)")
    text: str = choice("whole", "whole", "instruction", "response", "conversation",
                       help="what is embedded: instruction (+ input) + response, one side, or DS2's "
                            "'###{role}: {content}' conversation text")
    pool: str = choice("last", "last", "mean", help="lm backend: the last real token's state (DEITA) or the mean "
                                                    "over tokens (Cherry)")
    max_length: int = option(256, help="tokens per text; longer texts are cut (all-MiniLM-L6-v2 was trained at 256)")
    turns: str = choice("last", "last", "first", help="which assistant turn of a multi-turn row is embedded")


def sample_text(messages: list[dict], meta: dict, turns: str, view: str) -> str:
    units = split_turns(messages, turns)
    context, response = units[0] if units else (messages, "")
    if view == "conversation":
        shown = context + ([{"role": "assistant", "content": response}] if units else [])
        return "".join(f"###{m['role']}: {m['content']}\n" for m in shown)
    ins, inp = instruction_and_input(context, meta) if context else ("", "")
    prompt = f"{ins}\n{inp}" if inp else ins
    return {"instruction": prompt, "response": response, "whole": f"{prompt}\n{response}"}[view]


class EmbeddingScorer(Scorer):
    """Unit-norm embedding of each sample (sentence embedder or the LM's hidden states)."""

    name = "embedding"
    version = "1"
    Params = EmbeddingParams
    main_column = "embedding"
    higher_is_better = None
    produces = {"embedding": "float32 unit vector per row (not a score)"}

    @property
    def uses(self):
        return ("lm",) if self.params.backend == "lm" else ()

    def model_identity(self, ctx) -> str:
        if self.params.backend == "lm":
            return f"{ctx.lm().identity()}|dtype={ctx.dtype}"
        return ctx.embedder(self.params.model).identity()

    def score_batch(self, rows: Dataset) -> dict[str, np.ndarray]:
        p = self.params
        texts = [sample_text(m, meta, p.turns, p.text) for m, meta in zip(rows.messages, rows.meta)]
        if p.backend == "lm":
            lm = self.ctx.lm().setup()
            vecs = lm.embed_texts(texts, pool=p.pool, max_length=p.max_length)
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        else:
            emb = self.ctx.embedder(p.model).setup()
            emb.model.max_seq_length = p.max_length
            vecs = emb.embed(texts)
        return {"embedding": list(vecs.astype(np.float32))}
