"""`sc2 infill`: fill in code at a cursor in a file, using the text before and after it (FIM).

Examples:
  sc2 infill app.py --line 42                  # print the middle for the end of line 42
  sc2 infill app.py --line 42 --column 9 -w    # write it into the file (atomically)
  sc2 infill app.py --marker '<CURSOR>' --diff | patch -p1
  sc2 infill app.py --line 10 -n 4 --temperature 0.6 --json
  sc2 infill app.py --line 10 --context src/ --repo-name myorg/app --dry-run
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import Sc2Error, UsageError
from . import common, output
from .options import (
    OUTPUT_PANEL, BackendOpt, DecodeOpt, DeviceOpt, DtypeOpt, IgnoreEosOpt, JsonOpt, LegacyLookupOpt,
    MaxNewTokensOpt, MinPOpt, ModelOpt,
    NoStreamOpt, NumSamplesOpt, OfflineOpt, PromptLookupOpt, QuantizeOpt, RepetitionPenaltyOpt, RevisionOpt,
    SeedOpt, ServerOpt, StopOpt, TemperatureOpt, TopKOpt, TopPOpt,
)

CURSOR_PANEL = "Cursor and context"


def infill(
    file: Annotated[str, typer.Argument(help="File to fill in; '-' reads stdin.", metavar="FILE")],
    line: Annotated[Optional[int], typer.Option("--line", "-l", help="1-based line of the cursor (at its end).",
                                                show_default=False, rich_help_panel=CURSOR_PANEL, metavar="INT")] = None,
    column: Annotated[Optional[int], typer.Option("--column", "-c", help="1-based column of the cursor on --line.",
                                                  show_default=False, rich_help_panel=CURSOR_PANEL, metavar="INT")] = None,
    marker: Annotated[Optional[str], typer.Option(help="The cursor is where this text is (it is removed).",
                                                  show_default=False, rich_help_panel=CURSOR_PANEL, metavar="TEXT")] = None,
    mode: Annotated[str, typer.Option(help="line | block | auto (line when code is right of the cursor).",
                                      rich_help_panel=CURSOR_PANEL, metavar="NAME")] = "auto",
    context: Annotated[Optional[list[str]], typer.Option(
        "--context", help="Files or folders given as repository context (repeatable).", show_default=False,
        rich_help_panel=CURSOR_PANEL, metavar="PATH")] = None,
    repo_name: Annotated[Optional[str], typer.Option("--repo-name", help="Repository name for the prompt.",
                                                     show_default=False, rich_help_panel=CURSOR_PANEL, metavar="NAME")] = None,
    check: Annotated[Optional[bool], typer.Option(
        "--check/--no-check", help="Rank candidates whose file parses first (default: on for Python).",
        show_default=False, rich_help_panel=OUTPUT_PANEL, metavar="")] = None,
    write: Annotated[bool, typer.Option("--write", "-w", help="Write the result into FILE (atomically).",
                                        rich_help_panel=OUTPUT_PANEL, metavar="")] = False,
    force: Annotated[bool, typer.Option("--force", help="--write even when the filled file no longer parses.",
                                        rich_help_panel=OUTPUT_PANEL, metavar="")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Print a unified diff for `patch -p1`.",
                                       rich_help_panel=OUTPUT_PANEL, metavar="")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the exact prompt; do not run the model.",
                                          rich_help_panel=OUTPUT_PANEL, metavar="")] = False,
    model: ModelOpt = None,
    server: ServerOpt = None,
    backend: BackendOpt = "sc2",
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = "none",
    decode: DecodeOpt = "auto",
    prompt_lookup: PromptLookupOpt = None,
    legacy_lookup: LegacyLookupOpt = None,
    offline: OfflineOpt = False,
    max_new_tokens: MaxNewTokensOpt = 128,
    temperature: TemperatureOpt = 0.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    min_p: MinPOpt = 0.0,
    repetition_penalty: RepetitionPenaltyOpt = 1.0,
    seed: SeedOpt = None,
    stop: StopOpt = None,
    num_samples: NumSamplesOpt = 1,
    ignore_eos: IgnoreEosOpt = False,
    no_stream: NoStreamOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Fill in code at a cursor in FILE with fill-in-the-middle, using the code before and after it."""
    from ..files import check_replaceable, replace_file
    from ..fim.context import load_context
    from ..fim.pipeline import InfillRequest, fill, plan

    if (line is None) == (marker is None):
        raise UsageError("give the cursor with --line N [--column C] or with --marker TEXT (one of them)")
    if column is not None and line is None:
        raise UsageError("--column needs --line")
    if sum([write, diff, json_out or dry_run]) > 1:  # --dry-run --json is one output: the prompt as JSON
        raise UsageError("choose one output: --write, --diff, --json or --dry-run")
    if write and file == "-":
        raise UsageError("--write needs a file, not stdin (use --diff, or redirect the printed middle)")
    if num_samples > 1 and temperature == 0.0:
        output.warning("-n > 1 with greedy decoding gives identical candidates; sampling at --temperature 0.6")
        temperature = 0.6
    job = common.generation_job(max_new_tokens, num_samples, temperature, top_k, top_p, min_p, repetition_penalty,
                                seed, stop, ignore_eos, legacy_lookup if prompt_lookup is None else prompt_lookup,
                                decode)
    data = read_file_bytes(file)
    request = InfillRequest.from_file(
        data, line, column, marker, name="stdin" if file == "-" else file, path=file if file != "-" else "stdin",
        mode=mode, context=tuple(load_context(context or [], edited=None if file == "-" else file)),
        repo_name=repo_name, check_syntax=check, job=job)
    if write:
        check_replaceable(file)

    streaming = not (write or diff or json_out or no_stream or num_samples > 1)
    on_text = output.write if streaming else None
    chosen = common.choose_backend(server, backend, model, revision, offline, device, dtype, quantize)
    if chosen is None:
        from ..serve import client

        if dry_run:
            show_prompt(request, client.infill_plan(server, request)[0], json_out)
            return
        result, served = client.infill(server, request, on_text=on_text)
        warn_if_truncated(result.plan)  # (known here only after the run)
        name = served.name
    else:
        tokenizer, config, start = chosen
        planned = plan(request, tokenizer, config)
        if dry_run:
            show_prompt(request, planned, json_out)
            return
        warn_if_truncated(planned)
        runner = start()
        result = fill(request, runner, on_text=on_text, planned=planned)
        name = runner.name
    planned, prompt = result.plan, result.plan.prompt
    best = result.best
    if not best.middle:
        output.warning("the model ended the middle at once: nothing to insert at the cursor")
    if result.breaks_the_file:
        if write and not force:
            raise Sc2Error(f"no candidate keeps {file} parsing, so it is unchanged (--force writes anyway); the best "
                           f"middle was {best.middle!r}")
        output.warning("no candidate keeps the file parsing; showing the best one")
    if write:
        replace_file(file, best.filled)
        output.status(f"wrote {len(best.middle)} characters into {file} at line {request.cursor.line}")
    elif diff:
        from ..fim.source import unified_diff

        output.write(unified_diff(data, best.filled, diff_path(file)).decode("utf-8", "surrogateescape"))
    elif json_out:
        output.write_json({
            "model": name, "middle": best.middle, "finish_reason": best.finish_reason,
            "mode": planned.mode, "cursor": cursor_json(request.cursor), "prompt_tokens": len(prompt.ids),
            "truncation": prompt.truncation.to_json(), "seed": result.run.seed,
            "candidates": [c.to_json() for c in result.candidates],
        })
    elif not streaming:
        output.write(best.middle)
    if not (write or diff or json_out) and sys.stdout.isatty() and not best.middle.endswith("\n"):
        output.write("\n")  # end the line for a person at a terminal; pipes get the exact middle


