"""`sc2 infill`: fill in code at a cursor in a file, using the text before and after it (FIM).

Examples:
  sc2 infill app.py --line 42                  # print the middle for the end of line 42
  sc2 infill app.py --line 42 --column 9 -w    # write it into the file (atomically)
  sc2 infill app.py --marker '<CURSOR>' --diff | patch -p1
  sc2 infill app.py --line 10 -n 4 --temperature 0.6 --json
  sc2 infill app.py --line 10 --context src/ --repo-name myorg/app --dry-run
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import Sc2Error, UsageError
from . import common, output
from .options import (
    DeviceOpt, DtypeOpt, IgnoreEosOpt, JsonOpt, MaxNewTokensOpt, MinPOpt, ModelOpt, NoStreamOpt, NumSamplesOpt,
    OfflineOpt, QuantizeOpt, DecodeOpt, PromptLookupOpt, RepetitionPenaltyOpt, RevisionOpt, SeedOpt, StopOpt, TemperatureOpt, TopKOpt, TopPOpt,
)

PYTHON_SUFFIXES = (".py", ".pyi")


def infill(
    file: Annotated[str, typer.Argument(help="File to fill in; '-' reads stdin.")],
    line: Annotated[Optional[int], typer.Option("--line", "-l", help="1-based line of the cursor (end of line).",
                                                show_default=False)] = None,
    column: Annotated[Optional[int], typer.Option("--column", "-c", help="1-based column of the cursor on --line.",
                                                  show_default=False)] = None,
    marker: Annotated[Optional[str], typer.Option(help="Put the cursor at the first occurrence of this text "
                                                  "(which is removed).", show_default=False)] = None,
    mode: Annotated[str, typer.Option(help="line | block | auto (line when code is right of the cursor).")] = "auto",
    context: Annotated[Optional[list[str]], typer.Option(
        "--context", help="Files or folders given to the model as repository context (repeatable).",
        show_default=False)] = None,
    repo_name: Annotated[Optional[str], typer.Option("--repo-name", help="Repository name for the prompt.",
                                                     show_default=False)] = None,
    check: Annotated[Optional[bool], typer.Option("--check/--no-check", help="Python: rank candidates whose "
                                                  "filled file parses first (default on for .py).",
                                                  show_default=False)] = None,
    write: Annotated[bool, typer.Option("--write", "-w", help="Write the result into FILE (atomically).")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Print a unified diff that `patch -p1` applies.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the exact prompt and its token count; "
                                          "do not run the model.")] = False,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quantize: QuantizeOpt = "none",
    decode: DecodeOpt = "auto",
    prompt_lookup: PromptLookupOpt = None,
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
    from .. import infill as fill

    common.check_counts(max_new_tokens, num_samples)
    if mode not in ("line", "block", "auto"):
        raise UsageError(f"--mode must be line, block or auto (got {mode!r})")
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
    sampling = common.sampling_params(temperature, top_k, top_p, min_p, repetition_penalty, seed)
    common.check_prompt_lookup(prompt_lookup, sampling, num_samples)

    source = fill.SourceText.from_bytes(read_file_bytes(file), name=file)
    original = source.data  # what is on disk (with the marker, if any): what --diff patches
    if marker is not None:
        source, cursor = fill.cursor_at_marker(source, marker)
    else:
        cursor = fill.cursor_at(source, line, column)
    if write:
        check_writable(file)
    prefix, suffix = fill.split_at(source, cursor)
    context_files = load_context(context or [], exclude=file)
    display_path = file if file != "-" else "stdin"
    python = check if check is not None else Path(file).suffix in PYTHON_SUFFIXES

    from ..load import load_config_and_tokenizer

    config, tokenizer, _ = load_config_and_tokenizer(common.model_ref(model), revision, offline)
    budget = fill.token_budget(config) - max_new_tokens
    if budget < 8:
        raise UsageError(f"--max-new-tokens {max_new_tokens} leaves no room for the prompt in a "
                         f"{fill.token_budget(config)}-token context")
    prompt = fill.build_prompt(tokenizer, prefix, suffix, budget, display_path, context_files, repo_name)
    if prompt.truncation.any:
        output.warning(f"the prompt did not fit {budget} tokens: {prompt.truncation.describe()}")
    if dry_run:
        if json_out:
            output.write_json({"prompt": prompt.text, "prompt_tokens": len(prompt.ids), "ids": prompt.ids,
                               "cursor": _cursor_json(cursor), "truncation": prompt.truncation.to_json()})
        else:
            output.write(prompt.text)
            output.status(f"{len(prompt.ids)} prompt tokens")
        return

    loaded = common.load_model(model, revision, device, dtype, offline, quantize=quantize)
    chosen_mode = fill.choose_mode(mode, suffix)
    style = fill.IndentStyle.detect(prefix + suffix)
    from ..engine import StopConditions, generate
    from ..sampling import make_generator
    from ..tokenizer import boundary_token_ids

    stop_ids = frozenset() if ignore_eos else boundary_token_ids(loaded.tokenizer)
    conditions = StopConditions(
        token_ids=stop_ids, strings=tuple(stop or ()), max_new_tokens=max_new_tokens,
        context_limit=config.max_position_embeddings,
        text_filter=lambda row: fill.MiddleFilter(chosen_mode, prompt.prefix, prompt.suffix, style),
    )
    streaming = not (write or diff or json_out or no_stream or num_samples > 1)
    completions = generate(loaded.model, loaded.tokenizer, [prompt.ids], sampling, conditions, num_samples,
                           generator=make_generator(sampling.seed, loaded.model.device),
                           on_step=(lambda step: output.write(step.text)) if streaming else None,
                           prompt_lookup=prompt_lookup, decode=common.decode_mode(decode, loaded))
    candidates = rank_candidates(source, cursor, completions, suffix, python)
    best = candidates[0]
    if streaming:
        # The streamed text is the raw middle; only a trailing newline may differ from `best.middle`.
        if sys.stdout.isatty() and not best.middle.endswith("\n"):
            output.write("\n")
        return
    if write:
        from ..files import atomic_write_bytes

        try:
            atomic_write_bytes(file, best.filled)
        except OSError as err:
            raise Sc2Error(f"cannot write {file}: {err.strerror or err}; the file is unchanged") from None
        output.status(f"wrote {len(best.middle)} characters into {file} at line {cursor.line}")
    elif diff:
        sys.stdout.flush()
        output.write(fill.unified_diff(original, best.filled, display_path).decode("utf-8", "surrogateescape"))
    elif json_out:
        output.write_json({
            "model": loaded.name,
            "middle": best.middle,
            "finish_reason": best.finish_reason,
            "mode": chosen_mode,
            "cursor": _cursor_json(cursor),
            "prompt_tokens": len(prompt.ids),
            "truncation": prompt.truncation.to_json(),
            "candidates": [c.to_json() for c in candidates],
        })
    else:
        output.write(best.middle)
        if sys.stdout.isatty() and not best.middle.endswith("\n"):
            output.write("\n")


class Candidate:
    def __init__(self, index: int, middle: str, filled: bytes, mean_logprob: float, finish_reason: str,
                 parses: bool | None) -> None:
        self.index, self.middle, self.filled = index, middle, filled
        self.mean_logprob, self.finish_reason, self.parses = mean_logprob, finish_reason, parses

    def to_json(self) -> dict:
        return {"index": self.index, "text": self.middle, "mean_logprob": round(self.mean_logprob, 6),
                "finish_reason": self.finish_reason, "parses": self.parses}


def rank_candidates(source, cursor, completions, suffix: str, python: bool) -> list[Candidate]:
    """Best first: (for Python) candidates whose filled file parses, then by mean log-probability."""
    from .. import infill as fill

    candidates = []
    for c in completions:
        middle = c.text
        filled = fill.filled_bytes(source, cursor, middle)
        candidates.append(Candidate(c.row, middle, filled, c.mean_logprob, c.finish_reason,
                                    fill.parses(filled) if python else None))
    return sorted(candidates, key=lambda c: (not c.parses if python else False, -c.mean_logprob))


def read_file_bytes(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    path = Path(file)
    if path.is_dir():
        raise UsageError(f"{file} is a directory; give a file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{file} does not exist; check the path") from None
    except PermissionError:
        raise UsageError(f"{file} cannot be read (permission denied)") from None


def check_writable(file: str) -> None:
    """Fail before running the model when the result could not be written."""
    path = Path(file)
    # Root passes os.access whatever the mode, and the atomic rename would replace the file anyway: a file with
    # no write bit at all is read-only for everyone.
    if not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222:
        raise Sc2Error(f"cannot write {file}: it is read-only (the file is unchanged); make it writable "
                       f"(chmod u+w) or drop --write to print the result")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise Sc2Error(f"cannot write {file}: its folder is read-only, so no safe temporary file can be made")


def load_context(paths: list[str], exclude: str) -> list:
    """Context files in a stable order: each path given, folders walked for text files (hidden ones skipped)."""
    from ..fim import ContextFile

    excluded = Path(exclude).resolve() if exclude != "-" else None
    files = []
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise UsageError(f"--context {given} does not exist")
        found = [root] if root.is_file() else sorted(
            p for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        for path in found:
            if excluded is not None and path.resolve() == excluded:
                continue
            data = path.read_bytes()
            if b"\x00" in data[:8192]:
                continue  # binary files are no context
            text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
            files.append(ContextFile(path.as_posix(), text))
    return files


def _cursor_json(cursor) -> dict:
    return {"line": cursor.line, "column": cursor.column, "append": cursor.append}
