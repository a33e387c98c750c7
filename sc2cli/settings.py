"""User settings: environment variables over ~/.config/sc2/config.toml over built-in defaults.

Kept free of heavy imports: `sc2 config` must start without torch.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from .errors import InputError

SHIPPED_MODEL = "sc2-tiny"
KEYS = {
    "model": ("SC2_MODEL", SHIPPED_MODEL, "model used when --model is not given"),
    "device": ("SC2_DEVICE", "auto", "auto, cpu, cuda, cuda:N or mps"),
    "dtype": ("SC2_DTYPE", "auto", "auto, float32, bfloat16 or float16"),
}


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


def get(key: str) -> tuple[str, str]:
    """(value, source) where source is the environment variable, the file, or 'default'."""
    env, default, _ = KEYS[key]
    if os.environ.get(env):
        return os.environ[env], env
    stored = read_file()
    if key in stored:
        return stored[key], str(config_path())
    return default, "default"


def set_value(key: str, value: str | None) -> Path:
    """Write (or with None remove) one key; the file is replaced atomically."""
    if key not in KEYS:
        raise InputError(f"unknown setting {key!r}; known: {', '.join(KEYS)}")
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
