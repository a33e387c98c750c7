"""`sc2 bench`: measurements you can reproduce. `sc2 bench infill` scores single-line fill-in-the-middle.

Examples:
  sc2 bench infill                          # the shipped model on the held-out split of the stdlib
  sc2 bench infill --data ~/code/project -m bigcode/starcoder2-3b --limit 300 --json
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import UsageError
from . import common, output
from .options import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, OfflineOpt, RevisionOpt

app = typer.Typer(help="Benchmarks: infill exact match.", no_args_is_help=True)


@app.command("infill")
def bench_infill(
    data: Annotated[Optional[str], typer.Option(
        help="Folder of Python files to draw tasks from (default: the held-out split of this Python's stdlib).",
        show_default=False)] = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
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
    from .. import bench_infill as bench
    from .. import trainset
    from ..train import resolve_data_dir

    if data is None:
        files = trainset.split_files(trainset.collect_files(resolve_data_dir("stdlib")))[1]
        source = "held-out split of the Python standard library"
    else:
        files = trainset.collect_files(resolve_data_dir(data))
        source = data
    tasks = bench.make_tasks(files, per_file=per_file, seed=seed, limit=limit)
    if not tasks:
        raise UsageError(f"no usable target lines in {source} (files must parse and be 1-200 KB)")
    loaded = common.load_model(model, revision, device, dtype, offline)
    output.status(f"{len(tasks)} tasks from {source}")
    results = bench.run(loaded, tasks, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        on_batch=lambda done, total: output.status(f"  {done}/{total}") if done % 80 == 0 else None)
    summary = bench.summarize(results)
    summary.update(model=loaded.name, data=source, seed=seed, max_new_tokens=max_new_tokens)
    if json_out:
        summary["items"] = [
            {"path": r.task.path, "line": r.task.line, "target": r.task.target, "generated": r.raw,
             "first_line": r.line, "exact": r.exact, "first_line_exact": r.first_line_exact,
             "finish_reason": r.finish_reason}
            for r in results
        ]
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
