"""Checkpoints in the reference layout: config.json + model.safetensors (or shards with an index).

Loading builds the model on the meta device and assigns each tensor as it is read from the memory-mapped file,
cast to the requested dtype, so no second full copy of the weights is held. Only safetensors are read; pickle
files are never opened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .config import Starcoder2Config, read_config
from ..errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin")
DAMAGED = "the file is damaged or incomplete: download the checkpoint again"
MISMATCHED = "config.json and the weights do not belong together: use the files of one checkpoint"
CLASSIFIERS = {"Starcoder2ForSequenceClassification": "sequence-classification",
               "Starcoder2ForTokenClassification": "token-classification"}


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (one file, or the shards named by the index)."""
    single, index = directory / SINGLE_FILE, directory / INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"{index} is not a valid safetensors index (no 'weight_map')") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index} is not a valid safetensors index ('weight_map' must map names to files)")
        files = sorted(set(weight_map.values()))
        for name in files:
            if Path(name).name != name:
                raise CheckpointError(f"{index} names a shard outside the checkpoint: {name!r}")
            if not (directory / name).is_file():
                raise CheckpointError(f"shard {name} named in {index} is missing")
        return [directory / name for name in files]
    if any((directory / name).exists() for name in PICKLE_FILES) or any(directory.glob("*.bin")):
        raise CheckpointError(
            f"{directory} has only pickle (.bin) weights; sc2 loads safetensors only, because unpickling can run "
            "arbitrary code. Convert the checkpoint to safetensors first"
        )
    raise CheckpointError(f"no model.safetensors or {INDEX_FILE} in {directory}; download the checkpoint again "
                          "(sc2 reads safetensors weights only)")


