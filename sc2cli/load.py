"""From a model reference to a ready (model, tokenizer) pair on a device."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .tokenizer import Tokenizer

NOT_A_CHECKPOINT = "is it a StarCoder2 checkpoint? (a folder with config.json, model.safetensors and tokenizer.json)"


@dataclass
class Loaded:
    model: object
    tokenizer: Tokenizer
    path: Path
    name: str
    load_seconds: float


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
    from .config import Starcoder2Config

    try:
        return Starcoder2Config.from_pretrained(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no config.json; {NOT_A_CHECKPOINT}") from None
    except ValueError as err:  # unreadable or invalid config.json, or another model type
        message, config_path = str(err), str(path / "config.json")
        raise CheckpointError(message if config_path in message else f"{config_path}: {message}") from None


def load_config_and_tokenizer(ref: str, revision: str | None = None, offline: bool = False):
    """(config, tokenizer, path) without the weights: enough to build and measure a prompt."""
    from . import hub

    path = hub.resolve(ref, revision=revision, offline=offline)
    config = load_config(path)
    return config, load_tokenizer(path, config.vocab_size), path


def load(ref: str, device: str = "auto", dtype: str = "auto", revision: str | None = None, offline: bool = False,
         model_class=None, quantize: str = "none") -> Loaded:
    from .devices import resolve_device, resolve_dtype
    from .modeling import Starcoder2ForCausalLM

    started = time.perf_counter()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config, tokenizer, path = load_config_and_tokenizer(ref, revision, offline)
    cls = model_class or Starcoder2ForCausalLM
    model = cls.from_pretrained(path, dtype=torch_dtype, device=torch_device).prepare_for_inference(quantize)
    return Loaded(model, tokenizer, path, ref, time.perf_counter() - started)
