"""`sc2 bench`: measurements you can reproduce. `sc2 bench infill` scores single-line fill-in-the-middle;
`sc2 bench speed` measures load time, memory, time to first token, prefill and decode speed against peers;
`sc2 bench serve` measures `sc2 serve` from an editor's side (cold process against warm server, prompt reuse while
typing, concurrent clients).

Examples:
  sc2 bench infill                          # the shipped model on the held-out split of the stdlib
  sc2 bench infill --data ~/code/project -m bigcode/starcoder2-3b --limit 300 --json
  sc2 bench speed                           # the ~183M shape, bf16, against transformers (and llama.cpp)
  sc2 bench speed --shape 3b --repeats 3 --json > 3b.json
  sc2 bench serve                           # the shipped model and the ~183M shape, a few minutes
  sc2 bench serve --shape s --parts editing --llama-server ~/llama.cpp/build/bin/llama-server
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import Sc2Error, UsageError
from . import common, output
from .options import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, OfflineOpt, QuantizeOpt, RevisionOpt

app = typer.Typer(help="Benchmarks: infill exact match, speed against peers, the server.", no_args_is_help=True)


@app.command("infill")
def bench_infill(
    data: Annotated[Optional[str], typer.Option(
        help="Folder of Python files to draw tasks from, or a corpus folder (its held-out packages); default: the "
        "held-out split of this Python's stdlib.",
        show_default=False)] = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = "none",
    offline: OfflineOpt = False,
    limit: Annotated[int, typer.Option(help="Most tasks to run.")] = 500,
    per_file: Annotated[int, typer.Option("--per-file", help="Most target lines per file.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the line sampling.")] = 0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 32,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    json_out: JsonOpt = False,
) -> None:
    """Single-line infilling exact match: greedy, through the same prompt and line filter as `sc2 infill`."""
    if limit < 1 or per_file < 1 or max_new_tokens < 1 or batch_size < 1:
        raise UsageError("--limit, --per-file, --max-new-tokens and --batch-size must be at least 1")
    from ..bench import infill as bench

    tasks, source = bench.infill_tasks(data, per_file=per_file, seed=seed, limit=limit)
    loaded = common.load_model(model, revision, device, dtype, offline, quantize=quantize)
    output.status(f"{len(tasks)} tasks from {source}")
    results = bench.run(loaded, tasks, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        on_batch=lambda done, total: output.status(f"  {done}/{total}") if done % 80 == 0 else None)
    summary = bench.report(results, model=loaded.name, data=source, seed=seed, max_new_tokens=max_new_tokens,
                           items=json_out)
    if json_out:
        output.write_json(summary)
        return
    lo, hi = summary["exact_match_ci95"]
    flo, fhi = summary["first_line_exact_match_ci95"]
    rows = [
        ("tasks", f"{summary['tasks']}"),
        ("exact match (stripped)", f"{summary['exact_match']:.1%}  [{lo:.1%}, {hi:.1%}]"),
        ("first-line exact match", f"{summary['first_line_exact_match']:.1%}  [{flo:.1%}, {fhi:.1%}]"),
        ("edit similarity", f"{summary['edit_similarity']:.3f}"),
        ("stop reasons", ", ".join(f"{k} {v}" for k, v in sorted(summary["stop_reasons"].items()))),
    ]
    width = max(len(k) for k, _ in rows)
    output.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))


@app.command("speed")
def bench_speed(
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="A checkpoint (any reference sc2 loads) instead of a named shape.",
        show_default=False)] = None,
    shape: Annotated[Optional[str], typer.Option(
        help="shipped | s | 3b | tiny: the shipped model, or random weights of the ~183M shape, the starcoder2-3b "
        "shape or a tiny one (written once to ~/.cache/sc2/bench). Default: s.", show_default=False)] = None,
    dtype: Annotated[str, typer.Option(help="bfloat16 | float32 | float16, for every engine.")] = "bfloat16",
    threads: Annotated[Optional[int], typer.Option(
        help="Threads of every engine (default: torch's default here).", show_default=False)] = None,
    repeats: Annotated[int, typer.Option(help="Rounds; each runs every engine once, in a fresh process.")] = 3,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="Prompt length (random ids).")] = 512,
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="Tokens generated per row.")] = 128,
    peers: Annotated[str, typer.Option(
        help="Comma-separated peers: transformers, llama.cpp; or none.")] = "transformers,llama.cpp",
    gguf: Annotated[Optional[Path], typer.Option(
        help="GGUF of the same weights for the llama.cpp peer at --dtype's precision (default: exported once by "
        "the bench, as is the Q8_0 set against sc2-int8).", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N.")] = "cpu",
    variants: Annotated[Optional[str], typer.Option(
        help="Comma-separated sc2 variants besides sc2 itself: sc2-int8, sc2-eager, sc2-compile (CUDA); or none. "
        "Default: sc2-int8 (and sc2-eager on CUDA).", show_default=False)] = None,
    bandwidth_gib: Annotated[float, typer.Option(
        "--bandwidth-gib", help="Size of the tensor the memory bandwidth is measured on.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the random prompts.")] = 0,
    revision: RevisionOpt = None,
    offline: OfflineOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Speed side by side: load time, peak RSS, time to first token, prefill and decode tokens/s (batch 1 and 4),
    as a fraction of the memory-bandwidth roofline, for sc2 and its peers on the same weights."""
    from ..bench import speed as bench

    if model is not None and shape is not None:
        raise UsageError("give --model or --shape, not both")
    if repeats < 1 or prompt_tokens < 1 or new_tokens < 2:
        raise UsageError("--repeats and --prompt-tokens must be at least 1, --new-tokens at least 2")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1")
    if bandwidth_gib <= 0:
        raise UsageError("--bandwidth-gib must be positive")
    if gguf is not None and not gguf.is_file():
        raise UsageError(f"--gguf {gguf} does not exist")
    prepared = bench.prepare(bench.SpeedRequest(
        model=model, shape=shape, revision=revision, offline=offline, dtype=dtype, threads=threads, repeats=repeats,
        prompt_tokens=prompt_tokens, new_tokens=new_tokens, peers=peers, variants=variants, device=device,
        gguf=gguf, bandwidth_gib=bandwidth_gib, seed=seed))
    positions = prepared.config.max_position_embeddings
    if prompt_tokens + new_tokens > positions:
        raise UsageError(f"--prompt-tokens + --new-tokens ({prompt_tokens + new_tokens}) exceed the model's "
                         f"{positions} positions")
    plan = bench.make_plan(prepared, progress=output.status)
    try:
        doc = bench.run_bench(plan, progress=output.status)
    except bench.WorkerFailed as err:  # the bandwidth probe
        raise Sc2Error(f"the measurement failed: {err}") from None
    if json_out:
        output.write_json(doc)
    else:
        output.write(bench.render_table(doc))
    sc2 = doc["engines"]["sc2"]
    if not sc2["samples"]:  # the other columns are still printed above: they may show why
        raise Sc2Error(f"the sc2 measurement failed: {sc2['errors'][0] if sc2['errors'] else 'no samples'}")


