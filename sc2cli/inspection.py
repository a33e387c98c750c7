"""What a model is and what it needs, without downloading or loading anything: its config (from a checkpoint
folder, the shipped model, the local Hugging Face cache, or the built-in preset of a released checkpoint), a
summary of it, its sizes (`model.sizes`), and this machine's devices and versions (`machine`).

`model_report(ref, revision)` is the whole of `sc2 info`'s report.
"""

from __future__ import annotations

from pathlib import Path

from . import hub
from .settings import SHIPPED_MODEL

# Released checkpoints whose config is built in (`model.presets`): `sc2 info` describes them before a download.
PRESET_REPOS = ("bigcode/starcoder2-3b", "bigcode/starcoder2-7b", "bigcode/starcoder2-15b")


def find_config(ref: str, revision: str | None = None):
    """(config, {"source", "path", "revision", "note"}) without downloading anything. "source" is "shipped",
    "local" (a folder), "hub" (the local cache) or "preset" (a released checkpoint that is not cached)."""
    from .model.presets import preset_config

    source = {"source": "local", "path": None, "revision": None, "note": None}
    if ref == SHIPPED_MODEL:
        source["source"] = "shipped"
    elif not Path(ref).expanduser().is_dir() and hub.REPO_ID.match(ref):
        source["source"] = "hub"
    try:
        path = hub.resolve(ref, revision=revision, offline=True)
    except hub.ModelNotCached:
        if ref.lower() not in PRESET_REPOS or revision is not None:
            command = f"sc2 download {ref}" + (f" --revision {revision}" if revision else "")
            raise hub.ModelNotCached(f"model {ref} is not in the local cache; fetch it with `{command}`") from None
        source.update(source="preset", note="config from built-in preset; not downloaded")
        return preset_config(ref), source
    if path.parent.name == "snapshots":
        source["revision"] = path.name
    source["path"] = str(path)
    from .checkpoint import load_config

    return load_config(path), source


def config_summary(config) -> dict:
    """The fields of a config a person asks about first, under the reference's names (head_dim: the per-head
    width, whether given or derived)."""
    return {
        "architectures": list(getattr(config, "architectures", None) or ["Starcoder2ForCausalLM"]),
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_size,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "sliding_window": config.sliding_window,
        "rope_type": config.rope_type,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "hidden_act": config.hidden_act,
        "use_bias": bool(config.use_bias),
    }


def model_report(ref: str, revision: str | None = None) -> dict:
    """{"model", "source", "path", "revision", "note", "config", "parameters", "memory", "kv_cache", "devices",
    "versions"}: what `ref` is, what it needs, and what this machine offers. Reads config.json only."""
    from . import machine
    from .model.sizes import sizes

    config, source = find_config(ref, revision)
    return {"model": ref, **source, "config": config_summary(config), **sizes(config),
            "devices": machine.devices(), "versions": machine.versions()}
