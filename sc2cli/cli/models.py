"""`sc2 models`: the StarCoder2 checkpoints on this machine (Hugging Face cache and the shipped model).

Examples:
  sc2 models
  sc2 models --json
  sc2 models | cut -f1
  sc2 models rm bigcode/starcoder2-3b --yes
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from .. import hub
from ..errors import Sc2Error, UsageError
from ..settings import SHIPPED_MODEL
from . import output
from .options import RevisionOpt

app = typer.Typer(help="List cached StarCoder2 checkpoints; `sc2 models rm` removes one.",
                  invoke_without_command=True, no_args_is_help=False)


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

    def as_json(self) -> dict:
        data = asdict(self)
        data["last_modified"] = datetime.fromtimestamp(self.last_modified, timezone.utc).isoformat(timespec="seconds")
        data["size"] = human_size(self.size_bytes)
        return data


@app.callback()
def list_models(ctx: typer.Context, json_out: Annotated[bool, typer.Option(
        "--json", help="Print a JSON list of objects on stdout.")] = False) -> None:
    """List cached StarCoder2 checkpoints with size on disk, revision and last change."""
    if ctx.invoked_subcommand is not None:
        return
    entries = shipped_entries() + [entry for _, entry in hub_entries(scan_cache(warn=True))]
    if json_out:
        output.write_json([e.as_json() for e in entries])
    elif sys.stdout.isatty():
        print_table(entries)
    else:  # piped: one tab-separated line per model, no header (`sc2 models | cut -f1`)
        for e in entries:
            output.write("\t".join([e.model, e.revision_label, human_size(e.size_bytes), when(e.last_modified),
                                    e.path]) + "\n")


@app.command("rm")
def remove(
    model: Annotated[str, typer.Argument(help="Hub repo id as `sc2 models` lists it.", show_default=False)],
    revision: RevisionOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete MODEL (every cached revision, or only --revision) from the Hugging Face cache."""
    if model == SHIPPED_MODEL:
        raise UsageError(f"{SHIPPED_MODEL} ships inside the sc2 package and cannot be removed")
    cache = scan_cache(warn=False)
    revisions = [(rev, entry) for rev, entry in hub_entries(cache) if entry.model == model]
    if not revisions:
        raise UsageError(f"no cached StarCoder2 model {model}; `sc2 models` lists what is cached")
    if revision is not None:
        revisions = [(rev, e) for rev, e in revisions if matches(e, revision)]
        if not revisions:
            raise UsageError(f"{model} has no cached revision {revision!r}; `sc2 models` lists the cached ones")
    # Scope the deletion to this repo: delete_revisions matches bare commit hashes across the whole cache, and a
    # mirrored repo can share commits with its source.
    (repo,) = {r for r in cache.repos if r.repo_type == "model" and r.repo_id == model}
    strategy = dataclasses.replace(cache, repos=frozenset({repo})).delete_revisions(
        *(rev.commit_hash for rev, _ in revisions))
    what = model if revision is None else f"{model} revision {', '.join(e.revision_label for _, e in revisions)}"
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not removing {what} without confirmation (stdin is not a terminal); add --yes")
        if not typer.confirm(f"Remove {what} ({human_size(strategy.expected_freed_size)}) from the cache?", err=True):
            output.status("nothing removed")
            raise typer.Exit(1)
    strategy.execute()
    output.status(f"removed {what} ({human_size(strategy.expected_freed_size)} freed)")


def matches(entry: Entry, revision: str) -> bool:
    return revision in entry.refs or (len(revision) >= 4 and entry.revision.startswith(revision.lower()))


# ---- the cache --------------------------------------------------------------------------------------------------
def scan_cache(warn: bool):
    """The HF cache (huggingface_hub.scan_cache_dir), or None when there is none yet."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(constants.HF_HUB_CACHE)
    except CacheNotFound:
        return None
    except (OSError, ValueError) as err:
        raise Sc2Error(f"cannot read the Hugging Face cache at {constants.HF_HUB_CACHE} ({err}); "
                       "check HF_HOME / HF_HUB_CACHE") from None
    if warn and cache.warnings:
        first = " ".join(str(cache.warnings[0]).split())
        more = f" (and {len(cache.warnings) - 1} more)" if len(cache.warnings) > 1 else ""
        output.warning(f"skipped a corrupt cache entry: {first}{more}; delete it or run `hf cache verify`")
    return cache


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


# ---- formatting -------------------------------------------------------------------------------------------------
def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def print_table(entries: list[Entry]) -> None:
    if not entries:
        output.status("no StarCoder2 models cached; fetch one with `sc2 download bigcode/starcoder2-3b`")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False)
    columns = [("MODEL", "left"), ("REVISION", "left"), ("SIZE", "right"), ("MODIFIED", "left")]
    rows = [[e.model, e.revision_label, human_size(e.size_bytes), when(e.last_modified)] for e in entries]
    widths = [max(len(name), *(len(r[i]) for r in rows)) for i, (name, _) in enumerate(columns)]
    if sum(widths) + 2 * len(widths) + max(len(e.path) for e in entries) <= console.width:
        columns.append(("PATH", "left"))  # only when it fits on one line; `--json` and pipes always have it
        for r, e in zip(rows, entries):
            r.append(e.path)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)
    for r in rows:
        table.add_row(*r)
    console.print(table)
