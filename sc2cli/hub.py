"""Model references to local checkpoint folders: a local path, the model shipped with sc2, or a Hub repo id.

Hub checkpoints go to the standard Hugging Face cache (HF_HOME / HF_HUB_CACHE / HF_TOKEN / HF_HUB_OFFLINE are
honoured by huggingface_hub itself). Only the files sc2 needs are fetched: never pickle weights, never code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import Sc2Error, InputError
from .settings import SHIPPED_MODEL

# What a StarCoder2 checkpoint needs; *.bin / *.py / *.pt are never fetched.
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotCached(Sc2Error):
    pass


def shipped_model_dir() -> Path:
    return Path(__file__).parent / "shipped" / SHIPPED_MODEL


def offline_in_environment() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def offline_requested(offline: bool) -> bool:
    return offline or offline_in_environment()


def resolve(ref: str, revision: str | None = None, offline: bool = False, weights: bool = True) -> Path:
    """The local folder holding `ref`, downloading from the Hub on first use unless offline. `weights=False`:
    only the config and tokenizer files are needed (a remote engine runs the model), so only they are fetched."""
    if ref == SHIPPED_MODEL:
        path = shipped_model_dir()
        if not (path / "config.json").is_file():
            raise Sc2Error(f"the shipped model is missing from {path}; reinstall sc2 or run `make tiny-model`")
        return path
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():  # a file of a checkpoint (tokenizer.json, model.safetensors), not the checkpoint
        hint = f"; its folder {path.parent} holds one" if (path.parent / "config.json").is_file() else ""
        raise InputError(f"model path {ref} is a file, not a checkpoint folder (the folder with config.json, "
                         f"model.safetensors and tokenizer.json){hint}")
    if ref.startswith((".", "/", "~")) or os.sep in ref.rstrip(os.sep) and not REPO_ID.match(ref):
        raise InputError(f"model path {ref} does not exist; give a checkpoint folder, a Hub repo id like "
                         f"bigcode/starcoder2-3b, or the shipped model {SHIPPED_MODEL!r}")
    if not REPO_ID.match(ref):
        raise InputError(
            f"model {ref!r} is neither a folder nor a Hub repo id like bigcode/starcoder2-3b "
            f"(nor the shipped model {SHIPPED_MODEL!r})"
        )
    return download(ref, revision, offline=offline, weights=weights)


def download(repo_id: str, revision: str | None = None, offline: bool = False, weights: bool = True) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = offline_requested(offline)
    try:
        folder = snapshot_download(
            repo_id, revision=revision, local_files_only=offline,
            allow_patterns=ALLOW_PATTERNS if weights else [p for p in ALLOW_PATTERNS if "safetensors" not in p],
        )
    except LocalEntryNotFoundError:
        rev = f" --revision {revision}" if revision else ""
        if offline_in_environment():  # `sc2 download` would be offline too: say what turns the network on
            reason, fix = "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE and fetch it with"
        elif offline:
            reason, fix = "offline mode is on", "fetch it with"
        else:
            reason, fix = "the Hub cannot be reached", "check the network, then fetch it with"
        raise ModelNotCached(
            f"model {repo_id} is not in the local cache and {reason}; {fix} `sc2 download {repo_id}{rev}`"
        ) from None
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise hub_error(err, repo_id, revision) from None
    return Path(folder)


def hub_error(err: Exception, repo_id: str, revision: str | None) -> Sc2Error:
    """The one-line sc2 error for a Hub refusal (gated, unknown repo, unknown revision)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(err, GatedRepoError):  # a subclass of RepositoryNotFoundError: test it first
        return Sc2Error(f"{repo_id} is gated: accept its licence on huggingface.co and set HF_TOKEN")
    if isinstance(err, RepositoryNotFoundError):
        return InputError(f"no model {repo_id} on the Hub (or it is private: set HF_TOKEN)")
    return InputError(f"{repo_id} has no revision {revision!r}")
