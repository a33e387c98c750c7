"""StarCoder2 in plain PyTorch: `Starcoder2Model` and `Starcoder2ForCausalLM`.

Architecture (spec §2-3): token embeddings; pre-LayerNorm decoder layers with biased q/k/v/o projections,
grouped-query attention, half-split rotary embeddings and an optional sliding window; a GELU MLP with
c_fc/c_proj (the GELU variant `hidden_act` names, see `ACTIVATIONS`); a final LayerNorm; an lm_head tied to the
embeddings unless `tie_word_embeddings` is false.
Module names equal the checkpoint keys, so transformers checkpoints load without a mapping table.
The model reads no files and samples nothing: it maps (ids, positions, cache) to logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import kernels
from .cache import CAUSAL, KVCache, attention_mask
from .config import HIDDEN_ACTS, Starcoder2Config
from .pages import release_checkpoint_pages
from .rope import RotaryEmbedding, apply_rotary


@dataclass
class ModelOutput:
    logits: Tensor | None = None
    last_hidden_state: Tensor | None = None
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


class Starcoder2Attention(nn.Module):
    # How a bf16 model's decode attention runs on CPU, set by `prepare_for_inference`: through sc2's native kernel
    # (its instruction set: `kernels.decode_attention`), else, on CPUs without bf16 arithmetic, in float32 (see
    # `grouped_single_query_attention`).
    decode_attention_isa: str | None = None
    float32_decode_attention = False

    def __init__(self, config: Starcoder2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_size
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.residual_dropout = config.residual_dropout
        bias = config.use_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | str | None, cache: KVCache | None) -> Tensor:
        """mask: an additive mask, `CAUSAL`, or None (attend to every key: a single decoded token)."""
        batch, length, _ = x.shape
        if length == 1 and self.decode_attention_isa and not self.training:
            return self._decode_natively(x, cos, sin, mask, cache)
        q, k, v = self.project_qkv(x)
        q = q.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, n, S, D)
        k = k.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv, S, D)
        v = v.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        causal = isinstance(mask, str)
        if length == 1 and x.device.type == "cpu" and not self.training:
            out = grouped_single_query_attention(q, k, v, None if causal else mask, self.scaling,
                                                 float32=self.float32_decode_attention)
        else:
            out = grouped_attention(q, k, v, None if causal else mask, causal and length > 1, self.scaling,
                                    self.attention_dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return F.dropout(self.o_proj(out), p=self.residual_dropout, training=self.training)

    def _decode_natively(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | str | None,
                         cache: KVCache | None) -> Tensor:
        """One new token per row on sc2's native kernels (`prepare_for_inference` chose them): the rotary
        embeddings on the fused projection in one call, then attention over the cache in another, where torch
        takes some forty small operations per layer."""
        q, k, v = kernels.rotary_qkv(self.project_fused_qkv(x), cos, sin, self.num_heads, self.num_kv_heads)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        key_mask = mask.reshape(mask.shape[0], mask.shape[-1]) if isinstance(mask, Tensor) else None
        out = kernels.decode_attention(q[:, :, 0], k, v, key_mask, self.scaling, self.decode_attention_isa)
        return F.dropout(self.o_proj(out.reshape(x.shape[0], 1, -1)), p=self.residual_dropout, training=self.training)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if getattr(self, "qkv_kernel", None) is None and getattr(self, "qkv_weight", None) is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        kv = self.num_kv_heads * self.head_dim
        return self.project_fused_qkv(x).split([self.num_heads * self.head_dim, kv, kv], dim=-1)

    def project_fused_qkv(self, x: Tensor) -> Tensor:
        """q, k and v side by side in the last dimension, from the fused projection (see `fuse_qkv`)."""
        kernel = getattr(self, "qkv_kernel", None)
        if kernel is not None:
            return kernel(x)
        return F.linear(x, self.qkv_weight, self.qkv_bias)

    def fuse_qkv(self) -> None:
        """One matrix for q, k and v (one matmul instead of three in decode). The q/k/v parameters become views
        of it, so the memory is not doubled and the checkpoint names are unchanged."""
        if getattr(self, "qkv_weight", None) is not None:
            return
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight.detach() for p in projections])
        bias = torch.cat([p.bias.detach() for p in projections]) if self.q_proj.bias is not None else None
        release_checkpoint_pages(t for p in projections for t in (p.weight, p.bias))  # now copied into `weight`
        self.register_buffer("qkv_weight", weight, persistent=False)
        self.register_buffer("qkv_bias", bias, persistent=False)
        start = 0
        for p in projections:
            rows = p.weight.shape[0]
            p.weight = nn.Parameter(weight[start:start + rows], requires_grad=False)
            if bias is not None:
                p.bias = nn.Parameter(bias[start:start + rows], requires_grad=False)
            start += rows


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float,
                      dropout_p: float = 0.0, repeat_heads: bool | None = None) -> Tensor:
    """SDPA of q (B, H, S, D) over fewer key/value heads k, v (B, KV, L, D); query head h uses kv head h // (H/KV).

    `repeat_heads` (None: decided here) gives each query head its own copy of its key/value head first. That is
    done on CUDA when a mask tensor comes (a window, padding, or a prompt's chunk after the first) and this torch's
    memory-efficient kernel, the one fused CUDA kernel that takes a mask, does not take grouped heads (it did not
    in every release): SDPA would otherwise fall back to its math kernel, which writes every score to memory. The
    copy is of the keys and values this chunk attends to (at most the window and the chunk), small next to those
    scores."""
    groups = q.shape[1] // k.shape[1]
    if repeat_heads is None:
        repeat_heads = groups > 1 and mask is not None and q.device.type == "cuda" and not _efficient_kernel_takes(
            q, k, v, mask, dropout_p)
    if repeat_heads and groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p,
                                          scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def _efficient_kernel_takes(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, dropout_p: float) -> bool:
    """Whether this torch's memory-efficient CUDA kernel takes these grouped-head inputs (torch's own check)."""
    from torch.backends.cuda import SDPAParams, can_use_efficient_attention

    return can_use_efficient_attention(SDPAParams(q, k, v, mask, dropout_p, False, True), False)


def grouped_single_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float,
                                   float32: bool = False) -> Tensor:
    """Attention of one new token per row, q (B, H, 1, D) over k/v (B, KV, L, D), as two small matmuls.

    The query heads that share a key/value head are stacked as rows of one product, so the cache is read once
    and never repeated per head; on CPU this is several times faster for decode than the SDPA kernel, which is
    built for many queries. Softmax in float32, as the reference's eager path.

    `float32`: both products in float32 on float32 copies of q, k and v (a bf16 result). On CPUs without bf16
    arithmetic (AVX2) torch's bf16 matmul has no fast kernel: 1.24 ms a layer for 640 cached tokens of the
    ~180M shape, against 0.18 ms with the copies (measured), a quarter of a decode step there.
    """
    if float32 and q.dtype != torch.float32:
        return grouped_single_query_attention(q.float(), k.float(), v.float(), mask, scale).to(q.dtype)
    batch, heads, _, dim = q.shape
    kv_heads = k.shape[1]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads, dim)  # head h uses key/value head h // group
    scores = torch.matmul(grouped, k.transpose(-1, -2)).float() * scale  # (B, KV, group, L)
    if mask is not None:
        scores = scores + mask.float()  # (B or 1, 1, 1, L) broadcasts over heads
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(batch, heads, 1, dim)


def gelu_new(x: Tensor) -> Tensor:
    """The tanh approximation written out, as the reference's NewGELUActivation ("gelu_new")."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_fast(x: Tensor) -> Tensor:
    """The tanh approximation in the reference's FastGELUActivation's arrangement ("gelu_fast")."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


# hidden_act -> the function transformers' ACT2FN computes for it, operation for operation (the three tanh forms
# agree mathematically but round differently, so each is kept as the reference writes it).
ACTIVATIONS = {
    "gelu": F.gelu,  # GELUActivation: exact, erf-based
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),  # GELUTanh: torch's fused tanh approximation
    "gelu_new": gelu_new,
    "gelu_fast": gelu_fast,
}
assert set(ACTIVATIONS) == set(HIDDEN_ACTS)  # the config accepts exactly what the MLP computes


class Starcoder2MLP(nn.Module):
    def __init__(self, config: Starcoder2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.use_bias)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.use_bias)
        self.act = ACTIVATIONS[config.hidden_act]
        self.residual_dropout = config.residual_dropout

    def forward(self, x: Tensor) -> Tensor:
        x = self.c_proj(self.act(self.c_fc(x)))
        return F.dropout(x, p=self.residual_dropout, training=self.training)


class Starcoder2DecoderLayer(nn.Module):
    def __init__(self, config: Starcoder2Config, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_epsilon)
        self.self_attn = Starcoder2Attention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_epsilon)
        self.mlp = Starcoder2MLP(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | str | None, cache: KVCache | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Starcoder2PreTrainedModel(nn.Module):
    """Shared loading, saving and initialisation (see `weights.py`)."""

    config_class = Starcoder2Config

    def __init__(self, config: Starcoder2Config) -> None:
        super().__init__()
        self.config = config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def init_weights(self) -> None:
        """The reference's initialisation: normal(0, initializer_range) weights, zero biases, unit norms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.padding_idx is not None:
                    module.weight.data[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, RotaryEmbedding):
                module.reset_parameters()
        self.tie_weights()

    def tie_weights(self) -> None:
        pass

    def prepare_for_inference(self, quantize: str = "none") -> "Starcoder2PreTrainedModel":
        """Eval mode, fused q/k/v projections (the weights keep their checkpoint names for saving) and a bf16
        model's decode attention on CPU through sc2's native kernel (or, without it, in float32 on CPUs without
        bf16 arithmetic); then, where a faster kernel exists for the device and dtype or `quantize` asks for
        int8, the decoder's and the lm_head's linear layers are replaced by it (see `linear.py`) and the model
        becomes inference-only."""
        from .linear import QUANTIZE_CHOICES, bf16_kernel, native_kernel_isa

        if quantize not in QUANTIZE_CHOICES:
            raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, not {quantize!r}")
        self.eval()
        products = bf16_kernel(self.device, self.dtype)
        attention_isa = native_kernel_isa(self.device) if self.dtype == torch.bfloat16 else None
        for module in self.modules():
            if isinstance(module, Starcoder2Attention):
                module.fuse_qkv()
                module.decode_attention_isa = attention_isa
                module.float32_decode_attention = products == "float32"
        if quantize != "none" or products:
            self._swap_linear_kernels(quantize)
        return self

    def _swap_linear_kernels(self, quantize: str) -> None:
        from .linear import replacements

        embedding = next((m.weight for m in self.modules() if isinstance(m, nn.Embedding)), None)
        self.inference_only = True
        # (module, its attribute: None for the fused q/k/v, weight, bias) of every product, in the model's order
        products = []
        for module in self.modules():
            if isinstance(module, Starcoder2Attention):
                products.append((module, None, module.qkv_weight, module.qkv_bias))
            for name in ("o_proj", "c_fc", "c_proj", "lm_head"):
                linear = getattr(module, name, None)
                if isinstance(linear, nn.Linear):
                    products.append((module, name, linear.weight, linear.bias))
        kernels = replacements([(weight, bias) for _, _, weight, bias in products], quantize)
        for (module, name, weight, bias), kernel in zip(products, kernels):
            if kernel is None:
                continue
            if name is None:
                module.qkv_kernel = kernel
                module.qkv_weight = module.qkv_bias = None
                module.q_proj = module.k_proj = module.v_proj = None
                continue
            kernel.logits_head = name == "lm_head"
            setattr(module, name, kernel)
            kept = getattr(kernel, "weight", None)  # Bf16Linear reads the checkpoint's own weight
            if weight is not embedding and not (kept is not None and kept.data_ptr() == weight.data_ptr()):
                release_checkpoint_pages([weight, bias])  # (a tied one is still read)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                        config: Starcoder2Config | None = None, **overrides):
        from .weights import load_pretrained

        return load_pretrained(cls, path, dtype=dtype, device=device, config=config, **overrides)

    def save_pretrained(self, directory, max_shard_size: int | str = "5GB") -> None:
        if getattr(self, "inference_only", False):
            raise ValueError("this model's weights were repacked or quantized for inference and no longer carry "
                             "the checkpoint's names; save the model before prepare_for_inference")
        from .weights import save_pretrained

        save_pretrained(self, directory, max_shard_size=max_shard_size)

    def num_parameters(self) -> int:
        """Unique parameters (a tied lm_head counts once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


class Starcoder2Model(Starcoder2PreTrainedModel):
    base_model_prefix = ""

    def __init__(self, config: Starcoder2Config) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(Starcoder2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_epsilon)
        self.rotary_emb = RotaryEmbedding(config)
        self.embedding_dropout = config.embedding_dropout

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        cache: KVCache | None = None,
        output_hidden_states: bool = False,
        tentative: bool = False,
        **_: object,
    ) -> ModelOutput:
        """attention_mask: (B, S) padding mask of the new tokens (1 = real); earlier columns live in the cache.
        tentative: the new tokens are a draft; the cache keeps them only once `cache.commit(n)` says how many."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = x.shape[:2]
        if attention_mask is not None and attention_mask.shape[-1] != length:
            # The reference takes a mask over past + new columns; only the new ones are not yet in the cache.
            attention_mask = attention_mask[:, -length:]
        if position_ids is None:
            past = cache.seen if cache is not None else 0
            position_ids = torch.arange(past, past + length, device=x.device)[None]
        if cache is not None:
            mask = cache.begin(length, attention_mask, x.dtype, tentative=tentative)
        else:
            mask = uncached_mask(length, attention_mask, self.config.sliding_window, x.dtype, x.device)
        x = F.dropout(x, p=self.embedding_dropout, training=self.training)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        hidden_states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
            if hidden_states is not None:
                hidden_states.append(x)
        if cache is not None:
            cache.end()
        x = self.norm(x)
        if hidden_states is not None:
            hidden_states[-1] = x  # the reference reports the final-normed state as the last entry
        return ModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )


