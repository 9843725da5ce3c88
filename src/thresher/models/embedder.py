"""Sentence-embedding backend (sentence-transformers), bundled all-MiniLM-L6-v2 by default."""

from __future__ import annotations

import numpy as np

from thresher.errors import ConfigError
from thresher.models import bundled


class SentenceEmbedder:
    """``embed(texts) -> (N, d)`` L2-normalised float32 embeddings. ``setup()`` loads lazily."""

    def __init__(self, model: str = bundled.BUNDLED_EMBEDDER, *, device: str = "auto", batch_size: int = 32,
                 max_length: int | None = 256):
        self.model_spec, self.device_spec = model, device
        self.batch_size, self.max_length = int(batch_size), max_length
        self.model = None

    def identity(self) -> str:
        return "bundled:all-MiniLM-L6-v2" if self.model_spec == bundled.BUNDLED_EMBEDDER else self.model_spec

    def setup(self) -> "SentenceEmbedder":
        if self.model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            src = str(bundled.embedder_path()) if self.model_spec == bundled.BUNDLED_EMBEDDER else self.model_spec
            device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device_spec == "auto" else self.device_spec
            try:
                self.model = SentenceTransformer(src, device=device)
            except OSError as e:
                raise ConfigError(f"Could not load sentence embedder {self.model_spec!r}: {e}") from None
            if self.max_length:
                self.model.max_seq_length = self.max_length
        return self

    def embed(self, texts: list[str]) -> np.ndarray:
        self.setup()
        # Sort by length so each batch pads little; restore order afterwards.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        vecs = self.model.encode([texts[i] for i in order], batch_size=self.batch_size,
                                 normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        out = np.empty_like(vecs)
        out[order] = vecs
        return out.astype(np.float32)
