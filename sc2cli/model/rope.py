"""Rotary position embeddings: the six rope types of the reference, computed in float32 exactly as it does.

Each `*_inv_freq` function returns `(inv_freq, attention_scaling)`. The arithmetic (float32 tensors, Python-float
bases, the order of operations) follows the reference so that cos/sin agree to the last bit, which the 1e-5 logit
parity depends on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import Starcoder2Config


def _exponents(dim: int, device=None) -> Tensor:
    return torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim


def default_inv_freq(base: float, dim: int, device=None) -> Tensor:
    return 1.0 / (base ** _exponents(dim, device))


def linear_inv_freq(params: dict, dim: int, device=None) -> tuple[Tensor, float]:
    return default_inv_freq(params["rope_theta"], dim, device) / params["factor"], 1.0


def dynamic_inv_freq(params: dict, dim: int, max_positions: int, seq_len: Tensor | None, device=None) -> tuple[Tensor, float]:
    """NTK-aware base growth; `seq_len` is a tensor at run time, as in the reference (float32 arithmetic)."""
    base, factor = params["rope_theta"], params["factor"]
    if seq_len is None:
        seq_len = max_positions
    else:
        seq_len = torch.maximum(seq_len, torch.tensor(max_positions, dtype=seq_len.dtype, device=seq_len.device))
    base = base * ((factor * seq_len / max_positions) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / (base ** _exponents(dim, device)), 1.0


def yarn_inv_freq(params: dict, dim: int, max_positions: int, device=None) -> tuple[Tensor, float]:
    base = params["rope_theta"]
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or max_positions / original
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")

    def get_mscale(scale: float, m: float = 1) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoids a division by zero in the ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1).to(device)
    pos_freqs = base ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    extrapolation = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, attention_factor


def longrope_inv_freq(params: dict, dim: int, max_positions: int, long: bool, device=None) -> tuple[Tensor, float]:
    base = params["rope_theta"]
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or max_positions / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext = torch.tensor(params["long_factor" if long else "short_factor"], dtype=torch.float32, device=device)
    return 1.0 / (ext * base ** _exponents(dim, device)), attention_factor


def llama3_inv_freq(params: dict, dim: int, device=None) -> tuple[Tensor, float]:
    inv_freq = default_inv_freq(params["rope_theta"], dim, device)
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    original = params["original_max_position_embeddings"]
    low_wavelen, high_wavelen = original / low, original / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled), 1.0


def initial_inv_freq(config: Starcoder2Config, device=None) -> tuple[Tensor, float]:
    params, dim, max_pos = config.rope_parameters, config.head_size, config.max_position_embeddings
    rope_type = config.rope_type
    if rope_type == "default":
        return default_inv_freq(params["rope_theta"], dim, device), 1.0
    if rope_type == "linear":
        return linear_inv_freq(params, dim, device)
    if rope_type == "dynamic":
        return dynamic_inv_freq(params, dim, max_pos, None, device)
    if rope_type == "yarn":
        return yarn_inv_freq(params, dim, max_pos, device)
    if rope_type == "longrope":
        return longrope_inv_freq(params, dim, max_pos, long=False, device=device)
    if rope_type == "llama3":
        return llama3_inv_freq(params, dim, device)
    raise ValueError(f"unknown rope type {rope_type!r}")


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given position ids; dynamic and longrope adapt to the longest position in the batch."""

    def __init__(self, config: Starcoder2Config, device=None) -> None:
        super().__init__()
        self.config = config
        if torch.empty(0, device=device).device.type == "meta":
            # Built for loading: `reset_parameters` computes the tables once the model has a device. (Computing
            # them on meta would run torch's Python meta kernels, whose first use imports torch._dynamo: ~2 s.)
            inv_freq, self.attention_scaling = torch.empty(config.head_size // 2, device=device), 1.0
        else:
            inv_freq, self.attention_scaling = initial_inv_freq(config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)
        self.original_max_seq_len = config.max_position_embeddings
        self.max_seq_len_cached = config.max_position_embeddings

    def reset_parameters(self) -> None:
        """Recompute the buffers (after building on the meta device)."""
        inv_freq, self.attention_scaling = initial_inv_freq(self.config, self.inv_freq.device)
        self.inv_freq = inv_freq
        self.original_inv_freq = inv_freq.clone()
        self.max_seq_len_cached = self.original_max_seq_len

    def _update_frequencies(self, position_ids: Tensor) -> None:
        rope_type = self.config.rope_type
        if rope_type == "dynamic":
            seq_len = torch.max(position_ids) + 1
            if seq_len > self.max_seq_len_cached:  # growth
                params, dim = self.config.rope_parameters, self.config.head_size
                self.inv_freq, self.attention_scaling = dynamic_inv_freq(
                    params, dim, self.config.max_position_embeddings, seq_len, position_ids.device
                )
                self.max_seq_len_cached = seq_len
            if seq_len < self.original_max_seq_len and self.max_seq_len_cached > self.original_max_seq_len:  # reset
                self.inv_freq = self.original_inv_freq.to(position_ids.device)
                self.max_seq_len_cached = self.original_max_seq_len
        elif rope_type == "longrope":
            original = self.config.rope_parameters["original_max_position_embeddings"]
            long = bool(torch.max(position_ids) + 1 > original)
            if long:
                inv_freq, _ = longrope_inv_freq(
                    self.config.rope_parameters, self.config.head_size, self.config.max_position_embeddings,
                    long=True, device=position_ids.device,
                )
            else:
                inv_freq = self.original_inv_freq
            self.inv_freq.copy_(inv_freq)

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self.config.rope_type in ("dynamic", "longrope"):
            self._update_frequencies(position_ids)
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=position_ids.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, S, D): dims d and d + D/2 share a frequency
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, heads, S, D); cos/sin: (B, S, D), broadcast over heads."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)
