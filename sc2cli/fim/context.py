"""Repository context from disk: the files given to the model before the edited one."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .formats import ContextFile
from .source import BINARY_SNIFF


def load_context(paths: list[str], edited: str | None = None) -> list[ContextFile]:
    """The text files under `paths` (each file given, folders walked, hidden entries skipped, the edited file
    left out) in prompt order: farthest from the edited file's folder first, so the nearest ones stand right before
    it (and are the last to be left out when the prompt is too long); by path within one distance."""
    edited_path = Path(edited).resolve() if edited else None
    found: dict[Path, Path] = {}  # resolved -> as given, each file once
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise InputError(f"context path {given} does not exist", field="context")
        candidates = [root] if root.is_file() else sorted(
            p for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        for path in candidates:
            resolved = path.resolve()
            if resolved != edited_path:
                found.setdefault(resolved, path)
    ordered = sorted(found.items(), key=lambda item: (-_distance(item[0], edited_path), item[1].as_posix()))
    files = []
    for _, path in ordered:
        data = path.read_bytes()
        if b"\x00" in data[:BINARY_SNIFF]:
            continue  # binary files are no context
        text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        files.append(ContextFile(path.as_posix(), text))
    return files


def _distance(path: Path, edited: Path | None) -> int:
    """Folder steps from the edited file's folder to `path`'s (0: the same folder)."""
    if edited is None:
        return 0
    a, b = path.parent.parts, edited.parent.parts
    common = len(os.path.commonprefix([a, b]))
    return (len(a) - common) + (len(b) - common)
