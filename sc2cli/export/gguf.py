"""A StarCoder2 checkpoint (safetensors in the reference layout: the shipped model, `sc2 train` outputs, the Hub's)
as one GGUF file for llama.cpp and Ollama, written with the `gguf` package that the llama.cpp project publishes.

What llama.cpp reads (its `starcoder2` architecture): the hyper-parameters, the tensors under its names, and the
tokenizer as a byte-level BPE ("gpt2") vocabulary with its merges, token types (special tokens are CONTROL) and the
"starcoder" pre-tokenizer (digits one by one, then GPT-2's split), which is StarCoder2's own. The FIM and
repository token ids are named too, so that llama.cpp's /infill builds StarCoder2's prompt.

llama.cpp's starcoder2 attends over the whole context: the sliding window is recorded but not applied there, so
its outputs match sc2's only while a sequence fits the window.

Tensors are written one at a time (never the whole model in memory), to a temporary file renamed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..checkpoint import load_config
from ..errors import CheckpointError, InputError
from ..model.config import Starcoder2Config
from ..model.weights import weight_files

TYPES = ("f32", "f16", "bf16", "q8_0")
PRE_TOKENIZER = "starcoder"  # llama.cpp's name for StarCoder's: \p{N} one by one, then GPT-2's regex
FIM_TOKENS = {"FIM_PRE_ID": "<fim_prefix>", "FIM_SUF_ID": "<fim_suffix>", "FIM_MID_ID": "<fim_middle>",
              "FIM_PAD_ID": "<fim_pad>", "FIM_REP_ID": "<repo_name>", "FIM_SEP_ID": "<file_sep>"}
LAYER_NAMES = {  # the reference's names (after "model.layers.N.") -> llama.cpp's (after "blk.N.")
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}
TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(name: str) -> str | None:
    """llama.cpp's name of a reference tensor name (None: not part of the language model)."""
    base, _, kind = name.rpartition(".")
    if base in TOP_NAMES:
        return f"{TOP_NAMES[base]}.{kind}"
    parts = base.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in LAYER_NAMES:
        return f"blk.{parts[2]}.{LAYER_NAMES[parts[3]]}.{kind}"
    return None


