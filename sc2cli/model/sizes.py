"""What a config costs before any weight is loaded: the parameter count, the memory of the weights per dtype
(int8 weight-only included) and the KV cache, from the model built on the meta device (shapes only, no memory).

`sizes(config)` is what `sc2 info` reports.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import Starcoder2Config

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CLASSES = ("Starcoder2ForCausalLM", "Starcoder2ForSequenceClassification", "Starcoder2ForTokenClassification")
# The KV cache of a model with int8 weights stays in bfloat16.
KV_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "int8": "bfloat16"}


def build_on_meta(config: Starcoder2Config) -> nn.Module:
    """The model the config describes (its first known architecture, else the causal LM), built on the meta
    device: shapes only, no memory, no weights."""
    from .. import model as modeling

    names = getattr(config, "architectures", None) or []
    name = next((n for n in names if n in CLASSES), "Starcoder2ForCausalLM")
    with torch.device("meta"):
        return getattr(modeling, name)(config)


def kv_window(config: Starcoder2Config) -> int:
    """The most tokens the KV cache holds: the sliding window, or the whole context when there is none."""
    return min(config.sliding_window or config.max_position_embeddings, config.max_position_embeddings)


def kv_bytes_per_token(config: Starcoder2Config) -> dict[str, int]:
    """Bytes of keys and values one token adds to the cache, per dtype."""
    elements = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_size  # keys + values
    return {dtype: elements * size for dtype, size in DTYPE_BYTES.items()}


def weight_bytes(model: nn.Module) -> tuple[int, dict[str, int]]:
    """(parameters, bytes of the weights per dtype). Shared (tied) weights count once. int8 weight-only: the
    Linear weights as int8 with one bf16 scale per output row, everything else in bf16."""
    unique = {id(p): p for p in model.parameters()}
    parameters = sum(p.numel() for p in unique.values())
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear = {id(m.weight): m.weight for m in model.modules()
              if isinstance(m, nn.Linear) and id(m.weight) not in embedding_ids}
    linear_numel = sum(w.numel() for w in linear.values())
    scales = sum(w.shape[0] for w in linear.values())
    weights = {dtype: parameters * size for dtype, size in DTYPE_BYTES.items()}
    weights["int8"] = linear_numel + 2 * (parameters - linear_numel + scales)
    return parameters, weights


def sizes(config: Starcoder2Config) -> dict:
    """{"parameters", "memory": {dtype: {"weights_bytes", "with_kv_cache_bytes"}}, "kv_cache": {"window_tokens",
    "bytes_per_token", "bytes_full_window"}}; "with_kv_cache_bytes" counts a full window."""
    parameters, weights = weight_bytes(build_on_meta(config))
    window = kv_window(config)
    per_token = kv_bytes_per_token(config)
    return {
        "parameters": parameters,
        "memory": {dtype: {"weights_bytes": w, "with_kv_cache_bytes": w + per_token[KV_DTYPE[dtype]] * window}
                   for dtype, w in weights.items()},
        "kv_cache": {"window_tokens": window, "bytes_per_token": per_token,
                     "bytes_full_window": {d: b * window for d, b in per_token.items()}},
    }
