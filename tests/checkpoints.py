"""Tiny StarCoder2 checkpoints on disk (config + safetensors + the test tokenizer) for CLI and end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import torch
from oracle import sharpen_, tiny_config
from tokenizer_fixture import TEST_VOCAB_SIZE, write_test_tokenizer

from sc2cli import model as modeling


def make_checkpoint(directory: str | Path, class_name: str = "Starcoder2ForCausalLM", seed: int = 0,
                    **overrides) -> Path:
    directory = Path(directory)
    shape = dict(vocab_size=TEST_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_attention_heads=8,
                 sliding_window=32)
    config = modeling.Starcoder2Config(**tiny_config(**{**shape, **overrides}))
    torch.manual_seed(seed)
    model = getattr(modeling, class_name)(config)
    model.init_weights()
    sharpen_(model, seed)
    model.save_pretrained(directory)
    write_test_tokenizer(directory)
    return directory
