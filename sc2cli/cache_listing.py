"""The StarCoder2 checkpoints on this machine: the Hugging Face cache (`huggingface_hub.scan_cache_dir`) and the
shipped model; and removing a cached one (every revision, or some).

`list_models()` is what `sc2 models` lists, `plan_removal(model, revision)` what `sc2 models rm` deletes once it
is confirmed (`Removal.execute()`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import hub
from .errors import InputError, Sc2Error
from .settings import SHIPPED_MODEL


@dataclass
class Entry:
    model: str
    revision: str  # commit hash, or "shipped"
    refs: list[str] = field(default_factory=list)
    size_bytes: int = 0
    last_modified: float = 0.0
    path: str = ""
    source: str = "hub"  # "hub" or "shipped"

    @property
    def revision_label(self) -> str:
        short = self.revision[:7] if self.source == "hub" else self.revision
        return f"{short} ({', '.join(sorted(self.refs))})" if self.refs else short


@dataclass
class Listing:
    entries: list[Entry]
    warning: str | None = None  # about cache entries that were skipped (corrupt), for the user


def list_models() -> Listing:
    """The shipped model (when installed), then every cached StarCoder2 revision (by model, newest first)."""
    cache = scan_cache()
    entries = shipped_entries() + [entry for _, entry in hub_entries(cache)]
    return Listing(entries, cache_warning(cache))


# ---- removal ----------------------------------------------------------------------------------------------------
@dataclass
class Removal:
    """What deleting `model` (every cached revision, or the `entries` of one revision) frees; nothing is deleted
    before `execute()`."""

    model: str
    entries: list[Entry]
    whole: bool  # every cached revision of the model
    strategy: object  # huggingface_hub's DeleteCacheStrategy

    @property
    def what(self) -> str:
        if self.whole:
            return self.model
        return f"{self.model} revision {', '.join(e.revision_label for e in self.entries)}"

    @property
    def freed_bytes(self) -> int:
        return self.strategy.expected_freed_size

    def execute(self) -> None:
        self.strategy.execute()


def plan_removal(model: str, revision: str | None = None) -> Removal:
    """The cached revisions of `model` to delete: all of them, or those `revision` names (a ref such as "main",
    or at least 4 leading characters of a commit hash)."""
    if model == SHIPPED_MODEL:
        raise InputError(f"{SHIPPED_MODEL} ships inside the sc2 package and cannot be removed")
    cache = scan_cache()
    revisions = [(rev, entry) for rev, entry in hub_entries(cache) if entry.model == model]
    if not revisions:
        raise InputError(f"no cached StarCoder2 model {model}; `sc2 models` lists what is cached")
    if revision is not None:
        revisions = [(rev, e) for rev, e in revisions if matches(e, revision)]
        if not revisions:
            raise InputError(f"{model} has no cached revision {revision!r}; `sc2 models` lists the cached ones")
    # Scope the deletion to this repo: delete_revisions matches bare commit hashes across the whole cache, and a
    # mirrored repo can share commits with its source.
    (repo,) = {r for r in cache.repos if r.repo_type == "model" and r.repo_id == model}
    strategy = dataclasses.replace(cache, repos=frozenset({repo})).delete_revisions(
        *(rev.commit_hash for rev, _ in revisions))
    return Removal(model, [e for _, e in revisions], whole=revision is None, strategy=strategy)


def matches(entry: Entry, revision: str) -> bool:
    return revision in entry.refs or (len(revision) >= 4 and entry.revision.startswith(revision.lower()))


# ---- the cache --------------------------------------------------------------------------------------------------
def scan_cache():
    """The HF cache (huggingface_hub.scan_cache_dir), or None when there is none yet."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir(constants.HF_HUB_CACHE)
    except CacheNotFound:
        return None
    except (OSError, ValueError) as err:
        raise Sc2Error(f"cannot read the Hugging Face cache at {constants.HF_HUB_CACHE} ({err}); "
                       "check HF_HOME / HF_HUB_CACHE") from None


def cache_warning(cache) -> str | None:
    """One line about the corrupt entries the scan skipped, or None."""
    if cache is None or not cache.warnings:
        return None
    first = " ".join(str(cache.warnings[0]).split())
    more = f" (and {len(cache.warnings) - 1} more)" if len(cache.warnings) > 1 else ""
    return f"skipped a corrupt cache entry: {first}{more}; delete it or run `hf cache verify`"


def hub_entries(cache) -> list:
    """(CachedRevisionInfo, Entry) for every cached revision whose config.json says model_type starcoder2."""
    if cache is None:
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            if model_type(rev.snapshot_path) != "starcoder2":
                continue
            found.append((rev, Entry(model=repo.repo_id, revision=rev.commit_hash, refs=sorted(rev.refs),
                                     size_bytes=rev.size_on_disk, last_modified=rev.last_modified,
                                     path=str(rev.snapshot_path))))
    found.sort(key=lambda pair: (pair[1].model.lower(), -pair[1].last_modified))
    return found


def model_type(folder: Path) -> str | None:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("model_type") if isinstance(data, dict) else None


def shipped_entries() -> list[Entry]:
    folder = hub.shipped_model_dir()
    if not (folder / "config.json").is_file():
        return []
    files = [p for p in folder.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    return [Entry(model=SHIPPED_MODEL, revision="shipped", size_bytes=sum(s.st_size for s in stats),
                  last_modified=max((s.st_mtime for s in stats), default=0.0), path=str(folder), source="shipped")]
