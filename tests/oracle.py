"""The reference implementation (transformers) as a test oracle: tiny random models with sharp weights."""

from __future__ import annotations

import torch

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)


def tiny_config(**overrides) -> dict:
    return {**TINY, **overrides}


def sharpen_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights with std ~0.2 and norms around 1, so any wrong detail moves the logits far beyond 1e-5."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32).to(param.dtype)
            if "norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                param.copy_(base + 0.1 * noise)
            else:
                param.copy_(0.2 * noise)
    return model


def reference_model(class_name: str, seed: int = 0, dtype=torch.float32, **config):
    import transformers

    ref_config = transformers.Starcoder2Config(**config)
    ref_config._attn_implementation = "eager"
    model = getattr(transformers, class_name)(ref_config)
    return sharpen_(model, seed).to(dtype).eval()


def load_reference(class_name: str, directory, dtype=torch.float32):
    import transformers

    cls = getattr(transformers, class_name)
    return cls.from_pretrained(directory, dtype=dtype, attn_implementation="eager").eval()
