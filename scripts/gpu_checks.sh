#!/usr/bin/env bash
# The GPU checks of issue 15 (part 7), in one go on a CUDA machine that has torch, transformers and peft but
# neither thresher installed nor the bundled model/data packages (no pip, no hub): thresher comes from src/,
# the tokenizer and the ShareGPT text from benchmarks/data/. Everything goes to stdout; each step has its own
# timeout so the whole stays under 10 minutes (expected: about 3).
#   1. benchmarks/gpu_ifd_mfu.py: IFD on random-weight Llama-2-7B- and Qwen2.5-7B-shaped models in bfloat16:
#      MFU against the bf16 matmul peak measured in the same run, the speed ratio over the one-sample loop,
#      bf16 vs fp32 (Llama only);
#   2. pytest tests/test_gpu.py: the CUDA paths against the CPU on the bundled SmolLM2 (or $THRESHER_TEST_MODEL,
#      a local model folder); without either they skip, and -rs prints why.
# Extra arguments go to both benchmark runs, e.g. `scripts/gpu_checks.sh --rows 400 --max-length 1024`.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY="${PYTHON:-python3}"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
"$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, '| transformers', transformers.__version__,
'| peft', peft.__version__, '| CUDA', torch.cuda.is_available())"

DATA=(--tokenizer benchmarks/data/smollm2-tokenizer --data benchmarks/data/sharegpt_first_turns.jsonl)
echo "== benchmarks/gpu_ifd_mfu.py --arch llama2-7b"
timeout 240 "$PY" benchmarks/gpu_ifd_mfu.py --arch llama2-7b "${DATA[@]}" "$@"
echo "benchmark exit status $?"
echo "== benchmarks/gpu_ifd_mfu.py --arch qwen2.5-7b (GQA, 152k vocabulary; no fp32 check)"
timeout 180 "$PY" benchmarks/gpu_ifd_mfu.py --arch qwen2.5-7b --no-fp32-check "${DATA[@]}" "$@"
echo "benchmark exit status $?"

echo "== pytest tests/test_gpu.py"
timeout 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py
echo "pytest exit status $?"