def _expected_names(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameter names the checkpoint must provide (a tied lm_head is not stored)."""
    names = dict(model.named_parameters(remove_duplicate=False))
    if getattr(model.config, "tie_word_embeddings", False):
        names.pop("lm_head.weight", None)
    return names


def _checkpoint_key(name: str, model: nn.Module, keys: set[str]) -> str | None:
    """Base-model names carry no `model.` prefix; accept both spellings, as transformers does."""
    if name in keys:
        return name
    prefix = "model."
    if getattr(model, "base_model_prefix", "") == "" and prefix + name in keys:
        return prefix + name
    if name.startswith(prefix) and name[len(prefix):] in keys:
        return name[len(prefix):]
    return None


def load_state(model: nn.Module, directory: Path, dtype: torch.dtype, device: torch.device) -> None:
    """Assign every parameter of `model` (built on meta) from the checkpoint; strict about names and shapes."""
    files = weight_files(directory)
    handles = {}
    key_to_file: dict[str, Path] = {}
    try:
        for path in files:
            handles[path] = safe_open(path, framework="pt", device="cpu")
            for key in handles[path].keys():
                key_to_file[key] = path
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {_one_line(err)}; {DAMAGED}") from None

    available = set(key_to_file)
    _untie_if_head_differs(model, handles, key_to_file)
    expected = _expected_names(model)
    used: set[str] = set()
    missing = []
    state = {}
    for name, param in expected.items():
        key = _checkpoint_key(name, model, available)
        if key is None:
            missing.append(name)
            continue
        handle = handles[key_to_file[key]]
        shape = tuple(handle.get_slice(key).get_shape())
        if shape != tuple(param.shape):
            raise CheckpointError(
                f"tensor {key} in {key_to_file[key]} has shape {list(shape)}, the config needs {list(param.shape)}; "
                f"{MISMATCHED}"
            )
        tensor = _read_tensor(handle, key, key_to_file[key])
        state[name] = nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=param.requires_grad)
        used.add(key)
    if missing:
        raise CheckpointError(f"checkpoint {directory} lacks tensor {missing[0]}" + (
            f" (and {len(missing) - 1} more)" if len(missing) > 1 else "") + f"; {MISMATCHED}, or download it again")
    unexpected = sorted(available - used - _tolerated_extras(model, available))
    if unexpected:
        raise CheckpointError(f"checkpoint {directory} has unexpected tensor {unexpected[0]}" + (
            f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "") + f"; {MISMATCHED}")
    for name, value in state.items():
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name), attr, value)
    model.tie_weights()


def _read_tensor(handle, key: str, path: Path) -> torch.Tensor:
    try:
        return handle.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"cannot read tensor {key} from {path}: {_one_line(err)}; {DAMAGED}") from None


def _untie_if_head_differs(model: nn.Module, handles: dict, key_to_file: dict[str, Path]) -> None:
    """A config that says tied while the checkpoint holds a *different* lm_head.weight is wrong; like transformers,
    keep both tensors (and record the untying in the config, so a re-save writes both)."""
    if not getattr(model.config, "tie_word_embeddings", False) or "lm_head.weight" not in key_to_file:
        return
    if not isinstance(getattr(model, "lm_head", None), nn.Linear):
        return
    embed_key = _checkpoint_key("model.embed_tokens.weight", model, set(key_to_file))
    if embed_key is None:
        return
    head = _read_tensor(handles[key_to_file["lm_head.weight"]], "lm_head.weight", key_to_file["lm_head.weight"])
    embed = _read_tensor(handles[key_to_file[embed_key]], embed_key, key_to_file[embed_key])
    if head.shape != embed.shape or not torch.equal(head, embed):
        warnings.warn("config.json says tie_word_embeddings but the checkpoint's lm_head.weight differs from the "
                      "embeddings; loading them untied")
        model.config.tie_word_embeddings = False


def _tolerated_extras(model: nn.Module, keys: set[str]) -> set[str]:
    """Tensors we may ignore: a redundant tied lm_head, rotary buffers of old exports, and, for the bare model,
    the head weights of a head checkpoint."""
    extras = {k for k in keys if k.endswith("rotary_emb.inv_freq")}
    if getattr(model.config, "tie_word_embeddings", False):
        extras.add("lm_head.weight")
    if getattr(model, "base_model_prefix", None) == "":
        extras |= {k for k in keys if not k.startswith("model.") and k in ("lm_head.weight", "score.weight", "score.bias")}
    return extras


def load_pretrained(cls, path, dtype: torch.dtype | None = None, device=None, config: Starcoder2Config | None = None,
                    **overrides):
    """A model of class `cls` from a checkpoint folder; `config` skips reading config.json again when the caller
    has it already."""
    directory = Path(path)
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise CheckpointError(f"checkpoint directory {path} {problem}")
    if config is None:
        config = read_config(directory)
    if overrides:
        config = config.copy(**overrides)
    _refuse_a_classifier_as_a_language_model(cls, config, path)
    dtype = dtype or torch.float32
    device = torch.device(device or "cpu")
    with torch.device("meta"), _no_random_init():
        model = cls(config)
    load_state(model, directory, dtype, device)
    _materialize_buffers(model, device)
    return model.eval()


# nn.init's fills, called by the layers' constructors (Linear, Embedding, LayerNorm).
_INIT_FILLS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
               "trunc_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def _no_random_init() -> Iterator[None]:
    """The layers' own initialisation skipped while a model is built on the meta device for loading: every
    parameter is then replaced by the checkpoint's. On meta it computes nothing, but the first fill runs torch's
    Python meta kernels, whose first use imports torch._dynamo: about 2 s of every cold start."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FILLS}
    zero_padding = nn.Embedding._fill_padding_idx_with_zero
    try:
        for name in _INIT_FILLS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        nn.Embedding._fill_padding_idx_with_zero = lambda self: None
        yield
    finally:
        for name, fill in saved.items():
            setattr(nn.init, name, fill)
        nn.Embedding._fill_padding_idx_with_zero = zero_padding


def _refuse_a_classifier_as_a_language_model(cls, config: Starcoder2Config, path) -> None:
    """A classification checkpoint has a scoring head instead of the language-model head: say so, rather than
    that its config and weights do not belong together (its `score.weight` would be an unexpected tensor)."""
    archs = getattr(config, "architectures", None) or []
    arch = archs[0] if isinstance(archs, (list, tuple)) and archs else None
    if cls.__name__ == "Starcoder2ForCausalLM" and arch in CLASSIFIERS:
        raise CheckpointError(f"{path} is a {CLASSIFIERS[arch]} checkpoint ({arch}): a classifier, without the "
                              "language-model head that generates code; classify with it (`sc2 classify`, or "
                              f"load it as {arch})")


def _materialize_buffers(model: nn.Module, device: torch.device) -> None:
    from .rope import RotaryEmbedding

    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.inv_freq = torch.empty(0, device=device)
            module.reset_parameters()


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", size.upper())
    if not match:
        raise ValueError(f"cannot parse size {size!r} (use e.g. '5GB')")
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[match.group(2)]
    return int(float(match.group(1)) * scale)


def save_pretrained(model: nn.Module, directory, max_shard_size: int | str = "5GB") -> None:
    """Write config.json and safetensors (sharded above `max_shard_size`) that transformers loads unchanged."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.copy()
    config.architectures = [type(model).__name__]
    if "architectures" not in config.extra_keys:
        config.extra_keys.append("architectures")
    config.dtype = str(model.dtype).removeprefix("torch.")
    if "dtype" not in config.extra_keys:
        config.extra_keys.append("dtype")
    config.save_pretrained(directory)

    names = _expected_names(model)
    tensors = {name: _standalone(p.detach().to("cpu")) for name, p in names.items()}
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    for stale in [directory / SINGLE_FILE, directory / INDEX_FILE, *directory.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        _atomic_save(shards[0], directory / SINGLE_FILE, metadata)
        return
    weight_map = {}
    width = 5
    for i, shard in enumerate(shards, start=1):
        filename = f"model-{i:0{width}d}-of-{len(shards):0{width}d}.safetensors"
        _atomic_save(shard, directory / filename, metadata)
        weight_map.update({name: filename for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _standalone(tensor: torch.Tensor) -> torch.Tensor:
    """safetensors refuses tensors that share memory (fused q/k/v views): copy only those."""
    tensor = tensor.contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


__all__ = ["load_pretrained", "save_pretrained", "weight_files", "load_state", "parse_size"]
