"""`sc2 info`: what a model is and what it needs (config, parameters, memory per dtype, KV cache), what this
machine offers (devices) and which versions run. Reads config.json only: weights are never loaded.

Examples:
  sc2 info
  sc2 info bigcode/starcoder2-15b
  sc2 info ./my-checkpoint --json | jq .parameters
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import kernels  # (imports no torch: the library is loaded on first use)
from . import common, output
from .options import JsonOpt, RevisionOpt


def info(
    model: Annotated[Optional[str], typer.Argument(
        help="Hub repo id, checkpoint folder or 'sc2-tiny'. Default: $SC2_MODEL, then `sc2 config`.",
        show_default=False)] = None,
    revision: RevisionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show MODEL's configuration, parameter count, memory needs, this machine's devices and versions."""
    from ..inspection import model_report

    report = model_report(common.model_ref(model), revision)
    if json_out:
        output.write_json(report)
    else:
        output.write(render(report))


# ---- human output -----------------------------------------------------------------------------------------------
def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def count(n: int) -> str:
    """A count in the unit that suits it: 950, 231.5 K, 15.8 M, 3.03 B."""
    if n < 1000:
        return str(n)
    for scale, unit, digits in ((1e3, "K", 1), (1e6, "M", 1), (1e9, "B", 2)):
        text = f"{n / scale:.{digits}f}"
        if float(text) < 1000 or unit == "B":  # 999,960 is 1.0 M, not 1000.0 K
            return f"{text} {unit}"
    raise AssertionError("unreachable")


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def model_row(r: dict) -> str:
    """The reference, then where it was found; a folder is named once (the reference is the path)."""
    where = {"preset": f"({r['note']})", "hub": r["path"], "local": None, "shipped": r["path"]}[r["source"]]
    return f"{r['model']}  {where}" if where else r["model"]


def render(r: dict) -> str:
    c = r["config"]
    window = f"{c['sliding_window']} tokens" if c["sliding_window"] else "none"
    rows = [
        ("model", model_row(r)),
        ("architecture", ", ".join(c["architectures"])),
        ("layers", c["num_hidden_layers"]),
        ("hidden size", c["hidden_size"]),
        ("heads", f"{c['num_attention_heads']} query, {c['num_key_value_heads']} key/value, head dim {c['head_dim']}"),
        ("intermediate", c["intermediate_size"]),
        ("vocabulary", c["vocab_size"]),
        ("context", f"{c['max_position_embeddings']} tokens"),
        ("sliding window", window),
        ("rope", f"{c['rope_type']}, theta {c['rope_theta']:.10g}"),
        ("tied embeddings", yes_no(c["tie_word_embeddings"])),
        ("parameters", f"{r['parameters']:,} ({count(r['parameters'])})"),
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
    cpu = d["cpu"]
    rows.append(("cpu", f"{cpu['threads']} threads, {cpu['cores']} cores, {cpu['capability']}"))
    rows.append(("cpu kernels", f"bf16 {bf16_kernels(cpu)}, "
                                f"full-range int8 {yes_no(cpu['int8_vnni'])} (AVX-512 VNNI)"))
    if cpu.get("native_kernels_missing"):
        rows.append(("native kernels", f"none: {cpu['native_kernels_missing']}"))
    for g in d["cuda"]:
        rows.append((f"cuda:{g['index']}", f"{g['name']}, {gib(g['memory_bytes'])}, compute {g['capability']}"))
    if not d["cuda"]:
        rows.append(("cuda", "none"))
    rows.append(("mps", "available" if d["mps"] else "none"))
    rows.append(("auto picks", f"{d['auto']['device']}, {d['auto']['dtype']}"))
    rows.append(("versions", ", ".join(f"{k} {v or 'missing'}" for k, v in r["versions"].items())))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)


BF16_PRODUCTS = {"onednn": "oneDNN bf16 GEMM", "float32": "float32 GEMM (no bf16 arithmetic)"}
NO_BF16_ARITHMETIC = {"onednn": "no bf16 instructions", "float32": "no bf16 arithmetic"}


def bf16_kernels(cpu: dict) -> str:
    """How bf16 weights are multiplied on this CPU: decode steps, then prompts (`CpuCapability.bf16_products`,
    model/linear.py)."""
    from ..devices import CpuCapability  # (torch comes with it: only once a report is rendered)
    from ..model.linear import prompts_on_kernel

    products = CpuCapability(str(cpu["capability"]), cpu["onednn_bf16"], cpu["int8_vnni"]).bf16_products
    if products is None:
        return "on F.linear (no AVX2)"
    if prompts_on_kernel(products, cpu.get("native_kernels")):  # a prompt's rows take the kernel too
        return f"by {native_kernels(cpu)}, prompts too ({NO_BF16_ARITHMETIC[products]})"
    return f"by {native_kernels(cpu)} + {BF16_PRODUCTS[products]}"


def native_kernels(cpu: dict) -> str:
    """The decode kernel: sc2's own (sc2cli/kernels) in the instruction set it runs here, or torch's `mv`."""
    native = cpu.get("native_kernels")
    return f"sc2 {kernels.ISA_NAMES[native]} kernel" if native else "mv"
