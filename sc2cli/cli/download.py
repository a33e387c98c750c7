"""`sc2 download`: fetch a checkpoint into the Hugging Face cache and print its local folder.

Only what sc2 needs is fetched (config, safetensors weights and index, tokenizer, generation config); pickle
`.bin` weights and code never are. HF_HOME, HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE are honoured by
huggingface_hub itself.

Examples:
  sc2 download bigcode/starcoder2-3b
  sc2 download bigcode/starcoder2-7b --revision main
  cd "$(sc2 download bigcode/starcoder2-3b --offline)"
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import hub
from ..errors import CheckpointError, Sc2Error, UsageError
from . import output
from .options import OfflineOpt, RevisionOpt

SAFETENSORS_PATTERNS = [p for p in hub.ALLOW_PATTERNS if p.endswith(".safetensors")]


def download(
    model: Annotated[str, typer.Argument(help="Hub repo id, e.g. bigcode/starcoder2-3b.", show_default=False)],
    revision: RevisionOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """Fetch MODEL into the Hugging Face cache (progress on stderr); print its local folder on stdout."""
    if not hub.REPO_ID.match(model):
        raise UsageError(f"{model!r} is not a Hub repo id like bigcode/starcoder2-3b")
    offline_flag, offline = offline, hub.offline_requested(offline)
    if not offline:
        quiet_progress_unless_tty()
        check_remote_files(model, revision)
        if sys.stderr.isatty():
            output.status(f"fetching {model}{f' ({revision})' if revision else ''} into the Hugging Face cache")
    try:
        path = hub.download(model, revision, offline=offline)
    except hub.ModelNotCached:
        if offline:  # the one thing that would fetch it is the network this run may not use
            ways = [way for way, on in (("drop --offline", offline_flag),
                                        ("unset HF_HUB_OFFLINE", hub.offline_in_environment())) if on]
            rev = f" --revision {revision}" if revision else ""
            raise Sc2Error(f"{model} is not in the local cache, and downloading it needs the network: "
                           f"{' and '.join(ways)}, then run `sc2 download {model}{rev}` again") from None
        raise Sc2Error(f"cannot reach the Hugging Face Hub to fetch {model}; check the network (or HF_ENDPOINT), "
                       "or use a model that is already cached (`sc2 models`)") from None
    warn_if_not_starcoder2(model, path)
    output.write(f"{path}\n")


def quiet_progress_unless_tty() -> None:
    """huggingface_hub's tqdm bars go to stderr: keep them for a person, drop them for logs and pipes."""
    if sys.stderr.isatty() or "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return  # an explicit HF_HUB_DISABLE_PROGRESS_BARS wins either way
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()


def check_remote_files(repo_id: str, revision: str | None) -> None:
    """Refuse, before fetching anything, a repo that has no safetensors weights (e.g. only pickle `.bin`)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:  # one request, no retries: an unreachable Hub must not stall the command
        info = HfApi().model_info(repo_id, revision=revision, expand=["siblings"], timeout=10)
        files = [s.rfilename for s in info.siblings or []]
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise hub.hub_error(err, repo_id, revision) from None
    except Exception:  # the listing is only a courtesy: unreachable Hub, proxy, ... -> snapshot_download decides
        return
    problem = weights_problem(repo_id, files)
    if problem:
        raise CheckpointError(problem)


def weights_problem(repo_id: str, files: list[str]) -> str | None:
    """Why the repo's files cannot make an sc2 checkpoint, or None when they can."""
    top = [f for f in files if "/" not in f]
    if "config.json" not in top:
        return f"{repo_id} has no config.json; it is not a transformers checkpoint sc2 can run"
    if any(fnmatch.fnmatch(f, p) for f in top for p in SAFETENSORS_PATTERNS):
        return None
    if any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files):
        return f"{repo_id} has only pickle weights; sc2 loads safetensors only (convert them, or pick another repo)"
    return f"{repo_id} has no model*.safetensors weights; sc2 cannot run it"


def warn_if_not_starcoder2(repo_id: str, path: Path) -> None:
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    if model_type not in (None, "starcoder2"):
        output.warning(f"{repo_id} is a {model_type!r} model; sc2 runs only starcoder2 checkpoints")
