"""Hugging Face causal-LM backend: the one place that batches, pads and runs a causal LM.

``token_nll`` returns, for each sequence, the negative log-likelihood (nats) of the tokens in a
half-open span [start, end), token j predicted from position j-1:
  - requests are sorted by length and packed into batches under a token budget
    (padded_length x batch_size <= max_batch_tokens), then results are put back in input order;
  - the decoder runs once per batch; the output head (vocabulary projection) is applied only to the
    hidden states that predict a scored token, instead of to every position, in vocabulary slices
    with an online log-sum-exp (``_head_nll``);
  - padding side is configurable; position ids are derived from the attention mask, so left and right
    padding give the same numbers;
  - on a CPU, batches run in worker threads, one core each (see ``_cpu_workers``), and the linear layers
    and the head's slices run through oneDNN with packed weights (thresher.models.cpu_gemm).
The same pass can return pooled last-layer hidden states (mean over tokens, or the last token).

``next_token_logprobs`` scores a few candidate next tokens after each prompt (logit-based judges:
one forward per batch, output head on the last real position of each row only). ``generate`` is
batched greedy or seeded sampling with a KV cache, left padding, per-row stop and per-row limits;
rows that finish leave the batch so they stop costing compute.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from thresher.errors import ConfigError
from thresher.models import bundled, cpu_gemm as gemm, fingerprint
from thresher.progress import count_model

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
# CPU token budget per forward batch. On a CPU batching pays only for short sequences: measured on the
# bundled model, 64-token rows ran 1.6x faster per row in batches of 4-8, while two 500-token rows in one
# batch ran 25 % slower per row than one at a time. 768 keeps long rows alone and packs short ones; with
# the per-core worker threads, 512 / 768 / 1024 / 1536 scored 64 ShareGPT pairs in 25.6 / 26.3 / 26.3 /
# 27.9 s (flat within noise; 4096 was 0.93x the naive loop before the workers).
CPU_BATCH_TOKENS = 768
# Generation on a CPU: decode steps are one token per row, so more rows per batch is what pays.
CPU_GENERATION_BATCH_TOKENS = 4096


@dataclass
class NLLResult:
    nll: list[np.ndarray]              # per sequence: float64 NLL of each span token
    embeddings: np.ndarray | None      # (N, hidden) pooled last-layer states, when asked
    n_tokens: int                      # real (unpadded) tokens run through the model


class HFCausalLM:
    """A causal LM from a hub id, a local path, or the bundled SmolLM2 (``"bundled"``).

    Cheap to construct; ``setup()`` loads weights (called lazily by every method).
    """

    batches_run: int = 0    # forward / generation batches run by next_token_logprobs and generate

    def __init__(self, model: str = "bundled", *, device: str = "auto", dtype: str = "auto",
                 max_batch_tokens: int | None = None, max_batch_size: int = 64, padding_side: str = "right",
                 head_chunk: int | None = None, vocab_chunk: int | None = None, cpu_gemm: str | None = None):
        if dtype not in DTYPES:
            raise ConfigError(f"The 'dtype' parameter must be one of {', '.join(DTYPES)}. Got {dtype!r}.")
        if padding_side not in ("left", "right"):
            raise ConfigError(f"The 'padding_side' parameter must be 'left' or 'right'. Got {padding_side!r}.")
        if cpu_gemm is not None and cpu_gemm not in gemm.CHOICES:
            raise ConfigError(f"The 'cpu_gemm' parameter must be one of {', '.join(gemm.CHOICES)}. Got {cpu_gemm!r}.")
        self.model_spec, self.device_spec, self.dtype_spec = str(model), device, dtype
        self.max_batch_tokens_spec, self.max_batch_size = max_batch_tokens, int(max_batch_size)
        self.max_batch_tokens = int(max_batch_tokens or CPU_BATCH_TOKENS)
        self.padding_side = padding_side
        self.head_chunk = head_chunk          # rows per head pass; None: 1024 on a CPU, 8192 on a GPU
        self.vocab_chunk = vocab_chunk        # None: 2048 on a CPU, 16384 on a GPU (see _head_nll)
        self.cpu_gemm_spec = cpu_gemm         # auto | onednn | torch (thresher.models.cpu_gemm); None: $THRESHER_CPU_GEMM
        self.cpu_gemm = None                  # the path in use once loaded: "onednn", "torch" (None off the CPU)
        self._head_slices = gemm.PackedSlices()    # the output head's vocabulary slices, packed for oneDNN
        self.model = self.tokenizer = self.device = self.dtype = None
        self._ident: fingerprint.Identity | None = None     # see identity()

    # ---------------------------------------------------------------- loading
    @property
    def is_bundled(self) -> bool:
        return self.model_spec in bundled.BUNDLED_ALIASES

    def identity(self) -> str:
        """Identity for cache keys, without loading weights (``thresher.models.fingerprint``): the bundled
        GGUF's package version and content hash, a hub id's resolved commit, a local folder's content
        hash. Once the weights are loaded, the identity they were loaded under."""
        if getattr(self, "_identity", None):
            return self._identity
        return self._resolve().text

    def _resolve(self) -> fingerprint.Identity:
        # A hub id is resolved once per backend (a request to the hub) and then loaded at that commit; a
        # local folder is re-checked until its weights are loaded (the side cache makes that a few stats).
        if self._ident is None or (self.model is None and self._ident.revision is None):
            self._ident = (fingerprint.Identity(fingerprint.bundled_lm_identity()) if self.is_bundled
                           else fingerprint.identify(self.model_spec))
        return self._ident

    def source(self) -> tuple[str, dict]:
        """What ``from_pretrained`` loads: a folder or hub id, and keyword arguments (``revision``: the
        commit ``identity()`` names, so the weights loaded are the ones the cache keys describe)."""
        from pathlib import Path
        if self.is_bundled:
            return str(bundled.converted_model_dir()), {}
        if Path(self.model_spec).is_dir():
            return self.model_spec, {}
        return self.model_spec, {"revision": self._resolve().revision}

    @classmethod
    def from_model(cls, model, tokenizer, *, identity: str, max_batch_tokens: int | None = None,
                   max_batch_size: int = 64) -> "HFCausalLM":
        """Wrap a model that is already loaded (e.g. the model being trained, LoRA included) so that
        scorers can run on it; ``identity`` names it in cache keys and logs. The model is used as it is:
        its device and dtype, and whatever train/eval mode the caller sets."""
        lm = cls(f"live:{identity}", max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size)
        p = next(model.parameters())
        lm.model, lm.tokenizer, lm.device, lm.dtype = model, tokenizer, p.device, p.dtype
        if max_batch_tokens is None:
            lm.max_batch_tokens = 32768 if p.device.type == "cuda" else CPU_BATCH_TOKENS
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        lm._identity = f"live:{identity}"
        return lm

    def setup(self) -> "HFCausalLM":
        if self.model is not None:
            return self
        import torch
        from transformers import AutoModelForCausalLM

        self.device = self._pick_device(torch)
        self.dtype = self._pick_dtype(torch)
        # A CPU is compute-bound at small batches (bigger ones only add padding); a GPU needs big ones.
        if self.max_batch_tokens_spec is None:
            self.max_batch_tokens = 32768 if self.device.type == "cuda" else CPU_BATCH_TOKENS
        self._resolve()                       # the identity of what is loaded now
        src, kw = self.source()
        try:
            self.tokenizer_only()
            self.model = AutoModelForCausalLM.from_pretrained(src, dtype=self.dtype, **kw)
        except OSError as e:
            raise ConfigError(f"Could not load model {self.model_spec!r}: {e}. Pass a local path, 'bundled', "
                              "or a hub id on a machine that can reach the hub.") from None
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.device.type == "cpu":
            self.cpu_gemm = gemm.choose(self.cpu_gemm_spec, torch)
            if self.cpu_gemm == "onednn":
                gemm.pack_linears(self.model)
        log.info("loaded %s on %s as %s%s", self.model_spec, self.device, self.dtype,
                 f" (CPU GEMMs: {self.cpu_gemm})" if self.cpu_gemm else "")
        return self

    def tokenizer_only(self):
        """The tokenizer without loading weights (length scorers, validation)."""
        if self.tokenizer is None:
            from transformers import AutoTokenizer
            src, kw = self.source()
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(src, **kw)
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
        lens = np.array([len(s) for s in seqs], dtype=np.int64)
        width = int(lens.max())
        offs = width - lens if self.padding_side == "left" else np.zeros(len(seqs), dtype=np.int64)
        col = np.arange(width)
        real = (col >= offs[:, None]) & (col < (offs + lens)[:, None])       # (B, L) real-token cells
        ids = np.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=np.int64)
        ids[real] = np.concatenate(seqs)      # row-major order of the real cells = the rows, concatenated
        mask = real.astype(np.int64)
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        return self._to_device(ids, torch), self._to_device(mask, torch), self._to_device(pos, torch), offs

    def _to_device(self, a: np.ndarray, torch):
        """A host array on the model's device. To a GPU the copy goes through pinned memory and does not
        block: a plain copy from pageable memory waits for every kernel queued before it, which would stall
        the host between batches instead of letting it queue the next one."""
        t = torch.from_numpy(a)
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    # ---------------------------------------------------------------- scoring
    def token_nll(self, seqs: list, spans: list[tuple[int, int]], *, pool: str | None = None) -> NLLResult:
        """Per-token NLL of span tokens; optionally pooled last-layer states ("mean" or "last")."""
        import torch

        self.setup()
        seqs = [np.asarray(s, dtype=np.int64) for s in seqs]
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        out: list[np.ndarray] = [np.zeros(0)] * len(seqs)
        pooled_parts: list[tuple[np.ndarray, np.ndarray]] = []
        batches = self._batches(lengths)
        # On a GPU the NLLs stay on the device until every batch is queued (one copy back at the end), so
        # the host never waits for a batch to finish before it launches the next one.
        pending = [] if self.device.type == "cuda" else None

        def store(b, nll):                    # nll: float64 span NLLs of batch b's rows, concatenated
            counts = [max(spans[i][1] - spans[i][0], 0) for i in b]
            for i, part in zip(b, np.split(nll, np.cumsum(counts)[:-1])):
                out[i] = part

        def run(b):                           # each batch writes only its own rows: safe from worker threads
            nll, pooled = self._run_batch([seqs[i] for i in b], [spans[i] for i in b], pool, torch)
            if pending is None:
                store(b, nll.double().cpu().numpy())
            else:
                pending.append((b, nll))
            if pooled is not None:
                pooled_parts.append((b, pooled))

        workers = self._cpu_workers(len(batches), torch)
        if workers > 1:
            _in_worker_threads(batches, run, workers, torch)
        else:
            with torch.inference_mode():
                for b in batches:
                    run(b)
                if pending:                   # the batches' rows in order, their NLLs concatenated alike
                    store(np.concatenate([b for b, _ in pending]),
                          torch.cat([nll for _, nll in pending]).double().cpu().numpy())
        emb = None
        if pooled_parts:
            emb = np.zeros((len(seqs), pooled_parts[0][1].shape[1]), dtype=np.float32)
            for b, pooled in pooled_parts:
                emb[b] = pooled
        count_model(len(batches), int(lengths.sum()))
        return NLLResult(out, emb, int(lengths.sum()))

    def _cpu_workers(self, n_batches: int, torch) -> int:
        """Worker threads for scoring on a CPU: one per intra-op thread, each running whole batches on one
        core. Small ops (norms, rotary, attention on short rows) scale badly across cores and every op ends
        in a barrier that stalls when another process takes a core; whole batches per core avoid both
        (measured on 2 cores: same numbers bit for bit, 1.05x quiet, up to ~2x with other jobs running)."""
        if self.device.type != "cpu" or n_batches < 2:
            return 1
        return max(1, min(torch.get_num_threads(), n_batches))

    def _decoder(self):
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model

    def _run_batch(self, seqs, spans, pool, torch):
        ids, mask, pos, offs = self._pad(seqs, torch)
        # With right padding every pad token comes after a row's real tokens, so under the causal mask no
        # real position ever attends to one: the outputs at real positions are exact without a padding
        # mask, and leaving it out lets attention take its fused causal kernel instead of the masked
        # path (measured several times slower on CPU). Left padding needs the mask.
        attn = mask if self.padding_side == "left" else None
        hidden = self._decoder()(input_ids=ids, attention_mask=attn, position_ids=pos,
                                 use_cache=False).last_hidden_state            # (B, L, H)
        starts = np.array([s for s, _ in spans], dtype=np.int64)
        counts = np.array([max(e - s, 0) for s, e in spans], dtype=np.int64)
        rows = np.repeat(np.arange(len(seqs)), counts)                        # (M,)
        first = np.repeat(np.cumsum(counts) - counts, counts)                  # (M,) index of a row's first target
        tok = np.repeat(starts, counts) + np.arange(counts.sum()) - first     # (M,) target column, unpadded
        cols = tok + offs[rows]                                                # padded column of each target
        r_t, c_t = self._to_device(rows, torch), self._to_device(cols, torch)
        states = hidden[r_t, c_t - 1]                                          # (M, H) predictors
        targets = ids[r_t, c_t]                                                # (M,)
        nll = self._head_nll(states, targets, torch)                          # (M,) float32, on the device
        pooled = self._pool(hidden, mask, pool, torch) if pool else None
        return nll, pooled

    def _head_nll(self, states, targets, torch):
        """Output head + cross-entropy on the needed rows only: -log softmax(W h)[target] per row.

        A plain linear head is run in vocabulary slices with an online log-sum-exp (running max and
        rescaled sum), so the (rows x vocabulary) logits never exist at once: each slice stays in cache
        while it is exponentiated and summed, and one reused buffer replaces a fresh 50 MB+ allocation
        per chunk (measured on the bundled model's 49,152-token head, CPU: 1.6-1.9x the full-logits
        cross-entropy; benchmarks/ifd_throughput.py). The target's logit is its own dot product.
        Other heads (e.g. quantised modules) take full-vocabulary chunks and ``cross_entropy``.
        """
        head = self.model.get_output_embeddings()
        rows = self.head_chunk or (1024 if states.device.type == "cpu" else 8192)
        if type(head) is not torch.nn.Linear:
            parts = [torch.nn.functional.cross_entropy(self._logits(head(states[a: a + rows])).float(),
                                                       targets[a: a + rows], reduction="none")
                     for a in range(0, states.shape[0], rows)]
            return torch.cat(parts) if parts else torch.zeros(0, device=states.device)
        w, bias = head.weight, head.bias
        vocab = w.shape[0]
        vslice = self.vocab_chunk or (2048 if w.device.type == "cpu" else 16384)
        packed = None
        if self.cpu_gemm == "onednn" and w.device.type == "cpu" and w.dtype == states.dtype:
            packed = self._head_slices.get(w, vslice)
        parts = []
        for a in range(0, states.shape[0], rows):
            x, y = states[a: a + rows], targets[a: a + rows]
            # float32 product and sum: rounding the target's logit to bfloat16 (~0.03 at a logit of 10) would
            # add to the NLL's error; measured on the bundled model, bfloat16 vs float32 max |loss_cond| difference
            # 0.016 -> 0.012, median 0.0035 -> 0.0026 (48 ShareGPT pairs, CPU). A no-op in float32.
            target_logit = (x.float() * w[y].float()).sum(1)                           # (m,) float32
            if bias is not None:
                target_logit = target_logit + bias[y]
            target_logit = self._logits(target_logit.float())
            if packed is not None:
                x = x.contiguous()
            else:
                buf = torch.empty(x.shape[0] * min(vslice, vocab), dtype=w.dtype, device=w.device)
            run_max = torch.full((x.shape[0],), float("-inf"), device=w.device)       # float32 (m,)
            run_sum = torch.zeros(x.shape[0], device=w.device)
            for k, v in enumerate(range(0, vocab, vslice)):
                ws = w[v: v + vslice]
                if packed is not None:                                                 # oneDNN, see cpu_gemm
                    logits = gemm.linear(x, packed[k])
                else:
                    logits = torch.mm(x, ws.t(), out=buf[: x.shape[0] * ws.shape[0]].view(x.shape[0], ws.shape[0]))
                if bias is not None:
                    logits.add_(bias[v: v + vslice])
                logits = self._logits(logits.float())                                  # (m, slice)
                new_max = torch.maximum(run_max, logits.amax(1))
                run_sum.mul_((run_max - new_max).exp_()).add_(logits.sub_(new_max[:, None]).exp_().sum(1))
                run_max = new_max
            parts.append(run_max + run_sum.log() - target_logit)
        return torch.cat(parts) if parts else torch.zeros(0, device=states.device)

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

    # ---------------------------------------------------------------- next token and generation
    @contextmanager
    def overrides(self, *, max_batch_tokens: int | None = None, max_batch_size: int | None = None,
                  padding_side: str | None = None):
        """Temporarily change batching settings (None keeps the current one); restored on exit."""
        new = {"max_batch_tokens": max_batch_tokens, "max_batch_size": max_batch_size,
               "padding_side": padding_side}
        new = {k: v for k, v in new.items() if v is not None}
        if new.get("padding_side", "left") not in ("left", "right"):
            raise ConfigError(f"The 'padding_side' parameter must be 'left' or 'right'. Got {padding_side!r}.")
        for k in ("max_batch_tokens", "max_batch_size"):
            if k in new and (not isinstance(new[k], (int, np.integer)) or new[k] < 1):
                raise ConfigError(f"The '{k}' parameter must be an int >= 1. Got {new[k]!r}.")
        old = {k: getattr(self, k) for k in new}
        try:
            for k, v in new.items():
                setattr(self, k, v)
            yield self
        finally:
            for k, v in old.items():
                setattr(self, k, v)

    def _check_prompts(self, prompts_ids) -> list[np.ndarray]:
        seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in prompts_ids]
        empty = [i for i, s in enumerate(seqs) if len(s) == 0]
        if empty:
            raise ConfigError(f"Prompt {empty[0]} is empty; every prompt needs at least one token.")
        return seqs

    def next_token_logprobs(self, prompts_ids: list, candidate_token_ids) -> np.ndarray:
        """log p(candidate | prompt) for the token right after each prompt: (N, K) float64, each <= 0.

        Normalised over the full vocabulary, so exp(row).sum() <= 1 is the probability mass the model
        puts on the candidates. One decoder pass per length-sorted batch; the output head runs only on
        the last real position of each row. Padding side and batch size do not change the numbers
        (position ids come from the attention mask).
        """
        import torch

        self.setup()
        seqs = self._check_prompts(prompts_ids)
        cand = np.asarray(candidate_token_ids, dtype=np.int64).reshape(-1)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if cand.size == 0 or cand.min() < 0 or cand.max() >= vocab:
            raise ConfigError(f"The 'candidate_token_ids' parameter must be a non-empty list of token ids in "
                              f"[0, {vocab}). Got {cand.tolist()}.")
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        out = np.zeros((len(seqs), cand.size), dtype=np.float64)
        cand_t = torch.from_numpy(cand).to(self.device)
        with torch.inference_mode():
            for b in self._batches(lengths):
                ids, mask, pos, offs = self._pad([seqs[i] for i in b], torch)
                hidden = self._decoder()(input_ids=ids, attention_mask=mask, position_ids=pos,
                                         use_cache=False).last_hidden_state            # (B, L, H)
                last = torch.from_numpy(offs + lengths[b] - 1).to(self.device)        # (B,) last real column
                states = hidden[torch.arange(len(b), device=self.device), last]      # (B, H)
                logits = self._logits(self.model.get_output_embeddings()(states))    # (B, V)
                logp = torch.log_softmax(logits.double(), dim=-1)
                out[b] = logp[:, cand_t].cpu().numpy()                               # (B, K)
                self.batches_run += 1
                count_model(1, int(lengths[b].sum()))
        return out

    def stop_token_ids(self) -> list[int]:
        """End-of-sequence ids: the tokenizer's eos plus the generation config's (may be several)."""
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        return sorted(int(i) for i in ids if i is not None)

    def generate(self, prompts_ids: list, *, max_new_tokens, temperature=0.0, top_p=1.0, seed=None,
                 stop_ids=None) -> list[list[int]]:
        """Continue each prompt; returns the new token ids per prompt, in input order, without the stop token.

        ``max_new_tokens``, ``temperature``, ``top_p`` and ``seed`` are one value for all prompts or one
        per prompt. temperature 0 is greedy; otherwise nucleus sampling whose random draws come from a
        per-prompt generator seeded with ``seed`` (a given seed gives the same draws whatever the batch),
        or from torch's global generator when the seed is None. A row stops at any of ``stop_ids``
        (default: ``stop_token_ids()``) or at its own ``max_new_tokens``. Prompts are not truncated: the
        caller keeps prompt + max_new_tokens within the model's context.
        """
        import torch

        self.setup()
        seqs = self._check_prompts(prompts_ids)
        n = len(seqs)
        max_new = _per_row(max_new_tokens, n, "max_new_tokens", int)
        temp = _per_row(temperature, n, "temperature", float)
        top_p = _per_row(top_p, n, "top_p", float)
        seeds = seed if isinstance(seed, (list, tuple, np.ndarray)) else [seed] * n
        if len(seeds) != n:
            raise ConfigError(f"The 'seed' parameter must be one value or one per prompt ({n}). Got {len(seeds)}.")
        if (max_new < 1).any() or (temp < 0).any() or ((top_p <= 0) | (top_p > 1)).any():
            raise ConfigError("generate needs max_new_tokens >= 1, temperature >= 0 and top_p in (0, 1]. "
                              f"Got max_new_tokens={max_new.min()}, temperature={temp.min()}, top_p "
                              f"in [{top_p.min()}, {top_p.max()}].")
        stop = torch.tensor(self.stop_token_ids() if stop_ids is None else list(stop_ids), dtype=torch.long,
                            device=self.device)
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        out: list[list[int]] = [[] for _ in range(n)]
        with torch.inference_mode():
            # The token budget covers the cache the batch grows to (prompt + new tokens).
            for b in self._batches(lengths + max_new):
                rows = self._generate_batch([seqs[i] for i in b], max_new[b], temp[b], top_p[b],
                                            [seeds[i] for i in b], stop, torch)
                for j, i in enumerate(b):
                    out[i] = rows[j]
                self.batches_run += 1
                count_model(1, int(lengths[b].sum()))      # a batch's generation: one pass, its prompt tokens
        return out

    def _generate_batch(self, seqs, max_new, temp, top_p, seeds, stop, torch) -> list[list[int]]:
        with self.overrides(padding_side="left"):          # new tokens append at the same column
            ids, mask, pos, _ = self._pad(seqs, torch)       # (B, L)
        B, T = len(seqs), int(max_new.max())
        uniforms = _row_uniforms(temp, seeds, T, torch)    # (B, T) draws for sampled rows, else None
        gen = torch.full((B, T), -1, dtype=torch.long)     # (B, T) new tokens, -1 = not generated
        alive = torch.arange(B)                            # batch row of each live row
        limit = torch.from_numpy(max_new)
        head, dec = self.model.get_output_embeddings(), self._decoder()
        cache, step_ids, step_pos = None, ids, pos
        kv = _cache_kwarg(dec)
        for t in range(T):
            res = dec(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True, **{kv: cache})
            cache = getattr(res, kv)
            logits = self._logits(head(res.last_hidden_state[:, -1])).float()       # (b, V)
            nxt = _pick(logits, temp[alive.numpy()], top_p[alive.numpy()],
                        None if uniforms is None else uniforms[alive, t], torch)   # (b,)
            gen[alive, t] = nxt.cpu()
            done = torch.isin(nxt, stop).cpu() | (t + 1 >= limit[alive])
            if done.all():
                break
            if done.any():                                 # finished rows leave the batch and the cache
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep.to(self.device))
                alive, nxt, mask = alive[keep], nxt[keep.to(self.device)], mask[keep.to(self.device)]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)      # (b, L + t + 1)
            step_ids, step_pos = nxt[:, None], mask.sum(1, keepdim=True) - 1        # (b, 1) each
        return [_cut(row, stop, int(m)) for row, m in zip(gen.numpy(), max_new)]


def _cache_kwarg(decoder) -> str:
    """The KV-cache argument (and output field) of a decoder's forward: ``cache`` in transformers >= 5.24,
    ``past_key_values`` before (and deprecated after)."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _in_worker_threads(batches: list[np.ndarray], run, workers: int, torch) -> None:
    """Run ``run(batch)`` for every batch from ``workers`` threads with one intra-op thread each (torch
    ops release the GIL); the longest-first order and a shared queue balance the load. The caller's
    thread count is restored afterwards; the first error in a worker is re-raised here."""
    import queue
    import threading

    todo: queue.SimpleQueue = queue.SimpleQueue()
    for b in batches:
        todo.put(b)
    errors: list[BaseException] = []

    def work():
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():          # inference mode is per thread
                while not errors:
                    try:
                        b = todo.get_nowait()
                    except queue.Empty:
                        return
                    run(b)
        except BaseException as e:                # noqa: BLE001 - handed to the caller below
            errors.append(e)

    before = torch.get_num_threads()
    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(before)
    if errors:
        raise errors[0]


