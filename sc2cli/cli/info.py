"""`sc2 info`: what a model is and what it needs (config, parameters, memory per dtype, KV cache), what this
machine offers (devices) and which versions run. Reads config.json only: weights are never loaded.

Examples:
  sc2 info
  sc2 info bigcode/starcoder2-15b
  sc2 info ./my-checkpoint --json | jq .parameters
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import hub
from ..settings import SHIPPED_MODEL
from . import common, output
from .options import JsonOpt, RevisionOpt

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PRESET_REPOS = ("bigcode/starcoder2-3b", "bigcode/starcoder2-7b", "bigcode/starcoder2-15b")
CLASSES = {
    "Starcoder2ForSequenceClassification": "Starcoder2ForSequenceClassification",
    "Starcoder2ForTokenClassification": "Starcoder2ForTokenClassification",
}


def info(
    model: Annotated[Optional[str], typer.Argument(
        help="Hub repo id, checkpoint folder or 'sc2-tiny'. Default: $SC2_MODEL, then `sc2 config`.",
        show_default=False)] = None,
    revision: RevisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show MODEL's configuration, parameter count, memory needs, this machine's devices and versions."""
    ref = common.model_ref(model)
    config, source = find_config(ref, revision)
    report = {"model": ref, **source, "config": config_summary(config), **sizes(config), "devices": devices(),
              "versions": versions()}
    if json_out:
        output.write_json(report)
    else:
        output.write(render(report))


# ---- finding the config -----------------------------------------------------------------------------------------
def find_config(ref: str, revision: str | None):
    """(config, {"source", "path", "revision", "note"}) without downloading anything."""
    from ..model.presets import preset_config

    source = {"source": "local", "path": None, "revision": None, "note": None}
    if ref == SHIPPED_MODEL:
        source["source"] = "shipped"
    elif not Path(ref).expanduser().is_dir() and hub.REPO_ID.match(ref):
        source["source"] = "hub"
    try:
        path = hub.resolve(ref, revision=revision, offline=True)
    except hub.ModelNotCached:
        if ref.lower() not in PRESET_REPOS or revision is not None:
            raise hub.ModelNotCached(f"model {ref} is not in the local cache; fetch it with `sc2 download {ref}`"
                                     f"{f' --revision {revision}' if revision else ''}") from None
        source.update(source="preset", note="config from built-in preset; not downloaded")
        return preset_config(ref), source
    if path.parent.name == "snapshots":
        source["revision"] = path.name
    source["path"] = str(path)
    from ..checkpoint import load_config

    return load_config(path), source


def config_summary(config) -> dict:
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


# ---- sizes ------------------------------------------------------------------------------------------------------
def build_on_meta(config):
    """The model the checkpoint describes, built on the meta device: shapes only, no memory, no weights."""
    import torch

    from .. import model as modeling

    names = getattr(config, "architectures", None) or []
    name = next((CLASSES[n] for n in names if n in CLASSES), "Starcoder2ForCausalLM")
    with torch.device("meta"):
        return getattr(modeling, name)(config)


def sizes(config) -> dict:
    from torch import nn

    model = build_on_meta(config)
    unique = {id(p): p for p in model.parameters()}
    parameters = sum(p.numel() for p in unique.values())
    # int8 weight-only: Linear weights as int8 with one bf16 scale per output row; everything else in bf16.
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear = {id(m.weight): m.weight for m in model.modules()
              if isinstance(m, nn.Linear) and id(m.weight) not in embedding_ids}
    linear_numel = sum(w.numel() for w in linear.values())
    scales = sum(w.shape[0] for w in linear.values())
    weights = {dtype: parameters * size for dtype, size in DTYPE_BYTES.items()}
    weights["int8"] = linear_numel + 2 * (parameters - linear_numel + scales)

    window = min(config.sliding_window or config.max_position_embeddings, config.max_position_embeddings)
    per_token_elems = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_size  # keys + values
    kv_per_token = {dtype: per_token_elems * size for dtype, size in DTYPE_BYTES.items()}
    kv_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "int8": "bfloat16"}
    return {
        "parameters": parameters,
        "memory": {dtype: {"weights_bytes": w, "with_kv_cache_bytes": w + kv_per_token[kv_dtype[dtype]] * window}
                   for dtype, w in weights.items()},
        "kv_cache": {"window_tokens": window, "bytes_per_token": kv_per_token,
                     "bytes_full_window": {d: b * window for d, b in kv_per_token.items()}},
    }


