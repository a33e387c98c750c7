"""User settings: environment variables over ~/.config/sc2/config.toml over built-in defaults.

Kept free of heavy imports: `sc2 config` must start without torch.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from .errors import InputError

SHIPPED_MODEL = "sc2-tiny"
KEYS = {
    "model": ("SC2_MODEL", SHIPPED_MODEL, "model used when --model is not given"),
    "device": ("SC2_DEVICE", "auto", "auto, cpu, cuda, cuda:N or mps"),
    "dtype": ("SC2_DTYPE", "auto", "auto, float32, bfloat16 or float16"),
}


# What each setting may be (checked where it is stored and wherever it is read, without importing torch).
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def problem(key: str, value: str) -> str | None:
    """What is wrong with `value` for `key` (None: nothing)."""
    if key == "model":
        return None if value.strip() else "must name a model (a Hub id or a checkpoint folder), not be empty"
    if key == "device":
        return None if DEVICE.fullmatch(value.strip().lower()) else f"must be {KEYS['device'][2]}"
    if key == "dtype":
        return None if value.strip().lower() in DTYPES else f"must be {KEYS['dtype'][2]}"
    return None


def normalized(key: str, value: str) -> str:
    """A valid value as stored: device and dtype in lower case, without surrounding spaces."""
    return value.strip().lower() if key in ("device", "dtype") else value


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "sc2" / "config.toml"


def read_file() -> dict[str, str]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid TOML ({err}); fix or delete it") from None
    return {k: str(v) for k, v in data.items() if k in KEYS}


def get(key: str, check: bool = True) -> tuple[str, str]:
    """(value, source) where source is the environment variable, the file (its path), or 'default'. A bad value
    is an InputError naming where it came from (with `check=False`, it is returned as it is)."""
    env, default, _ = KEYS[key]
    if os.environ.get(env):
        value, source = os.environ[env], env
    else:
        stored = read_file()
        if key not in stored:
            return default, "default"
        value, source = stored[key], str(config_path())
    if check:
        wrong = problem(key, value)
        if wrong:
            fix = (f"change it with `sc2 config set {key} VALUE` or remove it with `sc2 config unset {key}`"
                   if source != env else f"change or unset {env}")
            raise InputError(f"the {key} {value!r} from {source} is not valid: it {wrong}; {fix}")
        value = normalized(key, value)
    return value, source


def set_value(key: str, value: str | None) -> Path:
    """Write (or with None remove) one key; the file is replaced atomically."""
    if key not in KEYS:
        raise InputError(f"unknown setting {key!r}; known: {', '.join(KEYS)}")
    if value is not None:
        wrong = problem(key, value)
        if wrong:
            raise InputError(f"the {key} {value!r} is not valid: it {wrong}; nothing was saved")
        value = normalized(key, value)
    data = read_file()
    if value is None:
        data.pop(key, None)
    else:
        data[key] = value
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{k} = {_toml_string(v)}\n" for k, v in sorted(data.items()))
    from .files import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
