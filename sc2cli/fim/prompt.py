"""The FIM prompt made to fit the model: the token budget, and what is cut when a file does not fit.

The budget is the model's context minus the tokens to generate. Within it, one more rule: the suffix and the
middle stay inside the sliding window, so the end of the prefix (the code right before the cursor) is still in
direct view of every generated token. When the prompt is too long, the far end of the suffix goes first (for that
rule), then context files (each one that fits is kept, nearest to the edited file first), then the prefix and
suffix are cut at line boundaries from their far ends, about 3:1 in favour of the prefix.

Time and memory follow the budget, not the file: a long file is first cut by characters around the cursor, then
tokenized.

Cuts are stable while a user types (so that a server reuses the cached prompt, see generation/slots.py): the
prefix is cut only at every STABLE_LINES-th line of the text given, so one more character at the cursor changes
the prompt at the cursor, not at its start, except once every STABLE_LINES lines of typing. (A context file left
out as the file grows stays out: that costs one cold prompt, once.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InputError
from ..tokenizer import Tokenizer
from .formats import ContextFile, encode_fim_prompt, psm_text, repo_context_text

# No token of a byte-level BPE vocabulary is longer than this many characters in practice (long runs of spaces are
# the longest); text further than budget * this from the cursor can never fit, so it is cut before tokenizing.
MAX_CHARS_PER_TOKEN = 32
MARKERS_AFTER_PREFIX = 2  # <fim_suffix> and <fim_middle>
STABLE_LINES = 16


@dataclass(frozen=True)
class Budget:
    """Prompt tokens allowed in all (`total`), and of those, the suffix's (`suffix`, None without a window)."""

    total: int
    suffix: int | None = None


