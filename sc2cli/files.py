"""File safety: nothing the user owns is ever half-written, and links stay what they were."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import Sc2Error


def write_target(path: str | Path) -> Path:
    """The file a write to `path` replaces: through symbolic links, the file they name (so the link stays a link)."""
    return Path(os.path.realpath(path))


def hard_link_problem(path: str | Path) -> str | None:
    """Why `path` cannot be replaced atomically without splitting it from its other names (None when it can)."""
    target = write_target(path)
    links = target.stat().st_nlink if target.exists() else 1
    if links > 1:
        return (f"{path} has {links} hard links: replacing it atomically would leave the other names with the old "
                "text")
    return None


def check_replaceable(path: str | Path) -> None:
    """Fail before any work when `path` could not be replaced safely: read-only, in a read-only folder (no
    temporary file can be made beside it), or hard-linked."""
    target = write_target(path)  # through a symbolic link: the file it names is what gets replaced
    # Root passes os.access whatever the mode, and the atomic rename would replace the file anyway: a file with
    # no write bit at all is read-only for everyone.
    if not os.access(target, os.W_OK) or not target.stat().st_mode & 0o222:
        raise Sc2Error(f"cannot write {path}: it is read-only (the file is unchanged); make it writable (chmod u+w) "
                       "or print the result instead")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise Sc2Error(f"cannot write {path}: its folder is read-only, so no safe temporary file can be made")
    problem = hard_link_problem(path)
    if problem:
        raise Sc2Error(f"cannot write {problem}; it is unchanged (print the result instead)")


def replace_file(path: str | Path, data: bytes) -> None:
    """`atomic_write_bytes` with any OS error as one line that says the file is unchanged."""
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise Sc2Error(f"cannot write {path}: {err.strerror or err}; the file is unchanged") from None


def relative_path(path: str | Path) -> tuple[str, bool]:
    """`path` relative to the current folder, or (when it lies outside it) from the root without its leading
    slash; and whether it lies inside. (What a diff names, so that `patch -p1` run here finds the file.)"""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    if relative == ".." or relative.startswith(".." + os.sep):
        return absolute.lstrip(os.sep), False
    return relative, True


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside the target, flush it to disk, keep the original's permissions, then
    rename over the original. An error or interrupt at any point leaves the original untouched. A symbolic link is
    written through (the file it names is replaced); a file with several hard links is refused, since the rename
    would split it from its other names."""
    problem = hard_link_problem(path)
    if problem:
        raise Sc2Error(f"cannot write {problem}; it is unchanged")
    path = write_target(path)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".sc2tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
