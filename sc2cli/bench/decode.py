"""Checks of two decode speed-ups on a real model and real code: prompt lookup (`sc2 bench lookup`) and int8
weights (`sc2 bench int8`).

Prompt lookup pays when the code to write already appears in the context. Its tasks are infills whose middle
repeats code from the prefix: in each file, a run of at least `MIN_REPEAT` consecutive non-trivial lines that
occurred earlier in the same file verbatim; the middle is that run (at most `MAX_MIDDLE` lines), the prefix the
file before it, the suffix the file after it. Each task is generated greedily twice in the same process,
alternating with and without lookup, and the decode time (first to last token) is compared; the tokens must
be identical.

int8 agreement is teacher-forced: the bf16 model's greedy middle is generated once, then the int8 model reads
the prompt (prefill) and that middle one token at a time through its decode kernels, and its argmax at every
generated position is compared with the bf16 token (a free-running comparison would count every token after
the first difference as a miss; it is reported too).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InputError
from ..train.data import SourceFile
from .infill import Task, drop_comment_lines, make_tasks, source_files, task_prompts

MIN_REPEAT = 3
MAX_MIDDLE = 8


def repeated_code_tasks(files: Sequence[SourceFile], limit: int = 40) -> list[Task]:
    """At most one task per file: the first run of >= MIN_REPEAT lines that already occurred earlier."""
    tasks = []
    for f in sorted(files, key=lambda f: f.path):
        lines = drop_comment_lines(f.text).split("\n")
        seen: dict[tuple[str, ...], int] = {}
        for i in range(len(lines) - MIN_REPEAT + 1):
            window = tuple(lines[i:i + MIN_REPEAT])
            if sum(len(line.strip()) >= 8 for line in window) < MIN_REPEAT:
                continue
            first = seen.setdefault(window, i)
            if first + MIN_REPEAT <= i:  # an earlier, non-overlapping occurrence
                end = i + MIN_REPEAT
                while end < len(lines) and end - i < MAX_MIDDLE and lines[end] == lines[first + end - i]:
                    end += 1
                prefix = "".join(line + "\n" for line in lines[:i])
                tasks.append(Task(f.path, i + 1, prefix, "\n".join(lines[end:]), "\n".join(lines[i:end])))
                break
        if len(tasks) >= limit:
            break
    return tasks


def lookup_tasks(data: str | None, limit: int = 40) -> tuple[list[Task], str]:
    """(tasks, description of their source) for `sc2 bench lookup`: see `source_files` and `repeated_code_tasks`."""
    files, source = source_files(data)
    tasks = repeated_code_tasks(files, limit=limit)
    if not tasks:
        raise InputError(f"no file in {source} repeats {MIN_REPEAT} lines of its own code")
    return tasks, source


def int8_tasks(data: str | None, limit: int = 100) -> tuple[list[Task], str]:
    """(tasks, description of their source) for `sc2 bench int8`: the single-line infill tasks."""
    files, source = source_files(data)
    tasks = make_tasks(files, limit=limit)
    if not tasks:
        raise InputError(f"no usable target lines in {source}")
    return tasks, source


@dataclass
class LookupResult:
    tasks: int
    tokens: int
    plain_s: float
    lookup_s: float
    identical: int

    @property
    def speedup(self) -> float:
        return self.plain_s / self.lookup_s if self.lookup_s else 0.0

    def report(self, model: str, data: str) -> dict:
        return {"model": model, "data": data, "tasks": self.tasks, "tokens": self.tokens,
                "decode_s_without": self.plain_s, "decode_s_with": self.lookup_s, "speedup": self.speedup,
                "identical_outputs": self.identical,
                "tokens_per_s_without": self.tokens / self.plain_s if self.plain_s else None,
                "tokens_per_s_with": self.tokens / self.lookup_s if self.lookup_s else None}


def _timed(model, tokenizer, ids, stop, lookup: bool):
    from ..generation.engine import generate

    times: list[float] = []
    completion = generate(model, tokenizer, [ids], stop=stop, prompt_lookup=lookup,
                          on_step=lambda step: times.append(time.perf_counter()))[0]
    return completion, (times[-1] - times[0]) if len(times) > 1 else 0.0


def run_lookup(loaded, tasks: Sequence[Task], max_new_tokens: int = 96) -> LookupResult:
    from ..generation.engine import StopConditions
    from ..tokenizer import boundary_token_ids

    model, tokenizer = loaded.model, loaded.tokenizer
    stop = StopConditions(token_ids=boundary_token_ids(tokenizer), max_new_tokens=max_new_tokens)
    result = LookupResult(len(tasks), 0, 0.0, 0.0, 0)
    for ids in (p.ids for p in task_prompts(tokenizer, model.config, tasks, max_new_tokens)):
        plain, plain_s = _timed(model, tokenizer, ids, stop, lookup=False)
        drafted, lookup_s = _timed(model, tokenizer, ids, stop, lookup=True)
        result.tokens += len(plain.tokens)
        result.plain_s += plain_s
        result.lookup_s += lookup_s
        result.identical += plain.tokens == drafted.tokens
    return result


@dataclass
class AgreementResult:
    tasks: int
    positions: int
    agreeing: int
    same_output: int

    @property
    def agreement(self) -> float:
        return self.agreeing / self.positions if self.positions else 0.0

    def report(self, model: str, data: str) -> dict:
        return {"model": model, "data": data, "tasks": self.tasks, "positions": self.positions,
                "agreement": self.agreement, "same_output": self.same_output}


def run_int8_agreement(reference, quantized, tasks: Sequence[Task], max_new_tokens: int = 32) -> AgreementResult:
    """`reference` and `quantized` are loaded models of one checkpoint (bf16 and --quantize int8)."""
    import torch

    from ..model.cache import KVCache
    from ..generation.decode import EagerStep
    from ..generation.engine import StopConditions, generate, prefill

    model = quantized.model
    stop = StopConditions(token_ids=frozenset(), max_new_tokens=max_new_tokens)  # full length: more positions
    result = AgreementResult(len(tasks), 0, 0, 0)
    for ids in (p.ids for p in task_prompts(reference.tokenizer, model.config, tasks, max_new_tokens)):
        base = generate(reference.model, None, [ids], stop=stop, prompt_lookup=False)[0].tokens
        free = generate(model, None, [ids], stop=stop, prompt_lookup=False)[0].tokens
        prompt = torch.tensor([ids], device=model.device)
        cache = KVCache(model.config, 1, len(ids) + len(base), dtype=model.dtype, device=model.device)
        predicted = []
        with torch.inference_mode():
            logits = prefill(model, prompt, torch.ones_like(prompt), cache)
            step = EagerStep(model, cache)  # the one-token path decode takes
            for position, token in enumerate(base, start=len(ids)):
                predicted.append(int(logits.argmax(-1)))
                logits = step(torch.tensor([token], device=model.device),
                              torch.tensor([position], device=model.device))
        result.positions += len(base)
        result.agreeing += sum(int(p == b) for p, b in zip(predicted, base))
        result.same_output += free == base
    return result