def warn_if_truncated(planned) -> None:
    if planned.prompt.truncation.any:
        output.warning(f"the prompt did not fit {planned.budget.total} tokens: {planned.prompt.truncation.describe()}")


def show_prompt(request, planned, json_out: bool) -> None:
    """--dry-run: the exact prompt, as text or as JSON."""
    warn_if_truncated(planned)
    prompt = planned.prompt
    if json_out:
        output.write_json({"prompt": prompt.text, "prompt_tokens": len(prompt.ids), "ids": prompt.ids,
                           "cursor": cursor_json(request.cursor), "truncation": prompt.truncation.to_json()})
    else:
        output.write(prompt.text)
        output.status(f"{len(prompt.ids)} prompt tokens")


def read_file_bytes(file: str) -> bytes:
    if file == "-":
        data = common.read_stdin_bytes()
    else:
        path = Path(file)
        if path.is_dir():
            raise UsageError(f"{file} is a directory; give a file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"{file} does not exist; check the path") from None
        except PermissionError:
            raise UsageError(f"{file} cannot be read (permission denied)") from None
    if not data.strip():
        where = "stdin" if file == "-" else file
        raise UsageError(f"{where} is empty; nothing to fill around (use `sc2 complete` to write new code)")
    return data


def diff_path(file: str) -> str:
    from ..files import relative_path

    if file == "-":
        return "stdin"
    path, inside = relative_path(file)
    if not inside:
        output.warning(f"{file} lies outside the current folder: the diff's paths start at / (apply it with "
                       "`patch -p1 -d /`)")
    return path


def cursor_json(cursor) -> dict:
    return {"line": cursor.line, "column": cursor.column, "append": cursor.append}