@app.command("lookup")
def bench_lookup(
    data: Annotated[Optional[str], typer.Option(
        help="Folder of Python files (default: the held-out split of this Python's stdlib).", show_default=False)] = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offline: OfflineOpt = False,
    limit: Annotated[int, typer.Option(help="Most tasks (one per file).")] = 40,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 96,
    json_out: JsonOpt = False,
) -> None:
    """Prompt lookup on infills whose middle repeats code from the context: decode time with and without it
    (alternating, same process) and whether the tokens are identical."""
    from ..bench import decode as bench_decode

    if limit < 1 or max_new_tokens < 2:
        raise UsageError("--limit must be at least 1 and --max-new-tokens at least 2")
    tasks, source = bench_decode.lookup_tasks(data, limit=limit)
    loaded = common.load_model(model, revision, device, dtype, offline)
    output.status(f"{len(tasks)} repeated-code infill tasks from {source}")
    r = bench_decode.run_lookup(loaded, tasks, max_new_tokens=max_new_tokens)
    doc = r.report(model=loaded.name, data=source)
    if json_out:
        output.write_json(doc)
        return
    output.write(f"tasks                 {r.tasks} ({r.tokens} tokens)\n"
                 f"decode without lookup {doc['tokens_per_s_without'] or 0:,.1f} tok/s\n"
                 f"decode with lookup    {doc['tokens_per_s_with'] or 0:,.1f} tok/s\n"
                 f"speed-up              {r.speedup:.2f}x\n"
                 f"identical outputs     {r.identical}/{r.tasks}\n")


