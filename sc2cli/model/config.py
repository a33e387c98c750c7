"""Starcoder2Config: the reference's fields and defaults, read from and written to config.json.

Both rope spellings are accepted: transformers 4.x (top-level `rope_theta` + `rope_scaling`) and 5.x
(`rope_parameters` with `rope_theta` inside). Internally the 5.x form is kept; `to_dict` writes both, so either
generation of transformers loads what we save. Unknown keys are kept and written back unchanged.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

DEFAULT_THETA = 10000.0

# Field -> default, exactly as the reference class (spec §1.1). Order is the order written to config.json.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 49152,
    "hidden_size": 3072,
    "intermediate_size": 12288,
    "num_hidden_layers": 30,
    "num_attention_heads": 24,
    "num_key_value_heads": 2,
    "hidden_act": "gelu_pytorch_tanh",
    "max_position_embeddings": 4096,
    "initializer_range": 0.018042,
    "norm_epsilon": 1e-5,
    "use_cache": True,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "pad_token_id": None,
    "sliding_window": None,
    "attention_dropout": 0.0,
    "residual_dropout": 0.0,
    "embedding_dropout": 0.0,
    "use_bias": True,
    "tie_word_embeddings": True,
    "problem_type": None,
}

POSITIVE_INT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
)
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
# More labels than any classifier has: a bound so a corrupt num_labels cannot make sc2 build a giant label table.
MAX_LABELS = 100_000
# Likewise layers (the largest published models have ~130): the model is built before its weights are checked.
MAX_LAYERS = 1024
# And widths (real ones are below 2**18), so no product of two of them overflows a tensor's size.
MAX_WIDTH = 2**24
WIDTH_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")

# The MLP activations sc2 computes, each exactly as the reference's ACT2FN does (see transformer.ACTIVATIONS).
HIDDEN_ACTS = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu")

# Required keys per rope type (spec §1.2); rope_theta is always filled in.
ROPE_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor",),
    "longrope": ("short_factor", "long_factor"),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
}
# Rope types whose pretraining length defaults to max_position_embeddings (v5 standardisation).
ROPE_WITH_ORIGINAL_LENGTH = ("yarn", "longrope", "llama3")

# What to do about a damaged config.json.
REFETCH = "repair it or download the checkpoint again"

# Keys a checkpoint may carry that must never influence what we run.
IGNORED_KEYS = ("auto_map",)


class Starcoder2Config:
    """Configuration of a StarCoder2 model; attribute names are the config.json keys."""

    model_type = "starcoder2"

    def __init__(self, **kwargs: Any) -> None:
        kwargs = copy.deepcopy(kwargs)
        kwargs.pop("model_type", None)
        for key in IGNORED_KEYS:
            kwargs.pop(key, None)
        for name, default in DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, default))
        self.rope_parameters = _standardize_rope(
            rope_parameters=kwargs.pop("rope_parameters", None),
            rope_scaling=kwargs.pop("rope_scaling", None),
            rope_theta=kwargs.pop("rope_theta", None),
            max_position_embeddings=self.max_position_embeddings,
            original_max_position_embeddings=kwargs.get("original_max_position_embeddings"),
        )
        self.head_dim = kwargs.pop("head_dim", None)
        self._set_labels(kwargs.pop("id2label", None), kwargs.pop("num_labels", None))
        kwargs.pop("label2id", None)  # always derived from id2label
        # Unknown keys become attributes, as in the reference, and are saved back.
        reserved = [key for key in kwargs if key == "extra_keys" or hasattr(type(self), key)]
        if reserved:
            raise ValueError(f"config key {reserved[0]!r} is reserved (a derived value or method), not a setting")
        self.extra_keys = list(kwargs)
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.validate()

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        """Per-head width: an explicit `head_dim` key wins, as in the reference."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def rope_type(self) -> str:
        return self.rope_parameters["rope_type"]

    @property
    def rope_theta(self) -> float:
        return self.rope_parameters["rope_theta"]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        if eos is None:
            return []
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def _set_labels(self, id2label: dict | None, num_labels: int | None) -> None:
        if num_labels is not None and (type(num_labels) is not int or not 0 <= num_labels <= MAX_LABELS):
            raise ValueError(f"config field 'num_labels' must be an integer in [0, {MAX_LABELS}], got {num_labels!r}")
        if id2label is not None and not isinstance(id2label, dict):
            raise ValueError(f"config field 'id2label' must be a JSON object, got {id2label!r}")
        # As in the reference, an explicit num_labels that disagrees with id2label rebuilds the LABEL_i names.
        if id2label is not None and num_labels in (None, len(id2label)):
            try:
                self.id2label = {int(k): str(v) for k, v in id2label.items()}
            except (TypeError, ValueError):
                raise ValueError(f"config field 'id2label' must map integer ids to labels, got {id2label!r}") from None
        else:
            n = 2 if num_labels is None else num_labels
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}

    # ---- validation -----------------------------------------------------------------------------------------
    def validate(self) -> None:
        for name in POSITIVE_INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"config field '{name}' must be a positive integer, got {value!r}")
        for name in WIDTH_FIELDS:
            if getattr(self, name) > MAX_WIDTH:
                raise ValueError(f"config field '{name}' must be at most {MAX_WIDTH}, got {getattr(self, name)}")
        if self.num_hidden_layers > MAX_LAYERS:
            raise ValueError(f"config field 'num_hidden_layers' must be at most {MAX_LAYERS}, "
                             f"got {self.num_hidden_layers}")
        head_dim = self.head_dim
        if head_dim is not None and (not _is_int(head_dim) or not 0 < head_dim <= MAX_WIDTH):
            raise ValueError(f"config field 'head_dim' must be a positive integer up to {MAX_WIDTH}, "
                             f"got {self.head_dim!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"config field 'num_attention_heads' ({self.num_attention_heads}) must be divisible by "
                f"'num_key_value_heads' ({self.num_key_value_heads})"
            )
        if self.head_size < 1:
            raise ValueError(
                f"config field 'hidden_size' ({self.hidden_size}) is smaller than 'num_attention_heads' "
                f"({self.num_attention_heads}), so the heads have no width (set 'head_dim' or fix the sizes)"
            )
        if self.head_size % 2:
            raise ValueError(f"config field 'head_dim' must be even for rotary embeddings, got {self.head_size}")
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
            raise ValueError(f"config field 'sliding_window' must be a positive integer or null, got {self.sliding_window!r}")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"config field 'hidden_act' has unsupported value {self.hidden_act!r}; "
                             f"sc2 runs {', '.join(HIDDEN_ACTS)}")
        for name in ("attention_dropout", "residual_dropout", "embedding_dropout"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"config field '{name}' must be a probability in [0, 1], got {value!r}")
        if not _is_number(self.norm_epsilon) or self.norm_epsilon <= 0:
            raise ValueError(f"config field 'norm_epsilon' must be a positive number, got {self.norm_epsilon!r}")
        for name in ("tie_word_embeddings", "use_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"config field '{name}' must be true or false, got {getattr(self, name)!r}")
        pad = self.pad_token_id
        if pad is not None and (not _is_int(pad) or not 0 <= pad < self.vocab_size):
            raise ValueError(f"config field 'pad_token_id' must be null or a token id below vocab_size "
                             f"({self.vocab_size}), got {pad!r}")
        if self.bos_token_id is not None and not _is_int(self.bos_token_id):
            raise ValueError(f"config field 'bos_token_id' must be null or a token id, got {self.bos_token_id!r}")
        eos = self.eos_token_id
        if eos is not None and not (_is_int(eos) or isinstance(eos, (list, tuple)) and all(map(_is_int, eos))):
            raise ValueError(f"config field 'eos_token_id' must be null, a token id or a list of them, got {eos!r}")
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"config field 'problem_type' must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            raise ValueError("config field 'problem_type' 'single_label_classification' needs num_labels > 1")
        architectures = getattr(self, "architectures", None)
        if architectures is not None and not (
                isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
            raise ValueError(f"config field 'architectures' must be a list of class names, got {architectures!r}")
        _validate_rope(self.rope_parameters, self.head_size)

    # ---- (de)serialisation ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Starcoder2Config":
        model_type = data.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"config field 'model_type' is {model_type!r}; sc2 runs only 'starcoder2' checkpoints")
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "Starcoder2Config":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); {REFETCH}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text; {REFETCH}") from None
        except RecursionError:
            raise ValueError(f"{path} is not valid JSON (nested too deeply); {REFETCH}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object; {REFETCH}")
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Starcoder2Config":
        path = Path(directory)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in {directory}")
        return cls.from_json_file(path)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"model_type": self.model_type}
        data.update({name: getattr(self, name) for name in DEFAULTS})
        if self.head_dim is not None:
            data["head_dim"] = self.head_dim
        # Written in both spellings: 5.x reads rope_parameters, 4.x reads rope_theta/rope_scaling.
        data["rope_parameters"] = copy.deepcopy(self.rope_parameters)
        data["rope_theta"] = self.rope_theta
        scaling = {k: v for k, v in self.rope_parameters.items() if k != "rope_theta"}
        data["rope_scaling"] = scaling if self.rope_type != "default" else None
        data["id2label"] = {str(i): label for i, label in self.id2label.items()}
        data["label2id"] = self.label2id
        for key in self.extra_keys:
            data[key] = copy.deepcopy(getattr(self, key))
        return data

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.json"
        path.write_text(self.to_json_string(), encoding="utf-8")
        return path

    def copy(self, **changes: Any) -> "Starcoder2Config":
        data = self.to_dict()
        if changes.keys() & {"rope_theta", "rope_scaling"} or "rope_parameters" in changes:
            data.pop("rope_parameters")
            data.pop("rope_scaling")
            data.pop("rope_theta")
            changes.setdefault("rope_theta", self.rope_theta)
        data.update(changes)
        return Starcoder2Config.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Starcoder2Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Starcoder2Config({self.to_json_string()})"


