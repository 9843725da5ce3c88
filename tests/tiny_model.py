"""A tiny random-weight causal LM folder for tests that need a real model folder but not real numbers.

Built from a small LlamaConfig with the bundled MiniLM's WordPiece tokenizer (a plain folder inside an
installed package: no download and no GGUF conversion), saved with ``save_pretrained``."""

from __future__ import annotations

import shutil
from pathlib import Path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def save_tiny_llama(path, seed: int = 0, *, tokenizer: bool = True) -> Path:
    """Write (or overwrite) a 1-layer, 32-wide Llama with random weights drawn with ``seed``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from thresher.models.bundled import embedder_path

    path = Path(path)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=101, eos_token_id=102, pad_token_id=0)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    if tokenizer:
        for name in _TOKENIZER_FILES:
            shutil.copy(embedder_path() / name, path / name)
    return path
