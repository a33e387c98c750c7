"""The report of `sc2 bench speed`: which metrics it has (METRICS) and the Markdown table of a run's document.

Rows are metrics, columns are engines and then the sc2/peer (and variant/sc2) ratios of the medians, so sc2 and
its peers are read side by side (llama.cpp's Q8_0 against sc2-int8, every other peer against sc2); every cell is
median (min–max) over the rounds.
"""

from __future__ import annotations

from .workers import SC2_VARIANTS

# The sc2 engine a peer is compared with, where it is not sc2.
COUNTERPART = {"llama.cpp-q8_0": "sc2-int8", "transformers-avx2": "sc2-avx2"}

# (key, label, kind, better): kind picks the number format; better says which way is good (for the reader).
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("load_s", "load time (s)", "seconds", "lower"),
    ("ttft_cold_s", "time to first token, first call (s)", "seconds", "lower"),
    ("cold_start_s", "cold start: import + load + first token (s)", "seconds", "lower"),
    ("ttft_s", "time to first token (s)", "seconds", "lower"),
    ("prefill_tok_s", "prefill (tok/s)", "rate", "higher"),
    ("tail_s", "prompt tail after its cached prefix (s)", "seconds", "lower"),
    ("decode_b1_tok_s", "decode, batch 1 (tok/s)", "rate", "higher"),
    ("roofline_b1", "  of bandwidth roofline", "percent", "higher"),
    ("decode_b4_tok_s", "decode, batch 4 (tok/s, all rows)", "rate", "higher"),
    ("roofline_b4", "  of bandwidth roofline", "percent", "higher"),
    ("rss_load_bytes", "peak RSS after load (MB)", "megabytes", "lower"),
    ("rss_peak_bytes", "peak RSS at end (MB)", "megabytes", "lower"),
    ("rss_ratio", "peak RSS / weight bytes", "ratio", "lower"),
    ("rss_added_ratio", "peak RSS above the imports / weight bytes", "ratio", "lower"),
)


def format_value(value: float | None, kind: str) -> str:
    """One number as the table shows it; `kind` is the third field of a METRICS entry ("–": not measured)."""
    if value is None:
        return "–"
    if kind == "seconds":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if kind == "rate":
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    if kind == "percent":
        return f"{value:.0%}" if value >= 0.1 else f"{value:.1%}"
    if kind == "megabytes":
        return f"{value / 1e6:,.0f}"
    return f"{value:.2f}"


def _cell(stats: dict | None, kind: str) -> str:
    if not stats:
        return "–"
    median = format_value(stats["median"], kind)
    if stats["n"] < 2:
        return median
    return f"{median} ({format_value(stats['min'], kind)}–{format_value(stats['max'], kind)})"


def render_table(doc: dict) -> str:
    """Header lines naming the machine, then a Markdown table: rows = metrics, columns = engines + sc2/peer."""
    machine, settings, model, bw = doc["machine"], doc["settings"], doc["model"], doc["bandwidth"]
    engines = doc["engines"]
    variants = [v for v in engines if v in SC2_VARIANTS and v != "sc2"]
    peers = [p for p in engines if p not in SC2_VARIANTS]
    versions = [f"torch {machine['torch']}"]
    for name, entry in engines.items():
        if entry["samples"] and name not in SC2_VARIANTS:
            versions.append(f"{name} {entry['samples'][0].get('version')}")
    builds = {entry["samples"][0].get("build") for name, entry in engines.items()
              if name.startswith("llama.cpp") and entry["samples"]} - {None}
    where = machine["cpu"] + (f", GPU {machine['gpu']}" if machine.get("gpu") else "")
    bw_range = f" ({bw['min_gbps']:.1f}–{bw['max_gbps']:.1f})" if len(bw["samples"]) > 1 else ""
    lines = [
        f"machine: {where}; {machine['threads']} thread{'s' if machine['threads'] != 1 else ''}; "
        f"{', '.join(versions)}; device {machine['device']}",
        f"model: {model['label']}, {model['parameters'] / 1e6:,.1f}M parameters, {settings['dtype']}, "
        f"{model['weight_bytes'] / 1e6:,.1f} MB of weights",
        f"run: {settings['prompt_tokens']}-token random prompt, {settings['new_tokens']} new tokens (greedy, EOS "
        f"ignored), {settings['repeats']} round(s) alternating engines, each measurement in a fresh process",
        f"memory read bandwidth (between engines; each decode set against the higher of the two around it): "
        f"{bw['gbps']:.1f} GB/s{bw_range}; weights read per decode step "
        f"{model['bytes_per_token'] / 1e6:,.1f} MB -> roofline {doc['roofline']['batch1_tok_s']:,.0f} tok/s at "
        f"batch 1, {doc['roofline']['batch4_tok_s']:,.0f} at batch 4",
        "cells: median (min–max); ratio = sc2 median / peer median (tok/s: higher is better; s, MB: lower); "
        "sc2 = the checkpoint's bf16 weights on CPU, CUDA-graph decode on CUDA; sc2-int8 = --quantize int8; "
        "sc2-avx2 / transformers-avx2 = every library capped at AVX2 (transformers in float32, its best there); "
        "sc2-mv / sc2-avx2-mv = without sc2's native decode kernels (torch's mv); sc2-avx2-int8 = --quantize int8 "
        "capped at AVX2; "
        "sc2-eager = no CUDA graph; sc2-compile = torch.compile + CUDA graph; llama.cpp = a GGUF of the same weights "
        "at the same precision, llama.cpp-q8_0 = Q8_0 (set against sc2-int8)",
        *[f"llama.cpp built with: {_features(build)}" for build in sorted(builds)],
        "",
    ]
    columns = ["sc2", *variants, *peers]
    ratios = [(COUNTERPART.get(p, "sc2"), p) for p in peers if COUNTERPART.get(p, "sc2") in engines]
    ratios += [(v, "sc2") for v in variants]
    header = ["metric", *columns, *[f"{a}/{b}" for a, b in ratios]]
    rows = [["available", *[("yes" if engines[c]["available"] else engines[c]["reason"]) for c in columns],
             *["" for _ in ratios]]]
    for key, label, kind, _better in METRICS:
        row = [label, *[_cell(engines[c]["summary"].get(key), kind) for c in columns]]
        for a_name, b_name in ratios:
            a, b = engines[a_name]["summary"].get(key), engines[b_name]["summary"].get(key)
            row.append(f"{a['median'] / b['median']:.2f}x" if a and b and b["median"] else "–")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "| " + " | ".join(padded) + " |"

    lines.append(line(header))
    lines.append("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    lines.extend(line(r) for r in rows)
    return "\n".join(lines) + "\n"


def _features(build: str) -> str:
    """llama.cpp's system info ("CPU : SSE3 = 1 | AVX512 = 0 | ...") as the features that are on."""
    on = [part.split("=")[0].strip() for part in build.replace("CPU :", "").split("|") if part.strip().endswith("= 1")]
    return " ".join(on) or build
