"""oneDNN-packed linear layers for CPU inference: the model's GEMMs without MKL's generic code path.

torch runs a float32 ``nn.Linear`` on a CPU through MKL's sgemm, which takes a generic code path on this
project's machines (AMD EPYC, Zen 4, AVX-512); oneDNN's brgemm kernels (selected by the CPU's instruction
set, not its vendor) with the weight reordered once into oneDNN's blocked layout are faster: 219 vs 148
GFLOP/s on a 2048 x 2048 product with 2 threads (benchmarks/ifd_throughput.py prints the peak of both, and
IFD scoring with and without this module). Both compute in float32 (oneDNN's default
"strict" math mode); results differ at float32 rounding level (accumulation order), as between thread
counts.

``pack_linears(model)`` gives every ``nn.Linear`` of a model a forward that uses the packed weight when no
gradient is needed (inference mode or no_grad, input on the CPU, same dtype as the weight) and the plain
``F.linear`` otherwise, so a packed model still trains, takes LoRA adapters (PEFT wraps the base layer and
calls it) and backpropagates. The packed copy is rebuilt when the weight changes (a new tensor or an
in-place update: its version counter moves), so it never goes stale. It costs one more copy of the linear
weights in memory.
"""

from __future__ import annotations

import logging
import os

from thresher.errors import ConfigError

log = logging.getLogger(__name__)

CHOICES = ("auto", "onednn", "torch")
ENV = "THRESHER_CPU_GEMM"


def choose(spec: str | None, torch) -> str:
    """The GEMM path for a CPU model: ``spec`` (default: $THRESHER_CPU_GEMM, else auto). ``auto`` = oneDNN
    where torch has it (float32/bfloat16), else torch's default."""

    spec = spec or os.environ.get(ENV) or "auto"
    if spec not in CHOICES:
        raise ConfigError(f"The 'cpu_gemm' parameter (or ${ENV}) must be one of {', '.join(CHOICES)}. "
                          f"Got {spec!r}.")
    if spec == "torch":
        return "torch"
    ok = available(torch)
    if spec == "onednn" and not ok:
        raise ConfigError("cpu_gemm 'onednn' needs a torch build with oneDNN (mkldnn) linear kernels; this one "
                          "has none. Use 'auto' or 'torch'.")
    return "onednn" if ok else "torch"


def available(torch) -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(ops, "_reorder_linear_weight") \
            and hasattr(ops, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def pack_linears(model) -> int:
    """Give every ``nn.Linear`` of ``model`` the packed inference forward; returns how many. Idempotent."""
    import torch

    n = 0
    for mod in model.modules():
        if type(mod) is torch.nn.Linear and not hasattr(mod, "_thresher_packed"):
            mod._thresher_packed = _Packed(mod)
            mod.forward = mod._thresher_packed            # instance attribute: this module only
            n += 1
    log.debug("oneDNN-packed %d linear layers", n)
    return n


class _Packed:
    """The forward of one linear layer: the packed weight when no gradient is needed, else F.linear."""

    def __init__(self, lin):
        self.lin, self.cache = lin, PackedSlices()

    def __call__(self, x):
        import torch

        w, b = self.lin.weight, self.lin.bias
        if (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)) or x.device.type != "cpu" \
                or w.device.type != "cpu" or x.dtype != w.dtype or w.dtype not in (torch.float32, torch.bfloat16):
            return torch.nn.functional.linear(x, w, b)
        return linear(x, self.cache.get(w, w.shape[0])[0], b)      # one slice: the whole weight


class PackedSlices:
    """Row slices of a weight matrix (out, in), each packed for oneDNN, keyed by the weight's identity and
    version so that they are rebuilt when the weight changes (a new tensor, or an in-place update). Used
    whole by every packed linear layer, and in vocabulary slices for the output head
    (HFCausalLM._head_nll). Safe to share between worker threads; copies and pickles repack on first use."""

    def __init__(self):
        import threading

        self.key, self.parts, self.lock = None, None, threading.Lock()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def get(self, w, size: int) -> list:
        import torch

        key = (w.data_ptr(), w._version, w.dtype, tuple(w.shape), int(size))
        with self.lock:
            if key != self.key:
                with torch.inference_mode():
                    self.parts = [torch.ops.mkldnn._reorder_linear_weight(w[v: v + size].detach().contiguous(), None)
                                  for v in range(0, w.shape[0], size)]
                self.key = key
            return self.parts


def linear(x, packed, bias=None):
    """x (..., in) @ packed (out, in)^T (+ bias) -> (..., out), with a weight from ``PackedSlices``."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
