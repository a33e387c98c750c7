"""The three Markdown tables of `sc2 bench serve` (cold against warm, the editing flow, concurrency) and the lines
that say what was run and which targets were met. Cells are median (min–max) where there are several samples."""

from __future__ import annotations

from .serve import SPEC_LLAMA_CPP
from .tables import format_value


def _seconds(stats: dict | None) -> str:
    if not stats:
        return "–"
    median = format_value(stats["median"], "seconds")
    if stats["n"] < 2:
        return median
    return f"{median} ({format_value(stats['min'], 'seconds')}–{format_value(stats['max'], 'seconds')})"


def _tokens(value) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _share(value: float | None) -> str:
    return "–" if value is None else (f"{value:.1%}" if value < 0.1 else f"{value:.0%}")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        padded = (c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


def _model_name(model: dict) -> str:
    return f"{model['label']} ({model['parameters'] / 1e6:,.1f}M)"


def render(doc: dict) -> str:
    machine, settings = doc["machine"], doc["settings"]
    threads = settings["threads"] or f"default ({machine['logical_cpus']} logical CPUs)"
    lines = [
        f"machine: {machine['cpu']} ({machine['capability']}); threads: {threads}; torch {machine['torch']}; "
        f"{settings['dtype']}, device {settings['device']}; greedy, n_predict {settings['new_tokens']}",
    ]
    for model in doc["models"]:
        window = model["window"]
        lines.append(f"{_model_name(model)}: tokenizer {model['tokenizer']}; window of {window['path']} from line "
                     f"{window['first_line']}, {window['lines']} lines, {model['window_tokens']:,} tokens, cursor "
                     f"on line {window['cursor_line']} where `{window['typed'].strip()}` is typed")
    for part in (_cold_table, _editing_table, _concurrency_table):
        lines += ["", *part(doc)]
    if doc.get("targets"):
        lines += ["", "targets:"]
        lines += [f"- {t['model']}: {t['target']}: {t['shown']}: {'met' if t['met'] else 'NOT met'}"
                  for t in doc["targets"]]
    return "\n".join(lines) + "\n"


def _cold_table(doc: dict) -> list[str]:
    models = [m for m in doc["models"] if "cold_warm" in m]
    if not models:
        return []
    rounds = doc["settings"]["rounds"]
    out = [f"Cold process against a warm server: the same request, {rounds} round(s) alternating; median (min–max). "
           "Cold: `sc2 infill FILE --line N` from its start to its first byte on stdout and to its exit. Warm: "
           "streamed /infill to a running `sc2 serve`, from sending to the first piece of the middle and to the "
           "last event; first token: the end less the server's decode time. sc2 streams the middle a whole line at "
           "a time, in both.", ""]
    rows = []
    for model in models:
        s = model["cold_warm"]["summary"]
        name = f"{_model_name(model)}, {_tokens(s['prompt_tokens'])}-token prompt"
        rows.append([name, "cold `sc2 infill` process", _seconds(s["cold"]["first_text_s"]), "–",
                     _seconds(s["cold"]["total_s"]), "", ""])
        for kind, label in (("warm", "warm `sc2 serve`, whole prompt evaluated (cache_prompt: false)"),
                            ("warm_reused", "warm, the same prompt again (cache_prompt: true)")):
            rows.append(["", label, _seconds(s[kind]["first_text_s"]), _seconds(s[kind]["first_token_s"]),
                         _seconds(s[kind]["total_s"]), _share(s[kind]["first_text_s_over_cold"]),
                         _share(s[kind]["total_s_over_cold"])])
    return out + _table(["model", "request", "first text (s)", "first token (s)", "total (s)", "first text / cold",
                         "total / cold"], rows)


def _editing_table(doc: dict) -> list[str]:
    models = [m for m in doc["models"] if "editing" in m]
    if not models:
        return []
    keystrokes = doc["settings"]["keystrokes"]
    out = [f"The editing flow: one request, then {keystrokes} more, each after one more typed character; "
           f"\"later\" = median (min–max) of those {keystrokes}. Tokens evaluated: timings.prompt_n. First token: "
           "on the client's clock (the end less the server's decode time); first text: the first streamed piece.",
           ""]
    rows = []
    for model in models:
        s = model["editing"]["summary"]
        name = f"{_model_name(model)}, suffix {s['suffix_tokens']:,} tokens"
        for mode, label in (("reuse_on", "sc2 serve, cache_prompt: true"),
                            ("reuse_off", "sc2 serve, cache_prompt: false")):
            rows.append([name, label, *_editing_cells(s[mode])])
            name = ""
        if "first_token_s_on_over_off" in s:
            on, off = s["reuse_on"]["later"], s["reuse_off"]["later"]
            text = on["first_text_s"]["median"] / off["first_text_s"]["median"] \
                if on["first_text_s"] and off["first_text_s"] else None
            rows.append(["", "reuse on / off", "", _share(s["evaluated_on_over_off"]), "",
                         _share(s["first_token_s_on_over_off"]), _share(text), _share(s["total_s_on_over_off"])])
        peer = model.get("llama_cpp")
        if peer and peer.get("available"):
            rows.append(["", f"llama-server --cache-reuse 256 (measured here, {peer['gguf_type']} GGUF)",
                         *_editing_cells(peer["summary"]["reuse_on"])])
        elif peer:
            rows.append(["", "llama-server --cache-reuse 256", peer["reason"], "", "", "", "", ""])
    for row in SPEC_LLAMA_CPP["rows"]:
        first, later = row["first"], row["later"]
        rows.append(["spec §8: shape s, F16 GGUF, AVX2 CPU (not measured here)", f"llama-server, {row['flags']}",
                     f"{first['evaluated']:,}", f"{later['evaluated']:,}", f"{first['prompt_s']} (prompt time)",
                     f"{later['prompt_s']} (prompt time)", "–", f"{later['total_s']}"])
    return out + _table(["model", "server", "tokens evaluated, first", "tokens evaluated, later",
                         "first token, first (s)", "first token, later (s)", "first text, later (s)",
                         "total, later (s)"], rows)


def _editing_cells(mode: dict) -> list[str]:
    first, later = mode["first"], mode["later"]
    evaluated = later["evaluated"]
    spread = f" ({_tokens(evaluated['min'])}–{_tokens(evaluated['max'])})" if evaluated and evaluated["n"] > 1 else ""
    return [_tokens(first["evaluated"]), (_tokens(evaluated["median"]) + spread) if evaluated else "–",
            format_value(first["first_token_s"], "seconds"), _seconds(later["first_token_s"]),
            _seconds(later["first_text_s"]), _seconds(later["total_s"])]


def _concurrency_table(doc: dict) -> list[str]:
    models = [m for m in doc["models"] if m.get("concurrency")]
    if not models:
        return []
    out = ["Concurrent clients: each sends its own requests one after another (windows around other statements of "
           "its own stdlib file, cache_prompt: true) to `sc2 serve --parallel P`, P = clients.", ""]
    rows = []
    for model in models:
        name = _model_name(model)
        for level in model["concurrency"]:
            s = level["summary"]
            rows.append([name, f"{level['clients']}", f"{s['requests']}" + (f" ({s['errors']} failed)" if s["errors"]
                                                                             else ""),
                         format_value(s["generated_tok_s"], "rate"), format_value(s["evaluated_tok_s"], "rate"),
                         _tokens(s["evaluated_median"]), format_value(s["latency_p50_s"], "seconds"),
                         format_value(s["latency_p95_s"], "seconds"), format_value(s["first_token_p50_s"], "seconds")])
            name = ""
    return out + _table(["model", "clients", "requests", "generated tok/s (all)", "prompt tok/s evaluated (all)",
                         "tokens evaluated per request", "latency p50 (s)", "latency p95 (s)",
                         "first token p50 (s)"], rows)
