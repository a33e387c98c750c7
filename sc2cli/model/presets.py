"""Configs of the three released StarCoder2 checkpoints (spec §1.7), for `sc2 info` and synthetic benchmarks."""

from __future__ import annotations

from .config import Starcoder2Config

_COMMON = dict(
    vocab_size=49152,
    hidden_act="gelu_pytorch_tanh",
    max_position_embeddings=16384,
    sliding_window=4096,
    norm_epsilon=1e-5,
    use_bias=True,
    use_cache=True,
    bos_token_id=0,
    eos_token_id=0,
    attention_dropout=0.1,
    residual_dropout=0.1,
    embedding_dropout=0.1,
    architectures=["Starcoder2ForCausalLM"],
)

PRESETS: dict[str, dict] = {
    "starcoder2-3b": dict(
        hidden_size=3072, intermediate_size=12288, num_hidden_layers=30, num_attention_heads=24,
        num_key_value_heads=2, rope_theta=999999.4420358813, initializer_range=0.018042,
        tie_word_embeddings=True,
    ),
    "starcoder2-7b": dict(
        hidden_size=4608, intermediate_size=18432, num_hidden_layers=32, num_attention_heads=36,
        num_key_value_heads=4, rope_theta=1000000, initializer_range=0.018042, tie_word_embeddings=True,
    ),
    "starcoder2-15b": dict(
        hidden_size=6144, intermediate_size=24576, num_hidden_layers=40, num_attention_heads=48,
        num_key_value_heads=4, rope_theta=100000, initializer_range=0.01275, tie_word_embeddings=False,
    ),
}


def preset_config(name: str) -> Starcoder2Config:
    """The config of a released checkpoint: 'starcoder2-3b', '3b' and 'bigcode/starcoder2-3b' all work."""
    key = name.lower().removeprefix("bigcode/")
    if not key.startswith("starcoder2-"):
        key = f"starcoder2-{key}"
    if key not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return Starcoder2Config(**_COMMON, **PRESETS[key])
