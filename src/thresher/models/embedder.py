"""Sentence-embedding backend (sentence-transformers), bundled all-MiniLM-L6-v2 by default."""

from __future__ import annotations

import numpy as np

from thresher.errors import ConfigError
from thresher.models import bundled, fingerprint
from thresher.progress import count_model


class SentenceEmbedder:
    """``embed(texts) -> (N, d)`` L2-normalised float32 embeddings. ``setup()`` loads lazily."""

    def __init__(self, model: str = bundled.BUNDLED_EMBEDDER, *, device: str = "auto", batch_size: int = 32,
                 max_length: int | None = 256):
        self.model_spec, self.device_spec = model, device
        self.batch_size, self.max_length = int(batch_size), max_length
        self.model = None
        self._ident: fingerprint.Identity | None = None

    def identity(self) -> str:
        """Identity for cache keys (``thresher.models.fingerprint``): the bundled model's content hash, a
        local folder's content hash, a hub id's resolved commit; once loaded, what was loaded."""
        return self._resolve().text

    def _resolve(self) -> fingerprint.Identity:
        if self._ident is None or (self.model is None and self._ident.revision is None):
            if self.model_spec == bundled.BUNDLED_EMBEDDER:
                self._ident = fingerprint.Identity(fingerprint.bundled_embedder_identity())
            else:
                self._ident = fingerprint.identify(self._hub_name(self.model_spec))
        return self._ident

    @staticmethod
    def _hub_name(spec: str) -> str:
        # sentence-transformers reads a short name ("all-MiniLM-L6-v2") as one of its own models, except
        # the original transformers names on its list; the identity must name the repository it loads.
        from pathlib import Path
        if "/" in spec or Path(spec).is_dir():
            return spec
        from sentence_transformers.util.misc import ORIGINAL_TRANSFORMER_MODELS
        return spec if spec.lower() in ORIGINAL_TRANSFORMER_MODELS else f"sentence-transformers/{spec}"

    def setup(self) -> "SentenceEmbedder":
        if self.model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            ident = self._resolve()
            if self.model_spec == bundled.BUNDLED_EMBEDDER:
                src = str(bundled.embedder_path())
            else:
                src = self._hub_name(self.model_spec)
            device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device_spec == "auto" else self.device_spec
            try:
                self.model = SentenceTransformer(src, device=device, revision=ident.revision)
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
        count_model(-(-len(texts) // self.batch_size))            # batches through the encoder
        out = np.empty_like(vecs)
        out[order] = vecs
        return out.astype(np.float32)