def _standardize_rope(
    rope_parameters: dict | None,
    rope_scaling: dict | None,
    rope_theta: float | None,
    max_position_embeddings: int,
    original_max_position_embeddings: int | None,
) -> dict[str, Any]:
    """One dict with rope_type and rope_theta always present; values in the dict win over legacy keys."""
    for name, value in (("rope_parameters", rope_parameters), ("rope_scaling", rope_scaling)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"config field '{name}' must be a JSON object, got {value!r}")
    params = dict(rope_scaling or rope_parameters or {})
    params.setdefault("rope_theta", DEFAULT_THETA if rope_theta is None else rope_theta)
    params.setdefault("rope_type", params.get("type", "default"))
    params.pop("type", None)
    if params["rope_type"] in ROPE_WITH_ORIGINAL_LENGTH:
        if original_max_position_embeddings is not None:  # Phi-3 style top-level key takes priority
            params["original_max_position_embeddings"] = original_max_position_embeddings
        else:
            params.setdefault("original_max_position_embeddings", max_position_embeddings)
    return params


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite int or float (JSON's NaN and Infinity, and booleans, are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Optional numeric rope keys the rotary code computes with: each must be a finite number when present.
ROPE_NUMBERS = ("low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow", "attention_factor", "mscale",
                "mscale_all_dim")


def _validate_rope(params: dict[str, Any], head_size: int) -> None:
    rope_type = params["rope_type"]
    if not isinstance(rope_type, str):
        raise ValueError(f"config field 'rope_parameters.rope_type' must be a string, got {rope_type!r}")
    if rope_type not in ROPE_REQUIRED_KEYS:
        known = ", ".join(ROPE_REQUIRED_KEYS)
        raise ValueError(f"config field 'rope_parameters.rope_type' is {rope_type!r}; known types: {known}")
    missing = [key for key in ROPE_REQUIRED_KEYS[rope_type] if params.get(key) is None]
    if missing:
        raise ValueError(f"config field 'rope_parameters' of type {rope_type!r} is missing {', '.join(missing)}")
    theta = params["rope_theta"]
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0 or not math.isfinite(theta):
        raise ValueError(f"config field 'rope_theta' must be a positive number, got {theta!r}")
    factor = params.get("factor")
    if factor is not None and (not _is_number(factor) or factor <= 0):
        raise ValueError(f"config field 'rope_parameters.factor' must be a positive number, got {factor!r}")
    for key in ROPE_NUMBERS:
        value = params.get(key)
        if value is not None and (not _is_number(value) or key != "attention_factor" and value <= 0):
            raise ValueError(f"config field 'rope_parameters.{key}' must be a positive number, got {value!r}")
    original = params.get("original_max_position_embeddings")
    if rope_type in ROPE_WITH_ORIGINAL_LENGTH and (not _is_int(original) or original < 2):
        raise ValueError("config field 'original_max_position_embeddings' must be an integer of at least 2, "
                         f"got {original!r}")
    if "truncate" in params and not isinstance(params["truncate"], bool):
        raise ValueError(f"config field 'rope_parameters.truncate' must be true or false, got {params['truncate']!r}")
    if rope_type == "dynamic" and head_size <= 2:
        raise ValueError(f"rope type 'dynamic' needs a head size above 2, got {head_size}")
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            values = params[key]
            if not isinstance(values, list) or len(values) != head_size // 2 or not all(map(_is_number, values)):
                raise ValueError(f"config field 'rope_parameters.{key}' must be a list of {head_size // 2} numbers")


NOT_A_CHECKPOINT = "is it a StarCoder2 checkpoint? (a folder with config.json, model.safetensors and tokenizer.json)"


def read_config(directory: Path) -> Starcoder2Config:
    """config.json of a checkpoint folder, every problem as one CheckpointError naming the file."""
    try:
        return Starcoder2Config.from_pretrained(directory)
    except FileNotFoundError:
        raise CheckpointError(f"{directory} has no config.json; {NOT_A_CHECKPOINT}") from None
    except ValueError as err:  # unreadable or invalid config.json, or another model type
        message, config_path = str(err), str(directory / "config.json")
        raise CheckpointError(message if config_path in message else f"{config_path}: {message}") from None
