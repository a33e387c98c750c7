"""From a model reference to a checkpoint: resolved, its config and tokenizer parsed, once per call.

`open_checkpoint` is enough to build and measure a prompt (a dry run reads no weights); `load_model` then reads
the weights with the config already parsed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .tokenizer import Tokenizer


@dataclass
class Checkpoint:
    ref: str  # as the user named it (a Hub id, a folder, or the shipped model's name)
    path: Path
    config: object  # Starcoder2Config
    tokenizer: Tokenizer


@dataclass
class Loaded:
    """A model ready for inference with its checkpoint, and how long loading took."""

    model: object
    tokenizer: Tokenizer
    path: Path
    name: str
    load_seconds: float
    quantize: str = "none"


def load_tokenizer(path: Path, vocab_size: int | None = None) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_dir(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no tokenizer.json; sc2 needs the checkpoint's fast tokenizer: copy the "
                              "tokenizer.json that came with the model into it") from None
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise CheckpointError(
            f"the tokenizer in {path} has {tokenizer.vocab_size} tokens but the model only {vocab_size}; "
            "the tokenizer belongs to another model: use the tokenizer.json that came with this checkpoint"
        )
    return tokenizer


def load_config(path: Path):
    from .model.config import read_config

    return read_config(Path(path))


def open_checkpoint(ref: str, revision: str | None = None, offline: bool = False, weights: bool = True) -> Checkpoint:
    """Resolve `ref` (downloading when needed; `weights=False`: the config and tokenizer only) and parse its
    config and tokenizer."""
    from . import hub

    path = hub.resolve(ref, revision=revision, offline=offline, weights=weights)
    config = load_config(path)
    return Checkpoint(ref, path, config, load_tokenizer(path, config.vocab_size))


def load_model(checkpoint: Checkpoint, device: str = "auto", dtype: str = "auto", quantize: str = "none",
               model_class=None) -> Loaded:
    """The checkpoint's weights on a device, prepared for inference (fused, repacked or quantized there)."""
    from .devices import resolve_device, resolve_dtype
    from .model.linear import QUANTIZE_CHOICES
    from .model.transformer import Starcoder2ForCausalLM

    if quantize not in QUANTIZE_CHOICES:
        from .errors import InputError

        raise InputError(f"quantization must be one of {', '.join(QUANTIZE_CHOICES)} (got {quantize!r})",
                         field="quantize")
    started = time.perf_counter()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    cls = model_class or Starcoder2ForCausalLM
    model = cls.from_pretrained(checkpoint.path, dtype=torch_dtype, device=torch_device, config=checkpoint.config)
    model = model.prepare_for_inference(quantize)
    return Loaded(model, checkpoint.tokenizer, checkpoint.path, checkpoint.ref, time.perf_counter() - started,
                  quantize)


def load(ref: str, device: str = "auto", dtype: str = "auto", revision: str | None = None, offline: bool = False,
         model_class=None, quantize: str = "none") -> Loaded:
    """`open_checkpoint` and `load_model` in one call (the load time counts both)."""
    started = time.perf_counter()
    loaded = load_model(open_checkpoint(ref, revision, offline), device, dtype, quantize, model_class)
    loaded.load_seconds = time.perf_counter() - started
    return loaded
