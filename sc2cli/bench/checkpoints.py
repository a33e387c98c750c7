"""The checkpoints `sc2 bench speed` measures on: random weights of a named shape, written once and cached.

No tokenizer is needed (prompts are random token ids). Shapes: `s` (~183M parameters, the "S" shape of the peer
measurements), `3b` (the starcoder2-3b shape), `tiny` (for smoke tests). Their checkpoints are written once per
dtype to `$XDG_CACHE_HOME/sc2/bench/<shape>-<dtype>/` (or `~/.cache/sc2/bench/...`) in the reference layout
(config.json + model.safetensors, which transformers loads unchanged), tensor by tensor from a model built on the
meta device, so writing the 3B shape holds one tensor chunk in memory, never the model.

The llama.cpp peers run on GGUFs of the same weights, written once by `sc2 export gguf`'s code (`peer_gguf`): at
the benchmark's precision (BF16 for bfloat16, F32, F16) and as Q8_0 (against sc2's int8). Beside random weights
they are `model-bf16.gguf`, `model-q8_0.gguf`... in the checkpoint folder (random weights get the shipped model's
tokenizer.json first, which has the shapes' vocabulary size); for any other checkpoint they live in the bench
cache, `~/.cache/sc2/bench/gguf/<model>/`, and are written again when the checkpoint is newer.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

SHAPES = ("shipped", "s", "3b", "tiny")  # --shape: the installed shipped model, or random weights of a shape
DTYPE_NAMES = ("bfloat16", "float32", "float16")
GGUF_SUFFIX = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}
INIT_STD = 0.02
CHECKPOINT_FORMAT = 1  # bump to rewrite cached random checkpoints when their recipe changes
_CHUNK_ELEMENTS = 1 << 24  # random weights are drawn and written in chunks of at most this many elements


def torch_dtype(name: str):
    """The torch dtype of one of DTYPE_NAMES."""
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def meta_model(config):
    """The causal LM of `config` on the meta device: names and shapes of every parameter, no memory."""
    import torch

    from ..model.transformer import Starcoder2ForCausalLM

    with torch.device("meta"):
        return Starcoder2ForCausalLM(config)


def shape_config(name: str):
    """The config of a named random-weight shape."""
    from ..model.presets import preset_config

    base = preset_config("3b")
    if name == "3b":
        return base
    if name == "s":
        return base.copy(hidden_size=1024, intermediate_size=4096, num_hidden_layers=12, num_attention_heads=16,
                         num_key_value_heads=4, vocab_size=49152, sliding_window=4096,
                         max_position_embeddings=16384)
    if name == "tiny":
        return base.copy(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, sliding_window=4096, max_position_embeddings=4096)
    raise ValueError(f"unknown shape {name!r}; known: s, 3b, tiny")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sc2" / "bench"


def random_checkpoint(shape: str, dtype: str, root: Path | None = None, seed: int = 0,
                      progress: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """The cached random checkpoint of `shape` in `dtype`: (folder, whether it was written now).

    A folder whose `bench.json` matches the recipe (shape, config, dtype, seed, format) is reused untouched."""
    config = shape_config(shape)
    directory = (root or cache_root()) / f"{shape}-{dtype}"
    recipe = {"format": CHECKPOINT_FORMAT, "shape": shape, "dtype": dtype, "seed": seed, "std": INIT_STD,
              "config": config.to_dict()}
    marker = directory / "bench.json"
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == recipe and (directory / "model.safetensors").is_file():
            return directory, False
    except (OSError, ValueError):
        pass
    if progress:
        progress(f"writing random {shape} weights ({dtype}) once to {directory}")
    for stale in directory.glob("*.gguf"):  # exports of the weights being replaced
        stale.unlink()
    write_random_checkpoint(config, dtype, directory, seed=seed, progress=progress)
    marker.write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return directory, True


def _init_value(name: str) -> float | None:
    """A constant for norms and biases (None: random normal)."""
    if "norm" in name:
        return 1.0 if name.endswith(".weight") else 0.0
    if name.endswith(".bias"):
        return 0.0
    return None


def write_random_checkpoint(config, dtype: str, directory: Path, seed: int = 0,
                            progress: Callable[[str], None] | None = None) -> Path:
    """Write config.json + model.safetensors of random weights (normal(0, 0.02); norms 1; biases 0).

    The names and shapes come from a model built on the meta device; the safetensors file is written by hand,
    tensor by tensor and chunk by chunk, so memory stays at one chunk whatever the model size."""
    import torch

    # _expected_names is private to the weights module: the parameters a checkpoint stores (tied head left out).
    from ..model.weights import SINGLE_FILE, _expected_names

    tensor_dtype = torch_dtype(dtype)
    model = meta_model(config)
    params = _expected_names(model)
    safetensors_dtype = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16"}[tensor_dtype]
    itemsize = torch.empty((), dtype=tensor_dtype).element_size()
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, p in params.items():
        nbytes = p.numel() * itemsize
        header[name] = {"dtype": safetensors_dtype, "shape": list(p.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (SINGLE_FILE + ".tmp")
    started = time.perf_counter()
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for index, (name, p) in enumerate(params.items()):
            constant = _init_value(name)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
            flat = p.numel()
            for start in range(0, flat, _CHUNK_ELEMENTS):
                count = min(_CHUNK_ELEMENTS, flat - start)
                if constant is None:
                    chunk = torch.randn(count, generator=generator, dtype=torch.float32).mul_(INIT_STD)
                else:
                    chunk = torch.full((count,), constant, dtype=torch.float32)
                f.write(chunk.to(tensor_dtype).view(torch.uint8).numpy())
            if progress and (index + 1) % 50 == 0:
                progress(f"  {index + 1}/{len(params)} tensors ({time.perf_counter() - started:.0f}s)")
    os.replace(tmp, directory / SINGLE_FILE)

    saved = config.copy()
    saved.architectures = ["Starcoder2ForCausalLM"]
    saved.dtype = dtype
    for key in ("architectures", "dtype"):
        if key not in saved.extra_keys:
            saved.extra_keys.append(key)
    saved.save_pretrained(directory)
    return directory


def gguf_path(checkpoint: Path, key: str, kind: str) -> Path:
    """Where the GGUF (`kind`: f32, f16, bf16, q8_0) of the checkpoint known as `key` (a shape name, "shipped", a
    model reference) lives: in the folder of random weights, which the bench owns, else in the bench cache."""
    name = f"model-{kind}.gguf"
    if _random_weights(key):
        return checkpoint / name
    return cache_root() / "gguf" / key.replace("/", "--") / name


def _random_weights(key: str) -> bool:
    """Whether `key` names random weights of a shape: a folder the bench wrote and owns."""
    return key in SHAPES and key != "shipped"


class NoGGUF(RuntimeError):
    """The checkpoint cannot be exported for llama.cpp (the message says why)."""


def peer_gguf(checkpoint: Path, key: str, kind: str, progress: Callable[[str], None] | None = None) -> Path:
    """The GGUF of these weights for a llama.cpp peer, exported now when it is missing or older than the weights."""
    from ..errors import Sc2Error

    path = gguf_path(checkpoint, key, kind)
    newest = max((f.stat().st_mtime for f in checkpoint.glob("*.safetensors")), default=0.0)
    if path.is_file() and path.stat().st_mtime >= newest:
        return path
    tokenizer = checkpoint / "tokenizer.json"
    if not tokenizer.is_file() and _random_weights(key):
        _give_shipped_tokenizer(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"exporting {kind.upper()} GGUF for llama.cpp once to {path}")
    try:
        from ..export.gguf import export

        export(checkpoint, path, kind)
    except ImportError:
        raise NoGGUF("the gguf package is not installed (pip install 'sc2cli[gguf]')") from None
    except Sc2Error as err:
        raise NoGGUF(str(err)) from None
    return path


def _give_shipped_tokenizer(checkpoint: Path) -> None:
    """Random weights have no tokenizer; llama.cpp needs one of the model's vocabulary size (the prompts are ids)."""
    from ..checkpoint import load_config
    from ..hub import shipped_model_dir

    source = shipped_model_dir() / "tokenizer.json"
    vocab = json.loads(source.read_text(encoding="utf-8"))["model"]["vocab"]
    size = load_config(checkpoint).vocab_size
    if len(vocab) > size:
        raise NoGGUF(f"the shape's vocabulary ({size}) is smaller than any tokenizer's ({len(vocab)})")
    shutil.copyfile(source, checkpoint / "tokenizer.json")
