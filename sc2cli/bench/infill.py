"""Single-line infilling exact match on held-out Python files (the recipe of completion-tools.md §4b).

One task per chosen line: prefix = the file through the line before (with its newline), suffix = the file from
the line after, target = the line. Whole-line comments are dropped first; trivial lines (closing brackets,
`else:`, `pass`, ...), lines inside multi-line strings and lines outside 4-120 characters are never targets; at
most 3 lines per file are drawn with a fixed seed. Decoding is greedy through the same prompt builder and line
filter as `sc2 infill`. Reported: raw exact match (stripped, no newline cut), first-line exact match, edit
similarity, stop reasons, and bootstrap 95% intervals.
"""

from __future__ import annotations

import ast
import io
import random
import re
import tokenize
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InputError
from ..fim.scope import IndentStyle, MiddleFilter
from ..fim.prompt import build_prompt, token_budget
from ..train.data import SourceFile

TRIVIAL = re.compile(r"^(?:[\]\)\}]+[,;:]?|else:|try:|finally:|pass|return|break|continue|\.\.\.|[\]\)\}]+\)*:?)$")


@dataclass(frozen=True)
class Task:
    path: str
    line: int  # 1-based, in the cleaned file
    prefix: str
    suffix: str
    target: str


def source_files(data: str | None) -> tuple[list[SourceFile], str]:
    """(files, description): the held-out split of this Python's standard library (None), the held-out packages of
    a corpus folder, or every Python file under the folder `data` (or the named dataset `resolve_data_dir`
    knows)."""
    from ..train import data as trainset
    from ..train.corpus import is_corpus
    from ..train.trainer import resolve_data_dir

    if data is None:
        return (trainset.split_files(trainset.collect_files(resolve_data_dir("stdlib")))[1],
                "held-out split of the Python standard library")
    folder = resolve_data_dir(data)
    if is_corpus(folder):  # a corpus of sc2cli/train/corpus.py: its held-out packages
        return trainset.corpus_files(folder, "heldout"), f"held-out packages of the corpus {data}"
    return trainset.collect_files(folder), data


def infill_tasks(data: str | None, per_file: int = 3, seed: int = 0,
                 limit: int | None = None) -> tuple[list[Task], str]:
    """(tasks, description of their source) for `sc2 bench infill`; an error when no line qualifies."""
    files, source = source_files(data)
    tasks = make_tasks(files, per_file=per_file, seed=seed, limit=limit)
    if not tasks:
        raise InputError(f"no usable target lines in {source} (files must parse and be 1-200 KB)")
    return tasks, source


def drop_comment_lines(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("#"))


def string_lines(text: str) -> set[int]:
    """Lines (1-based) covered by a multi-line string token, where a line is not code."""
    covered: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                covered.update(range(tok.start[0], tok.end[0] + 1))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return covered


def candidate_lines(text: str) -> list[int]:
    in_strings = string_lines(text)
    out = []
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not 4 <= len(stripped) <= 120 or number in in_strings or TRIVIAL.match(stripped):
            continue
        out.append(number)
    return out


def make_tasks(files: Sequence[SourceFile], per_file: int = 3, seed: int = 0, limit: int | None = None) -> list[Task]:
    rng = random.Random(seed)
    tasks = []
    for f in sorted(files, key=lambda f: f.path):
        if not 1_000 <= len(f.text.encode("utf-8")) <= 200_000:
            continue
        text = drop_comment_lines(f.text)
        try:
            ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.split("\n")
        candidates = candidate_lines(text)
        for number in sorted(rng.sample(candidates, min(per_file, len(candidates)))):
            prefix = "".join(line + "\n" for line in lines[: number - 1])
            suffix = "\n".join(lines[number:])
            tasks.append(Task(f.path, number, prefix, suffix, lines[number - 1]))
    rng.shuffle(tasks)
    return tasks[:limit] if limit else tasks


def first_line(text: str, prefix: str, suffix: str) -> str:
    """What `sc2 infill --mode line` keeps of a raw generation (the same filter)."""
    f = MiddleFilter("line", prefix, suffix, IndentStyle.detect(prefix[-4000:]))
    out, stopped = f.feed(text)
    return out if stopped else out + f.flush()


def edit_similarity(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1.0 - previous[-1] / max(len(a), len(b))


def bootstrap_interval(values: Sequence[float], rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


@dataclass
class Result:
    task: Task
    raw: str
    line: str
    finish_reason: str

    @property
    def exact(self) -> bool:
        return self.raw.strip() == self.task.target.strip()

    @property
    def first_line_exact(self) -> bool:
        return self.line.strip() == self.task.target.strip()

    @property
    def similarity(self) -> float:
        return edit_similarity(self.line.strip(), self.task.target.strip())


def task_prompts(tokenizer, config, tasks: Sequence[Task], max_new_tokens: int, budget: int | None = None) -> list:
    """`sc2 infill`'s prompt for each task, within the token budget that leaves room for `max_new_tokens`."""
    if budget is None:
        budget = token_budget(config, max_new_tokens)
    return [build_prompt(tokenizer, t.prefix, t.suffix, budget) for t in tasks]


def run(loaded, tasks: Sequence[Task], max_new_tokens: int = 32, batch_size: int = 8, budget: int | None = None,
        on_batch=None) -> list[Result]:
    """Greedy raw generations (stopped only by end-of-text/separator tokens or the length), in batches."""
    from ..generation.engine import StopConditions, generate
    from ..tokenizer import boundary_token_ids

    model, tokenizer = loaded.model, loaded.tokenizer
    stop = StopConditions(token_ids=boundary_token_ids(tokenizer), max_new_tokens=max_new_tokens,
                          context_limit=model.config.max_position_embeddings)
    prompts = task_prompts(tokenizer, model.config, tasks, max_new_tokens, budget)
    order = sorted(range(len(tasks)), key=lambda i: len(prompts[i].ids))
    results: list[Result | None] = [None] * len(tasks)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        completions = generate(model, tokenizer, [prompts[i].ids for i in chunk], stop=stop)
        for i, c in zip(chunk, completions):
            p = prompts[i]
            results[i] = Result(tasks[i], c.text, first_line(c.text, p.prefix, p.suffix), c.finish_reason)
        if on_batch:
            on_batch(min(start + batch_size, len(order)), len(order))
    return results


def report(results: Sequence[Result], model: str, data: str, seed: int, max_new_tokens: int,
           items: bool = False) -> dict:
    """`summarize` with the run's settings; with `items`, every task's target, generation and scores too."""
    summary = summarize(results)
    summary.update(model=model, data=data, seed=seed, max_new_tokens=max_new_tokens)
    if items:
        summary["items"] = [
            {"path": r.task.path, "line": r.task.line, "target": r.task.target, "generated": r.raw,
             "first_line": r.line, "exact": r.exact, "first_line_exact": r.first_line_exact,
             "finish_reason": r.finish_reason}
            for r in results
        ]
    return summary


def summarize(results: Sequence[Result]) -> dict:
    exact = [float(r.exact) for r in results]
    first = [float(r.first_line_exact) for r in results]
    similarity = [r.similarity for r in results]
    n = max(1, len(results))
    return {
        "tasks": len(results),
        "exact_match": sum(exact) / n,
        "exact_match_ci95": bootstrap_interval(exact),
        "first_line_exact_match": sum(first) / n,
        "first_line_exact_match_ci95": bootstrap_interval(first, seed=1),
        "edit_similarity": sum(similarity) / n,
        "stop_reasons": dict(Counter(r.finish_reason for r in results)),
    }
