"""Hugging Face causal-LM backend: the one place that batches, pads and runs a causal LM.

``token_nll`` returns, for each sequence, the negative log-likelihood (nats) of the tokens in a
half-open span [start, end), token j predicted from position j-1:
  - requests are sorted by length and packed into batches under a token budget
    (padded_length x batch_size <= max_batch_tokens), then results are put back in input order;
  - the decoder runs once per batch; the output head (vocabulary projection) is applied only to the
    hidden states that predict a scored token, in chunks, instead of to every position;
  - padding side is configurable; position ids are derived from the attention mask, so left and right
    padding give the same numbers.
The same pass can return pooled last-layer hidden states (mean over tokens, or the last token).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from thresher.errors import ConfigError
from thresher.models import bundled

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class NLLResult:
    nll: list[np.ndarray]              # per sequence: float64 NLL of each span token
    embeddings: np.ndarray | None      # (N, hidden) pooled last-layer states, when asked
    n_tokens: int                      # real (unpadded) tokens run through the model


class HFCausalLM:
    """A causal LM from a hub id, a local path, or the bundled SmolLM2 (``"bundled"``).

    Cheap to construct; ``setup()`` loads weights (called lazily by every method).
    """

    def __init__(self, model: str = "bundled", *, device: str = "auto", dtype: str = "auto",
                 max_batch_tokens: int | None = None, max_batch_size: int = 64, padding_side: str = "right",
                 head_chunk: int = 2048):
        if dtype not in DTYPES:
            raise ConfigError(f"The 'dtype' parameter must be one of {', '.join(DTYPES)}. Got {dtype!r}.")
        if padding_side not in ("left", "right"):
            raise ConfigError(f"The 'padding_side' parameter must be 'left' or 'right'. Got {padding_side!r}.")
        self.model_spec, self.device_spec, self.dtype_spec = str(model), device, dtype
        self.max_batch_tokens_spec, self.max_batch_size = max_batch_tokens, int(max_batch_size)
        self.max_batch_tokens = int(max_batch_tokens or 4096)
        self.padding_side, self.head_chunk = padding_side, int(head_chunk)
        self.model = self.tokenizer = self.device = self.dtype = None

    # ---------------------------------------------------------------- loading
    @property
    def is_bundled(self) -> bool:
        return self.model_spec in bundled.BUNDLED_ALIASES

    def identity(self) -> str:
        """Stable identity for cache fingerprints (no weights loaded)."""
        if self.is_bundled:
            return bundled.bundled_identity()
        from pathlib import Path
        p = Path(self.model_spec)
        if p.exists():
            files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
            sig = ",".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files)
            return f"path:{p.resolve()}:{sig}"
        return f"hub:{self.model_spec}"

    def setup(self) -> "HFCausalLM":
        if self.model is not None:
            return self
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = self._pick_device(torch)
        self.dtype = self._pick_dtype(torch)
        # A CPU is compute-bound at small batches (bigger ones only add padding); a GPU needs big ones.
        if self.max_batch_tokens_spec is None:
            self.max_batch_tokens = 32768 if self.device.type == "cuda" else 4096
        src = str(bundled.converted_model_dir()) if self.is_bundled else self.model_spec
        try:
            self.tokenizer_only()
            self.model = AutoModelForCausalLM.from_pretrained(src, dtype=self.dtype)
        except OSError as e:
            raise ConfigError(f"Could not load model {self.model_spec!r}: {e}. Pass a local path, 'bundled', "
                              "or a hub id on a machine that can reach the hub.") from None
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        log.info("loaded %s on %s as %s", self.model_spec, self.device, self.dtype)
        return self

    def tokenizer_only(self):
        """The tokenizer without loading weights (length scorers, validation)."""
        if self.tokenizer is None:
            from transformers import AutoTokenizer
            src = str(bundled.converted_model_dir()) if self.is_bundled else self.model_spec
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(src)
            except OSError as e:
                raise ConfigError(f"Could not load the tokenizer of {self.model_spec!r}: {e}") from None
        return self.tokenizer

    def _pick_device(self, torch):
        if self.device_spec == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device_spec)

    def _pick_dtype(self, torch):
        if self.dtype_spec == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        return getattr(torch, self.dtype_spec)

    # ---------------------------------------------------------------- batching
    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Length-sorted (longest first) index batches under the token budget."""
        order = np.argsort(-lengths, kind="stable")
        batches, cur = [], []
        for i in order:                       # O(N) bookkeeping, no tensor work
            width = int(lengths[cur[0]]) if cur else int(lengths[i])
            if cur and (width * (len(cur) + 1) > self.max_batch_tokens or len(cur) >= self.max_batch_size):
                batches.append(np.array(cur))
                cur = []
            cur.append(i)
        if cur:
            batches.append(np.array(cur))
        return batches

    def _pad(self, seqs: list[np.ndarray], torch):
        """Pad a batch; returns input_ids, attention_mask, position_ids (B, L) and per-row offsets."""
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        offs = np.zeros(len(seqs), dtype=np.int64)
        for r, s in enumerate(seqs):
            off = width - len(s) if self.padding_side == "left" else 0
            ids[r, off: off + len(s)], mask[r, off: off + len(s)], offs[r] = s, 1, off
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        to = lambda a: torch.from_numpy(a).to(self.device)
        return to(ids), to(mask), to(pos), offs

    # ---------------------------------------------------------------- scoring
    def token_nll(self, seqs: list, spans: list[tuple[int, int]], *, pool: str | None = None) -> NLLResult:
        """Per-token NLL of span tokens; optionally pooled last-layer states ("mean" or "last")."""
        import torch

        self.setup()
        seqs = [np.asarray(s, dtype=np.int64) for s in seqs]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        out: list[np.ndarray] = [np.zeros(0)] * len(seqs)
        emb = None
        with torch.inference_mode():
            for b in self._batches(lengths):
                nll, pooled = self._run_batch([seqs[i] for i in b], [spans[i] for i in b], pool, torch)
                for j, i in enumerate(b):
                    out[i] = nll[j]
                if pooled is not None:
                    if emb is None:
                        emb = np.zeros((len(seqs), pooled.shape[1]), dtype=np.float32)
                    emb[b] = pooled
        return NLLResult(out, emb, int(lengths.sum()))

    def _decoder(self):
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model

    def _run_batch(self, seqs, spans, pool, torch):
        ids, mask, pos, offs = self._pad(seqs, torch)
        hidden = self._decoder()(input_ids=ids, attention_mask=mask, position_ids=pos,
                                 use_cache=False).last_hidden_state            # (B, L, H)
        starts = np.array([s for s, _ in spans], dtype=np.int64)
        counts = np.array([max(e - s, 0) for s, e in spans], dtype=np.int64)
        rows = np.repeat(np.arange(len(seqs)), counts)                        # (M,)
        tok = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)]) if counts.sum() else \
            np.zeros(0, dtype=np.int64)
        cols = tok + offs[rows]                                                # padded column of each target
        r_t, c_t = torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device)
        states = hidden[r_t, c_t - 1]                                          # (M, H) predictors
        targets = ids[r_t, c_t]                                                # (M,)
        nll = self._head_nll(states, targets, torch).double().cpu().numpy()
        per_seq = np.split(nll, np.cumsum(counts)[:-1])
        pooled = self._pool(hidden, mask, pool, torch) if pool else None
        return per_seq, pooled

    def _head_nll(self, states, targets, torch):
        """Output head + cross-entropy only on the needed rows, chunked to bound memory."""
        head = self.model.get_output_embeddings()
        parts = []
        for a in range(0, states.shape[0], self.head_chunk):
            logits = self._logits(head(states[a: a + self.head_chunk])).float()   # (m, V)
            parts.append(torch.nn.functional.cross_entropy(logits, targets[a: a + self.head_chunk],
                                                           reduction="none"))
        return torch.cat(parts) if parts else torch.zeros(0)

    def _logits(self, logits):
        """Apply the architecture's final logit transforms, if any (e.g. Gemma-2 soft-capping)."""
        cfg = self.model.config
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = (logits / cap).tanh() * cap
        scale = getattr(cfg, "logit_scale", None)
        if isinstance(scale, (int, float)) and scale != 1:
            logits = logits * scale
        return logits

    @staticmethod
    def _pool(hidden, mask, pool, torch):
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if pool == "mean":
            vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        elif pool == "last":
            last = mask.shape[1] - 1 - torch.flip(mask, [1]).argmax(1)        # last real token per row
            vec = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            raise ConfigError(f"The 'pool' parameter must be 'mean' or 'last'. Got {pool!r}.")
        return vec.float().cpu().numpy()

    def embed_texts(self, texts: list[str], *, pool: str = "mean", max_length: int = 512) -> np.ndarray:
        """Pooled last-layer hidden states of whole texts (DEITA uses "last", Cherry "mean")."""
        self.setup()
        enc = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)
        seqs = [np.asarray(x) for x in enc["input_ids"]]
        return self.token_nll(seqs, [(0, 0)] * len(seqs), pool=pool).embeddings