def export(checkpoint: Path, out: Path, kind: str = "f16", name: str | None = None,
           on_tensor: Callable[[str], None] | None = None) -> int:
    """Write `checkpoint` (a folder) as GGUF to `out`; the number of tensors written."""
    import gguf

    if kind not in TYPES:
        raise InputError(f"the type must be one of {', '.join(TYPES)} (got {kind!r})", field="type")
    config = _config(checkpoint)
    tensors = _tensor_index(checkpoint, config)
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out} is a folder; give the name of the .gguf file to write", field="gguf_file")
    writer_kinds = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                    "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    with _temporary_beside(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "starcoder2")
        _hyperparameters(writer, config, name or checkpoint.name, writer_kinds[kind])
        _tokenizer(writer, checkpoint, config)
        plans = [(key, target, _storage(gguf, target, shape, kind)) for key, target, shape in tensors]
        for key, target, (dtype, shape, nbytes, raw) in plans:
            writer.add_tensor_info(target, shape, dtype, nbytes, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for key, target, (dtype, shape, nbytes, raw) in plans:
            data = _convert(gguf, _read(checkpoint, key), target, kind)
            writer.write_tensor_data(data)
            if on_tensor:
                on_tensor(target)
        writer.close()
    return len(plans)


def _config(checkpoint: Path) -> Starcoder2Config:
    config = load_config(checkpoint)
    if config.hidden_act not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        raise InputError(f"llama.cpp's starcoder2 computes the tanh GELU; this checkpoint uses {config.hidden_act!r}",
                         field="checkpoint")
    if config.rope_type != "default":
        raise InputError(f"rope type {config.rope_type!r} is not exported (llama.cpp's starcoder2 takes the default "
                         "rope only)", field="checkpoint")
    if not config.use_bias:
        raise InputError("a StarCoder2 without biases is not exported (llama.cpp's starcoder2 expects them)",
                         field="checkpoint")
    return config


def _tensor_index(checkpoint: Path, config: Starcoder2Config) -> list[tuple[str, str, tuple[int, ...]]]:
    """(checkpoint key, llama.cpp name, shape) of every tensor to write, in llama.cpp's order."""
    from safetensors import safe_open

    found = {}
    for file in weight_files(checkpoint):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                target = gguf_name(key)
                if target is not None:
                    found[key] = (target, tuple(handle.get_slice(key).get_shape()))
    if config.tie_word_embeddings:
        found.pop("lm_head.weight", None)  # llama.cpp reads the embedding as the head when `output` is absent
    missing = [k for k in ("model.embed_tokens.weight", "model.norm.weight") if k not in found]
    if missing:
        raise CheckpointError(f"{checkpoint} lacks {', '.join(missing)}: not a StarCoder2 causal LM")

    def order(key: str):
        target = found[key][0]
        if target.startswith("blk."):
            return (1, int(target.split(".")[1]), target)
        return (0 if target.startswith("token_embd") else 2, 0, target)

    return [(key, found[key][0], found[key][1]) for key in sorted(found, key=order)]


def _read(checkpoint: Path, key: str) -> np.ndarray:
    from safetensors import safe_open

    for file in weight_files(checkpoint):
        with safe_open(str(file), "pt") as handle:
            if key in handle.keys():
                return handle.get_tensor(key).float().numpy()
    raise CheckpointError(f"{key} vanished from {checkpoint} while it was exported")


def _quantized(target: str, shape: tuple[int, ...], kind: str) -> bool:
    """Whether a tensor is stored in the file's type: the matrices (rows of whole 32-blocks for Q8_0); norms and
    biases stay float32, as llama.cpp's converter keeps them."""
    if kind == "f32" or len(shape) != 2 or target.endswith(".bias"):
        return False
    return kind != "q8_0" or shape[-1] % 32 == 0


def _storage(gguf, target: str, shape: tuple[int, ...], kind: str):
    """(numpy dtype, shape as stored, bytes, ggml type) of a tensor in the file."""
    count = int(np.prod(shape))
    if not _quantized(target, shape, kind):
        return np.float32, shape, count * 4, None
    if kind == "f16":
        return np.float16, shape, count * 2, None
    qtype = gguf.GGMLQuantizationType.BF16 if kind == "bf16" else gguf.GGMLQuantizationType.Q8_0
    byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
    return np.uint8, byte_shape, int(np.prod(byte_shape)), qtype


def _convert(gguf, data: np.ndarray, target: str, kind: str) -> np.ndarray:
    if not _quantized(target, data.shape, kind):
        return data.astype(np.float32)
    if kind == "f16":
        return data.astype(np.float16)
    qtype = gguf.GGMLQuantizationType.BF16 if kind == "bf16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data, qtype)


def _hyperparameters(writer, config: Starcoder2Config, name: str, file_type) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_eps(config.norm_epsilon)
    writer.add_rope_freq_base(config.rope_theta)
    if config.sliding_window:
        writer.add_sliding_window(config.sliding_window)  # (recorded; llama.cpp's starcoder2 does not apply it)
    writer.add_file_type(file_type)


def _tokenizer(writer, checkpoint: Path, config: Starcoder2Config) -> None:
    import gguf

    try:
        spec = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint} has no tokenizer.json; the GGUF needs the tokenizer") from None
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise InputError("only a byte-level BPE tokenizer can be exported (StarCoder2's kind)", field="checkpoint")
    _check_pre_tokenizer(spec.get("pre_tokenizer"))
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, token in added.items():
        vocab[content] = token["id"]
    size = max(config.vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]  # (ids the vocabulary leaves unused, as llama.cpp's converter does)
    types = [gguf.TokenType.UNUSED] * size
    for text, index in vocab.items():
        tokens[index] = text
        special = text in added and added[text].get("special", False)
        types[index] = gguf.TokenType.CONTROL if special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = config.eos_token_ids[0] if config.eos_token_ids else vocab.get("<|endoftext|>")
    bos = config.bos_token_id if config.bos_token_id is not None else eos
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)  # StarCoder2 prompts start without one
    for key, token in FIM_TOKENS.items():
        if token in vocab:
            writer.add_uint32(getattr(gguf.Keys.Tokenizer, key), vocab[token])


def _check_pre_tokenizer(pre) -> None:
    """StarCoder2's pre-tokenizer (digits one by one, then byte-level with GPT-2's regex), which llama.cpp calls
    "starcoder"; another one would tokenize differently there."""
    steps = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex")) for s in steps]
    if kinds != [("Digits", True, None), ("ByteLevel", None, True)]:
        raise InputError("the tokenizer's pre-tokenizer is not StarCoder2's (digits, then byte-level): llama.cpp "
                         "would split text differently", field="checkpoint")


@contextlib.contextmanager
def _temporary_beside(out: Path) -> Iterator[Path]:
    """A temporary file in `out`'s folder, renamed to `out` when the block succeeds, removed otherwise."""
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{folder} does not exist; create the folder first", field="gguf_file")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".sc2tmp", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