def _per_row(value, n: int, name: str, kind) -> np.ndarray:
    """A scalar or one value per prompt, as an (n,) array."""
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, n)
    if arr.size != n or not np.isfinite(arr).all():
        raise ConfigError(f"The '{name}' parameter must be one finite number or one per prompt ({n}). "
                          f"Got {arr.size} values.")
    return arr.astype(np.int64) if kind is int else arr


def _row_uniforms(temp, seeds, steps: int, torch):
    """(B, steps) uniform draws for the sampled rows: from a generator seeded per row, so a row's
    samples do not depend on which other rows share its batch. None when every row is greedy."""
    if not (temp > 0).any():
        return None
    u = torch.zeros((len(temp), steps), dtype=torch.float64)
    for r in np.flatnonzero(temp > 0):                 # once per row and batch, not per step
        g = None if seeds[r] is None else torch.Generator().manual_seed(int(seeds[r]))
        u[r] = torch.rand(steps, generator=g, dtype=torch.float64)
    return u


def _pick(logits, temp, top_p, u, torch):
    """Next token per row: argmax where temperature is 0, else nucleus sampling by inverse CDF."""
    nxt = logits.argmax(-1)                                                   # (b,)
    rows = np.flatnonzero(temp > 0)
    if rows.size:
        r_t = torch.from_numpy(rows).to(logits.device)
        t_t = torch.from_numpy(temp[rows]).to(logits.device, torch.float32)[:, None]
        probs = torch.softmax(logits[r_t] / t_t, dim=-1).double()           # (s, V)
        p_sorted, order = probs.sort(dim=-1, descending=True)
        before = p_sorted.cumsum(-1) - p_sorted                               # mass above each token
        p_sorted = p_sorted.masked_fill(before >= torch.from_numpy(top_p[rows]).to(probs)[:, None], 0.0)
        cdf = p_sorted.cumsum(-1)
        cdf = cdf / cdf[:, -1:]                                               # renormalised nucleus
        draw = u[torch.from_numpy(rows)].to(probs)[:, None]                  # (s, 1)
        kept = (p_sorted > 0).sum(-1, keepdim=True)
        idx = torch.minimum(torch.searchsorted(cdf, draw, right=True), kept - 1)
        nxt[r_t] = order.gather(1, idx).squeeze(1)
    return nxt


def _cut(row: np.ndarray, stop, limit: int) -> list[int]:
    """A row's generated ids up to (not including) its first stop token."""
    row = row[:limit]
    row = row[: np.argmax(row < 0)] if (row < 0).any() else row
    hit = np.flatnonzero(np.isin(row, stop.cpu().numpy()))
    return row[: hit[0]].tolist() if hit.size else row.tolist()