@app.command("int8")
def bench_int8(
    data: Annotated[Optional[str], typer.Option(
        help="Folder of Python files (default: the held-out split of this Python's stdlib).", show_default=False)] = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    offline: OfflineOpt = False,
    limit: Annotated[int, typer.Option(help="Most tasks.")] = 100,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 32,
    json_out: JsonOpt = False,
) -> None:
    """Greedy-token agreement of --quantize int8 with bfloat16 on single-line infill tasks (teacher-forced)."""
    from ..bench import decode as bench_decode

    if limit < 1 or max_new_tokens < 1:
        raise UsageError("--limit and --max-new-tokens must be at least 1")
    tasks, source = bench_decode.int8_tasks(data, limit=limit)
    reference = common.load_model(model, revision, device, "bfloat16", offline)
    quantized = common.load_model(model, revision, device, "bfloat16", offline, quantize="int8")
    output.status(f"{len(tasks)} tasks from {source}")
    r = bench_decode.run_int8_agreement(reference, quantized, tasks, max_new_tokens=max_new_tokens)
    doc = r.report(model=reference.name, data=source)
    if json_out:
        output.write_json(doc)
        return
    output.write(f"tasks                        {r.tasks} ({r.positions} generated positions)\n"
                 f"greedy agreement with bf16   {r.agreement:.2%} (teacher-forced)\n"
                 f"identical free-running       {r.same_output}/{r.tasks}\n")


@app.command("serve")
def bench_serve(
    shape: Annotated[str, typer.Option(
        help="Comma-separated: shipped (the shipped model), s (random weights of the ~183M shape, with a tokenizer "
        "trained once for them), 3b, tiny.")] = "shipped,s",
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="A checkpoint (any reference sc2 loads) instead of the shapes; repeatable.",
        show_default=False)] = None,
    dtype: Annotated[str, typer.Option(help="bfloat16 | float32 | float16, for every sc2 process.")] = "bfloat16",
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N, for every sc2 process.")] = "cpu",
    threads: Annotated[Optional[int], typer.Option(
        help="Threads of every process (default: each one's own).", show_default=False)] = None,
    parts: Annotated[str, typer.Option(
        help="Comma-separated: cold, editing, concurrency.")] = "cold,editing,concurrency",
    rounds: Annotated[int, typer.Option(help="Cold-against-warm rounds (each: a fresh process, two requests).")] = 3,
    keystrokes: Annotated[int, typer.Option(help="Editing flow: requests after the first, one typed character "
                                                  "each.")] = 20,
    file_tokens: Annotated[int, typer.Option("--file-tokens", help="Tokens of each file window sent.")] = 1500,
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="n_predict of every request (greedy).")] = 16,
    clients: Annotated[str, typer.Option(help="Comma-separated numbers of concurrent clients.")] = "1,2,4",
    requests: Annotated[int, typer.Option(help="Requests per concurrency level, shared among its clients.")] = 12,
    llama_server: Annotated[Optional[Path], typer.Option(
        "--llama-server", help="llama.cpp's llama-server binary: adds its editing flow (--cache-reuse 256) on a "
        "GGUF of the same weights.", show_default=False)] = None,
    gguf: Annotated[Optional[Path], typer.Option(
        help="GGUF for --llama-server when one model is measured (default: exported once by the bench at --dtype's "
        "precision).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """The server from an editor's side: a cold `sc2 infill` process against a warm `sc2 serve`, the tokens evaluated
    and time to first token while typing with prompt reuse on and off, and concurrent clients."""
    from ..bench import serve as bench
    from ..bench.serve_tables import render

    models = list(model) if model else [s.strip().lower() for s in shape.split(",") if s.strip()]
    if not model and (bad := [s for s in models if s not in bench.SHAPES]):
        raise UsageError(f"unknown shape {bad[0]!r}; use {', '.join(bench.SHAPES)} (or --model for a checkpoint)")
    if llama_server is not None and not llama_server.is_file():
        raise UsageError(f"--llama-server {llama_server} does not exist")
    if gguf is not None and (len(models) != 1 or not gguf.is_file()):
        raise UsageError("--gguf needs one model (one --shape or --model) and an existing file")
    try:
        client_counts = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError:
        raise UsageError(f"--clients takes comma-separated numbers, e.g. 1,2,4 (got {clients!r})") from None
    request = bench.ServeBenchRequest(
        models=models, dtype=dtype.strip().lower(), device=device, threads=threads, rounds=rounds,
        keystrokes=keystrokes, file_tokens=file_tokens, new_tokens=new_tokens, clients=client_counts,
        requests=requests, parts=[p.strip().lower() for p in parts.split(",") if p.strip()],
        llama_server=llama_server, gguf={models[0]: gguf} if gguf else {})
    try:
        bench.check(request)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        doc = bench.run_bench(request, progress=output.status)
    except bench.BenchFailed as err:
        raise Sc2Error(f"the measurement failed: {err}") from None
    if json_out:
        output.write_json(doc)
    else:
        output.write(render(doc))