def token_budget(config, max_new_tokens: int) -> Budget:
    """The prompt budget for a model config and a generation length (see the module docstring)."""
    total = config.max_position_embeddings - max_new_tokens
    window = config.sliding_window
    if not window or window >= config.max_position_embeddings:
        return Budget(total)
    # At least an eighth of the window for the suffix, even when the middle alone could fill the window.
    suffix = max(window - max_new_tokens - MARKERS_AFTER_PREFIX, window // 8)
    return Budget(total, suffix)


@dataclass
class Truncation:
    dropped_context: list[str] = field(default_factory=list)
    prefix_chars_cut: int = 0
    suffix_chars_cut: int = 0

    @property
    def any(self) -> bool:
        return bool(self.dropped_context or self.prefix_chars_cut or self.suffix_chars_cut)

    def describe(self) -> str:
        parts = []
        if self.dropped_context:
            parts.append(f"left out {len(self.dropped_context)} context file(s): {', '.join(self.dropped_context)}")
        if self.prefix_chars_cut:
            parts.append(f"cut {self.prefix_chars_cut} characters from the start of the prefix")
        if self.suffix_chars_cut:
            parts.append(f"cut {self.suffix_chars_cut} characters from the end of the suffix")
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {"dropped_context": self.dropped_context, "prefix_chars_cut": self.prefix_chars_cut,
                "suffix_chars_cut": self.suffix_chars_cut}


@dataclass
class Prompt:
    ids: list[int]
    text: str  # with the special tokens written out
    prefix: str  # what is left of the prefix and suffix after cutting
    suffix: str
    truncation: Truncation


def build_prompt(tokenizer: Tokenizer, prefix: str, suffix: str, budget: Budget | int, path: str | None = None,
                 context: Sequence[ContextFile] = (), repo_name: str | None = None) -> Prompt:
    """The FIM prompt within `budget` (an int is a total budget without a window rule). `context` is in prompt
    order; when not all of it fits, the files at its end (next to the edited file) have priority, and every file
    that still fits is kept."""
    if isinstance(budget, int):
        budget = Budget(budget)
    full_prefix, full_suffix = prefix, suffix
    reach = budget.total * MAX_CHARS_PER_TOKEN
    prefix, first_line = _tail_lines(prefix, reach)
    suffix = _head_lines(suffix, reach)
    if budget.suffix is not None:
        suffix = _keep_head(tokenizer, suffix, budget.suffix)
    head = path if (context or repo_name) else None

    def count(prefix: str, suffix: str, files: Sequence[ContextFile]) -> int:
        return len(encode_fim_prompt(tokenizer, prefix, suffix, head, files, repo_name))

    kept: list[ContextFile] = []
    dropped: list[str] = []
    own = count(prefix, suffix, [])
    room = budget.total - own
    for f in reversed(context):  # from the edited file outwards: each file that still fits is kept
        cost = len(tokenizer.encode_text(f"{f.path}\n{f.text}")) + 1  # + its <file_sep>
        if cost <= room:
            kept.append(f)
            room -= cost
        else:
            dropped.append(f.path)
    files = kept[::-1]  # back in prompt order
    if own > budget.total:  # the file alone does not fit: cut its far ends
        prefix, suffix = _cut_prefix_and_suffix(tokenizer, prefix, suffix, budget.total - (own - _text_tokens(
            tokenizer, prefix, suffix)), lambda p, s: count(p, s, files) <= budget.total, first_line)
    ids = encode_fim_prompt(tokenizer, prefix, suffix, head, files, repo_name)
    truncation = Truncation(dropped, len(full_prefix) - len(prefix), len(full_suffix) - len(suffix))
    text = repo_context_text(files, repo_name) + psm_text(prefix, suffix, head)
    return Prompt(ids, text, prefix, suffix, truncation)


def _text_tokens(tokenizer: Tokenizer, prefix: str, suffix: str) -> int:
    return len(tokenizer.encode_text(prefix)) + len(tokenizer.encode_text(suffix))


def _cut_prefix_and_suffix(tokenizer: Tokenizer, prefix: str, suffix: str, room: int, fits,
                           first_line: int = 0) -> tuple[str, str]:
    """Keep the end of the prefix and the start of the suffix within `room` tokens, about 3:1 for the prefix.
    `first_line`: the number of the prefix's first line in the text given (the prefix is cut at stable lines)."""
    full_prefix, full_suffix = prefix, suffix
    while True:
        if room < 2:
            raise InputError("the token budget is too small for this prompt: generate fewer tokens or give less "
                             "context", field="max_new_tokens")
        suffix_room = min(room // 4, len(tokenizer.encode_text(full_suffix)))
        prefix = _keep_tail(tokenizer, full_prefix, room - suffix_room, first_line)
        suffix = _keep_head(tokenizer, full_suffix, room - len(tokenizer.encode_text(prefix)))
        if fits(prefix, suffix):
            return prefix, suffix
        room -= 1  # "path\n" is encoded together with the prefix, so the count may be off by a token or two


def _tail_lines(text: str, chars: int) -> tuple[str, int]:
    """The whole lines at the end of `text` within `chars` characters, cut at a stable line (all of it when it is
    shorter); and the number of the first line kept."""
    if len(text) <= chars:
        return text, 0
    outside = text.count("\n", 0, len(text) - chars) + 1  # lines that start before the reach
    drop = -(-outside // STABLE_LINES) * STABLE_LINES
    cut = -1
    for _ in range(drop):
        cut = text.find("\n", cut + 1)
        if cut < 0:
            return text[-chars:], 0  # (one very long line)
    return text[cut + 1:], drop


def _head_lines(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    cut = text.rfind("\n", 0, chars)
    return text[: cut + 1] if cut >= 0 else text[:chars]


def _keep_tail(tokenizer: Tokenizer, text: str, limit: int, first_line: int = 0) -> str:
    """The longest run of whole lines at the end of `text` that fits `limit` tokens and starts at a stable line
    (counted from `first_line`); at any line when the last stable one leaves too much."""
    lines = text.splitlines(keepends=True)

    def fits(drop: int) -> bool:
        return len(tokenizer.encode_text("".join(lines[drop:]))) <= limit

    stable = [d for d in range(len(lines)) if (first_line + d) % STABLE_LINES == 0]
    lo, hi = 0, len(stable)  # binary search on the stable cuts
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(stable[mid]):
            hi = mid
        else:
            lo = mid + 1
    if lo < len(stable):
        return "".join(lines[stable[lo]:])
    lo, hi = 0, len(lines)  # binary search on how many leading lines to drop
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.encode_text("".join(lines[mid:]))) <= limit:
            hi = mid
        else:
            lo = mid + 1
    kept = "".join(lines[lo:])
    if lo == len(lines) and lines:  # not even the last line fits: keep its tail characters
        kept = _fit_chars(tokenizer, lines[-1], limit)
    return kept


def _keep_head(tokenizer: Tokenizer, text: str, limit: int) -> str:
    lines = text.splitlines(keepends=True)
    lo, hi = 0, len(lines)  # binary search on how many lines to keep
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode_text("".join(lines[:mid]))) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return "".join(lines[:lo])


def _fit_chars(tokenizer: Tokenizer, line: str, limit: int) -> str:
    """The longest end of `line` that fits `limit` tokens (binary search on the start)."""
    lo, hi = 0, len(line)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.encode_text(line[mid:])) <= limit:
            hi = mid
        else:
            lo = mid + 1
    return line[lo:]