# ---- this machine -----------------------------------------------------------------------------------------------
def devices() -> dict:
    import torch

    from ..devices import _mps_available, resolve_device, resolve_dtype

    cuda = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            cuda.append({"index": i, "name": props.name, "memory_bytes": int(props.total_memory),
                         "capability": f"{props.major}.{props.minor}"})
    auto = resolve_device("auto")
    return {
        "cpu": {"threads": torch.get_num_threads(), "cores": os.cpu_count(),
                "capability": torch.backends.cpu.get_cpu_capability()},
        "cuda": cuda,
        "mps": _mps_available(),
        "auto": {"device": str(auto), "dtype": str(resolve_dtype("auto", auto)).removeprefix("torch.")},
    }


def versions() -> dict:
    from importlib import metadata

    import sc2cli

    found = {}
    for dist in ("sc2cli", "torch", "tokenizers", "huggingface_hub", "safetensors"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    found["sc2cli"] = getattr(sc2cli, "__version__", None) or found["sc2cli"]  # a source checkout wins
    found["python"] = platform.python_version()
    return found


# ---- human output -----------------------------------------------------------------------------------------------
def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def render(r: dict) -> str:
    c = r["config"]
    where = {"preset": f"({r['note']})", "hub": f"{r['path']}", "local": r["path"], "shipped": r["path"]}
    window = f"{c['sliding_window']} tokens" if c["sliding_window"] else "none"
    rows = [
        ("model", f"{r['model']}  {where[r['source']]}"),
        ("architecture", ", ".join(c["architectures"])),
        ("layers", c["num_hidden_layers"]),
        ("hidden size", c["hidden_size"]),
        ("heads", f"{c['num_attention_heads']} query, {c['num_key_value_heads']} key/value, head dim {c['head_dim']}"),
        ("intermediate", c["intermediate_size"]),
        ("vocabulary", c["vocab_size"]),
        ("context", f"{c['max_position_embeddings']} tokens"),
        ("sliding window", window),
        ("rope", f"{c['rope_type']}, theta {c['rope_theta']:.10g}"),
        ("tied embeddings", "yes" if c["tie_word_embeddings"] else "no"),
        ("parameters", f"{r['parameters']:,} ({r['parameters'] / 1e9:.2f} B)"),
    ]
    kv = r["kv_cache"]
    for dtype, m in r["memory"].items():
        label = "int8 (weight-only)" if dtype == "int8" else dtype
        rows.append((f"memory {label}", f"{gib(m['weights_bytes'])} weights, "
                                        f"{gib(m['with_kv_cache_bytes'])} with a full KV cache"))
    rows.append(("KV cache", f"{gib(kv['bytes_per_token']['bfloat16'])} per token in bfloat16, "
                             f"{gib(kv['bytes_full_window']['bfloat16'])} for {kv['window_tokens']} tokens "
                             f"(x2 in float32)"))
    d = r["devices"]
    rows.append(("cpu", f"{d['cpu']['threads']} threads, {d['cpu']['cores']} cores, {d['cpu']['capability']}"))
    for g in d["cuda"]:
        rows.append((f"cuda:{g['index']}", f"{g['name']}, {gib(g['memory_bytes'])}, compute {g['capability']}"))
    if not d["cuda"]:
        rows.append(("cuda", "none"))
    rows.append(("mps", "available" if d["mps"] else "none"))
    rows.append(("auto picks", f"{d['auto']['device']}, {d['auto']['dtype']}"))
    rows.append(("versions", ", ".join(f"{k} {v or 'missing'}" for k, v in r["versions"].items())))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)