def uncached_mask(length: int, padding: Tensor | None, window: int | None, dtype: torch.dtype, device) -> Tensor | str:
    """Mask of an uncached forward, or `CAUSAL` when plain causal attention is exact: no padding and no window
    inside the sequence (which is how training runs, on the fast kernel)."""
    if (padding is None or bool(padding.all())) and (window is None or length <= window):
        return CAUSAL
    columns = torch.arange(length, device=device)
    return attention_mask(columns, columns, padding.bool() if padding is not None else None, window, dtype)


class Starcoder2ForCausalLM(Starcoder2PreTrainedModel):
    base_model_prefix = "model"

    def __init__(self, config: Starcoder2Config) -> None:
        super().__init__(config)
        self.model = Starcoder2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        cache: KVCache | None = None,
        output_hidden_states: bool = False,
        logits_to_keep: int | Tensor = 0,
        num_items_in_batch: int | Tensor | None = None,
        tentative: bool = False,
        **_: object,
    ) -> ModelOutput:
        out = self.model(input_ids, attention_mask, position_ids, inputs_embeds, cache,
                         output_hidden_states=output_hidden_states, tentative=tentative)
        x = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        out.logits = self.lm_head(x[:, keep, :])
        if labels is not None:
            out.loss = causal_lm_loss(out.logits, labels, num_items_in_batch)
        return out


def causal_lm_loss(logits: Tensor, labels: Tensor, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """Token t predicts token t+1; -100 labels are ignored; computed in float32 (spec §3.8)."""
    logits = logits.float()
    labels = F.pad(labels, (0, 1), value=-100)[..., 1:].to(logits.device)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction=reduction)
    if num_items_in_batch is not None:
        loss = loss / num_items_in_batch
    return loss
