"""`sc2 bench serve`: what a warm `sc2 serve` gives an editor, measured from the client's side.

Three parts, on each model asked for (the shipped model, random weights of the ~183M shape "s", or a checkpoint):

1. Cold against warm: the same infill request as a fresh `sc2 infill FILE --line N` process (time to its first
   byte on stdout, and to its exit) and as a streamed `/infill` request to a warm `sc2 serve` (time to the first
   piece of the middle, and to the last event), twice: with `cache_prompt: false` (the whole prompt evaluated: the
   server is only warm) and again with `cache_prompt: true` (the same prompt again: all but its last token
   reused). Rounds alternate the three; medians and ranges.
2. The editing flow (spec serving-protocols.md §8): a ~1,500-token window of textwrap.py with the cursor on a fresh
   line in a method body; one request, then one more after each typed character of the statement that belongs
   there (`keystrokes` of them), greedy, `n_predict` 16. Per request: prompt tokens evaluated (`timings.prompt_n`),
   reused (`timings.cache_n`) and time to first token, with `cache_prompt` true and false. Each keystroke sends
   the reuse-on request first, then the reuse-off one: the slot then holds the same tokens (prompt and greedy
   middle) for the next reuse-on request as a run of reuse-on requests alone would leave, and drifts of the
   machine's speed hit both alike. With `llama_server`, llama.cpp's server (`--cache-reuse 256`, as in §8) gets
   the same requests on a GGUF of the same weights.
3. Concurrency: 1, 2, 4 clients (threads), each sending its own stream of different requests (windows around
   other statements of its own stdlib file) to `sc2 serve --parallel P` (P = clients): generated tokens/s of all
   of them together, and each request's latency (p50, p95).

Time to first token is taken on the client's clock in two ways (client.py): the first streamed piece of text, and
the first token made (the answer's end less the server's decode time). They differ because sc2 streams the middle a
whole line at a time (its middle filter keeps a line until it knows the line belongs to the middle); a cold
`sc2 infill` prints the same way, so its first byte is its first whole line.

Every server listens on a free port of 127.0.0.1 and is stopped (SIGTERM) when its part ends, however it ends
(servers.py). Beside this module: workload.py (texts and checkpoints), client.py (the timed /infill stream),
servers.py (processes), serve_tables.py (the three tables).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..machine import versions
from ..tokenizer import Tokenizer
from .checkpoints import DTYPE_NAMES, GGUF_SUFFIX, SHAPES, NoGGUF, peer_gguf  # noqa: F401 (SHAPES: for the command)
from .client import RequestFailed, infill_body, stream_infill
from .machine import cpu_capability_label, cpu_model
from .servers import ProcessFailed, llama_server, process_env, sc2_command, sc2_server, time_cold
from .workload import Served, Window, concurrent_windows, editing_window, served_checkpoint, warm_up_window

FIM_MARKERS_AFTER_PREFIX = 2  # <fim_suffix> and <fim_middle>: evaluated again with the suffix on every keystroke
CHANGED_SLACK = 8  # "the suffix plus what changed": a keystroke changes at most a few tokens at the cursor
TARGETS = {"warm_over_cold": 0.05, "reuse_first_token_over_off": 1 / 3}
PEER_CONTEXT = 4096  # llama-server's -c, as in spec §8

# llama.cpp's editing flow as measured in spec serving-protocols.md §8 (an AVX2 machine; not measured here).
SPEC_LLAMA_CPP = {
    "source": "spec serving-protocols.md §8, not measured here",
    "setup": "llama-server of llama-cpp-python 0.3.36, shape s as an F16 GGUF, 2 threads on an AVX2 CPU, -c 4096 "
             "-np 1; textwrap.py, 6,000-character prefix + 2,000-character suffix; n_predict 16, temperature 0",
    "rows": [
        {"flags": "default", "first": {"evaluated": 2049, "prompt_s": 7.2, "total_s": 7.9},
         "later": {"evaluated": 2048, "prompt_s": 7.0, "total_s": 7.6}},
        {"flags": "--cache-reuse 256", "first": {"evaluated": 2049, "prompt_s": 7.5, "total_s": 8.2},
         "later": {"evaluated": 513, "prompt_s": 2.1, "total_s": 2.7}},
    ],
}


class BenchFailed(RuntimeError):
    """A server or process the benchmark needs failed (its message says which and why)."""


@dataclass
class ServeBenchRequest:
    models: Sequence[str] = ("shipped", "s")  # shapes (SHAPES) or checkpoint references
    dtype: str = "bfloat16"
    device: str = "cpu"
    threads: int | None = None  # None: each process's default
    rounds: int = 3
    keystrokes: int = 20
    file_tokens: int = 1500
    new_tokens: int = 16
    clients: Sequence[int] = (1, 2, 4)
    requests: int = 12  # per concurrency level, shared among its clients
    parts: Sequence[str] = ("cold", "editing", "concurrency")
    llama_server: Path | None = None
    gguf: dict[str, Path] = field(default_factory=dict)  # model key -> GGUF for the llama.cpp peer


PARTS = ("cold", "editing", "concurrency")


def check(request: ServeBenchRequest) -> None:
    """ValueError for a request that cannot run (before anything starts)."""
    if request.dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {request.dtype!r}; use {', '.join(DTYPE_NAMES)}")
    for name in ("rounds", "file_tokens", "new_tokens", "requests"):
        if getattr(request, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if request.keystrokes < 1:
        raise ValueError("--keystrokes must be at least 1")
    if not request.clients or any(c < 1 for c in request.clients):
        raise ValueError("--clients must be positive numbers, e.g. 1,2,4")
    if unknown := [p for p in request.parts if p not in PARTS]:
        raise ValueError(f"unknown part {unknown[0]!r}; use {', '.join(PARTS)}")
    if request.threads is not None and request.threads < 1:
        raise ValueError("--threads must be at least 1")


def run_bench(request: ServeBenchRequest, progress: Callable[[str], None] = lambda message: None) -> dict:
    """Every part on every model; the JSON document (each request's numbers, and the summaries)."""
    check(request)
    doc = {"machine": machine_facts(request.threads), "settings": settings(request), "models": [],
           "llama_cpp_spec": SPEC_LLAMA_CPP}
    with tempfile.TemporaryDirectory(prefix="sc2-bench-serve-") as tmp:
        for key in request.models:
            served = served_checkpoint(key, request.dtype, progress)
            doc["models"].append(measure_model(served, request, Path(tmp), progress))
    doc["targets"] = targets(doc)
    return doc


def machine_facts(threads: int | None) -> dict:
    found = versions()
    return {"cpu": cpu_model(), "capability": cpu_capability_label(), "logical_cpus": os.cpu_count(),
            "threads": threads, "torch": found["torch"], "sc2cli": found["sc2cli"], "python": found["python"],
            "platform": platform.platform()}


def settings(request: ServeBenchRequest) -> dict:
    return {**asdict(request), "llama_server": str(request.llama_server) if request.llama_server else None,
            "gguf": {key: str(path) for key, path in request.gguf.items()}, "greedy": True}


def measure_model(served: Served, request: ServeBenchRequest, tmp: Path, progress: Callable[[str], None]) -> dict:
    tokenizer = Tokenizer.from_dir(served.path)
    window = editing_window(tokenizer, request.file_tokens, request.keystrokes)
    warm = warm_up_window(tokenizer, request.file_tokens)
    env = process_env(request.threads)
    entry = {"key": served.key, "label": served.label, "checkpoint": str(served.path),
             "parameters": served.parameters, "tokenizer": served.tokenizer_note or "the checkpoint's own",
             "window": window.describe(), "window_tokens": len(tokenizer.encode_text(window.text())),
             "suffix_tokens": len(tokenizer.encode_text(window.after)), "servers": []}
    tag = f"{served.label} ({served.parameters / 1e6:,.1f}M)"

    def say(message: str) -> None:
        progress(f"{tag}: {message}")

    @contextlib.contextmanager
    def server(parallel: int) -> Iterator[str]:
        with sc2_server(served.model_arg, request.dtype, request.device, parallel, max(8, parallel), env,
                        tmp) as running:
            entry["servers"].append({"name": running.name, "url": running.url, "ready_s": running.ready_s})
            say(f"{running.name} ready at {running.url} in {running.ready_s:.1f}s")
            # A first request on another file: the kernels are warm, and the slot holds nothing measured later.
            warm_up(running.url, warm, request.new_tokens)
            yield running.url

    levels: dict[int, dict] = {}
    try:
        with server(1) as url:
            if "editing" in request.parts:
                entry["editing"] = editing_flow(url, window, request.keystrokes, request.new_tokens,
                                                entry["suffix_tokens"], (True, False), say)
            if "cold" in request.parts:
                entry["cold_warm"] = cold_vs_warm(url, served, window, request, env, tmp, say)
            if "concurrency" in request.parts and 1 in request.clients:
                levels[1] = concurrency(url, tokenizer, 1, request, say)
        for clients in request.clients if "concurrency" in request.parts else ():
            if clients not in levels:
                with server(clients) as url:
                    levels[clients] = concurrency(url, tokenizer, clients, request, say)
        if levels:
            entry["concurrency"] = [levels[c] for c in sorted(levels)]
        if request.llama_server and "editing" in request.parts:
            entry["llama_cpp"] = peer_editing(served, window, warm, entry["suffix_tokens"], request, env, tmp,
                                              lambda m: say(f"llama.cpp: {m}"))
    except (ProcessFailed, RequestFailed) as err:
        raise BenchFailed(f"{served.label}: {err}") from None
    return entry


def warm_up(url: str, window: Window, new_tokens: int) -> None:
    stream_infill(url, infill_body(window.prefix(), window.after, new_tokens, cache_prompt=False))


# ---- 1. cold process against a warm server -------------------------------------------------------------------------

def cold_vs_warm(url: str, served: Served, window: Window, request: ServeBenchRequest, env: dict, tmp: Path,
                 progress: Callable[[str], None]) -> dict:
    path = tmp / window.path
    path.write_text(window.text(), encoding="utf-8")
    argv = [*sc2_command(), "infill", str(path), "--line", str(window.cursor_line), "--no-check",
            "-m", served.model_arg, "--dtype", request.dtype, "--device", request.device,
            "--max-new-tokens", str(request.new_tokens)]
    evaluated = infill_body(window.prefix(), window.after, request.new_tokens, cache_prompt=False)
    reused = infill_body(window.prefix(), window.after, request.new_tokens, cache_prompt=True)
    rounds = []
    for index in range(request.rounds):
        cold = time_cold(argv, env)
        warm = stream_infill(url, evaluated).record()
        again = stream_infill(url, reused).record()
        rounds.append({"cold": cold, "warm": warm, "warm_reused": again})
        progress(f"cold/warm round {index + 1}/{request.rounds}: cold {cold['total_s']:.2f}s; warm "
                 f"{warm['total_s'] * 1000:.0f} ms; the same prompt again {again['total_s'] * 1000:.0f} ms")
    keys = ("first_text_s", "total_s")
    summary = {kind: {key: stats([r[kind].get(key) for r in rounds]) for key in (*keys, "first_token_s")}
               for kind in ("cold", "warm", "warm_reused")}
    for kind in ("warm", "warm_reused"):
        for key in keys:
            mine, cold = summary[kind][key], summary["cold"][key]
            summary[kind][f"{key}_over_cold"] = mine["median"] / cold["median"] if mine and cold else None
    summary["prompt_tokens"] = rounds[0]["warm"]["prompt_tokens"]
    summary["same_middle"] = all(r["cold"]["content"] == r["warm"]["content"] == r["warm_reused"]["content"]
                                 for r in rounds)
    return {"command": argv[len(sc2_command()):], "rounds": rounds, "summary": summary}


# ---- 2. the editing flow ------------------------------------------------------------------------------------------

def editing_flow(url: str, window: Window, keystrokes: int, new_tokens: int, suffix_tokens: int,
                 modes: Sequence[bool], progress: Callable[[str], None]) -> dict:
    """Request k has k characters of the statement typed (k = 0 .. keystrokes); per mode (cache_prompt) a list."""
    runs: dict[str, list[dict]] = {_mode(m): [] for m in modes}
    for typed in range(keystrokes + 1):
        body_prefix = window.prefix(typed)
        for reuse in modes:
            reply = stream_infill(url, infill_body(body_prefix, window.after, new_tokens, cache_prompt=reuse))
            runs[_mode(reuse)].append(reply.record() | {"typed": typed})
        if typed % 5 == 0 or typed == keystrokes:
            progress(f"editing flow {typed}/{keystrokes}: " + ", ".join(
                f"{mode} {runs[mode][-1]['evaluated']} evaluated, first token "
                f"{runs[mode][-1]['first_token_s'] * 1000:.0f} ms"
                for mode in runs))
    return {"requests": runs, "summary": summarize_editing(runs, suffix_tokens)}


def _mode(reuse: bool) -> str:
    return "reuse_on" if reuse else "reuse_off"


def summarize_editing(runs: dict[str, list[dict]], suffix_tokens: int) -> dict:
    summary: dict = {"suffix_tokens": suffix_tokens}
    for mode, records in runs.items():
        later = records[1:]
        summary[mode] = {"first": {k: records[0][k] for k in ("evaluated", "prompt_tokens", "first_token_s",
                                                              "first_text_s", "total_s")},
                         "later": {k: stats([r[k] for r in later])
                                   for k in ("evaluated", "reused", "first_token_s", "first_text_s", "total_s",
                                             "prompt_ms")}}
    on, off = summary.get("reuse_on"), summary.get("reuse_off")
    if on:
        summary["beyond_suffix"] = on["later"]["evaluated"]["median"] - suffix_tokens - FIM_MARKERS_AFTER_PREFIX
    if on and off:
        summary["evaluated_on_over_off"] = on["later"]["evaluated"]["median"] / off["later"]["evaluated"]["median"]
        for key in ("first_token_s", "total_s"):
            summary[f"{key}_on_over_off"] = on["later"][key]["median"] / off["later"][key]["median"]
    return summary


def peer_editing(served: Served, window: Window, warm: Window, suffix_tokens: int, request: ServeBenchRequest,
                 env: dict, tmp: Path, progress: Callable[[str], None]) -> dict:
    """The editing flow's reuse-on requests on llama.cpp's server with `--cache-reuse 256`, on a GGUF of the same
    weights (`available` false, with the reason, when there is none)."""
    try:
        gguf = request.gguf.get(served.key) or peer_gguf(served.path, served.key, GGUF_SUFFIX[request.dtype], progress)
    except NoGGUF as err:
        progress(f"no GGUF of these weights ({err}); skipped")
        return {"available": False, "reason": f"no GGUF: {err}"}
    threads = request.threads or os.cpu_count() or 1
    with llama_server(request.llama_server, gguf, threads, PEER_CONTEXT, env, tmp) as server:
        progress(f"llama-server ready at {server.url} in {server.ready_s:.1f}s ({gguf.name}, -t {threads}, "
                 "--cache-reuse 256)")
        warm_up(server.url, warm, request.new_tokens)
        flow = editing_flow(server.url, window, request.keystrokes, request.new_tokens, suffix_tokens, (True,),
                            progress)
    return {"available": True, "gguf": str(gguf), "gguf_type": gguf.stem.rsplit("-", 1)[-1].upper(),
            "flags": f"-t {threads} -c {PEER_CONTEXT} -np 1 --cache-reuse 256", **flow}


# ---- 3. concurrent clients ----------------------------------------------------------------------------------------

def concurrency(url: str, tokenizer: Tokenizer, clients: int, request: ServeBenchRequest,
                progress: Callable[[str], None]) -> dict:
    """`clients` threads, each sending its own requests one after another, all starting together."""
    per_client = math.ceil(request.requests / clients)
    plan = concurrent_windows(tokenizer, request.file_tokens, clients, per_client)
    records: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        start.wait()
        for window in plan[index]:
            try:
                reply = stream_infill(url, infill_body(window.prefix(), window.after, request.new_tokens))
            except RequestFailed as err:
                with lock:
                    errors.append(str(err))
                continue
            with lock:
                records.append(reply.record() | {"client": index, "path": window.path,
                                                 "line": window.first_line + window.cursor_line - 1})

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    generated = sum(r["predicted"] or 0 for r in records)
    evaluated = sum(r["evaluated"] or 0 for r in records)
    latencies = [r["total_s"] for r in records]
    first_tokens = [r["first_token_s"] for r in records]
    summary = {"requests": len(records), "errors": len(errors), "wall_s": wall, "generated_tokens": generated,
               "evaluated_tokens": evaluated, "generated_tok_s": generated / wall if wall else None,
               "evaluated_tok_s": evaluated / wall if wall else None,
               "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
               "first_token_p50_s": percentile(first_tokens, 50), "first_token_p95_s": percentile(first_tokens, 95),
               "evaluated_median": statistics.median(r["evaluated"] or 0 for r in records) if records else None}
    progress(f"{clients} client(s), --parallel {clients}: {len(records)} requests in {wall:.1f}s, "
             f"{summary['generated_tok_s'] or 0:.1f} generated tok/s, p50 {summary['latency_p50_s'] or 0:.2f}s, "
             f"p95 {summary['latency_p95_s'] or 0:.2f}s" + (f", {len(errors)} failed" if errors else ""))
    return {"clients": clients, "parallel": clients, "queue": max(8, clients), "requests": records,
            "errors": errors, "summary": summary}


# ---- numbers ------------------------------------------------------------------------------------------------------

def stats(values: Sequence[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile, linear between the closest ranks (the median for q = 50)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def targets(doc: dict) -> list[dict]:
    """The issue's targets, each with the measured value (and how the tables show it) and whether it was met."""
    out = []
    for model in doc["models"]:
        cold = model.get("cold_warm", {}).get("summary")
        if cold and model["key"] == "shipped":
            value = cold["warm"]["total_s_over_cold"]
            out.append({"model": model["key"], "target": "a warm request takes <= 5% of a cold process (total time)",
                        "value": value, "shown": f"{value:.1%}",
                        "met": value <= TARGETS["warm_over_cold"]})
        editing = model.get("editing", {}).get("summary")
        if editing and "beyond_suffix" in editing:
            value = editing["beyond_suffix"]
            out.append({"model": model["key"], "target": "with reuse, the tokens evaluated are the suffix (and its 2 "
                        f"markers) plus what changed (at most {CHANGED_SLACK} tokens)", "value": value,
                        "shown": f"median {value:+,.0f} tokens beyond the suffix", "met": value <= CHANGED_SLACK})
        if editing and "first_token_s_on_over_off" in editing and model["key"] == "s":
            value = editing["first_token_s_on_over_off"]
            out.append({"model": model["key"], "target": "time to first token with reuse <= 1/3 of reuse off",
                        "value": value, "shown": f"{value:.0%}",
                        "met": value <= TARGETS["reuse_first_token_over_off"]})
    return out
