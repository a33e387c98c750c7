"""Training data in StarCoder2's own format (spec §8.3), packed into fixed-length token sequences.

Files are cut into pieces that fit a training sequence (at line boundaries), grouped into documents of one
repository, and written as `[<repo_name>{repo}]<file_sep>[{path}\\n]{code}<file_sep>...<|endoftext|>`; paths and
the repo name are present in half of the documents. Half of the pieces get the FIM transformation, in PSM order
(the one StarCoder2 documents and the one sc2 prompts with; SPM would spend training on a format never asked for).
The hidden middle is chosen as editors and the infill benchmark ask for one (`SPANS`): mostly whole lines (one
line, the rest of a line after a cursor, a few lines, an indented block), some at two random characters, as
StarCoder2 was trained.

A folder of sources is split into training and held-out files by path hash; a corpus built by corpus.py is split
by package (its `train/` and `heldout/` folders), and each package is its own repository.

Rows are made as they are consumed (`epoch_rows`): documents are tokenized a block at a time, never the whole
epoch. Everything is a pure function of (files, seed, epoch), so a stopped run can resume exactly where it was.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from ..errors import InputError
from ..fim.formats import EOS, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, REPO_NAME
from ..tokenizer import Tokenizer

SKIP_DIRS = {"site-packages", "__pycache__", ".git", ".hg", ".svn", "node_modules", ".venv", "venv"}
MAX_FILE_BYTES = 1_000_000


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative, with forward slashes
    text: str
    repo: str | None = None  # the repository it belongs to (a corpus' package); None: the run's repo name


def collect_files(root: str | Path, suffixes: Sequence[str] = (".py",)) -> list[SourceFile]:
    """Readable UTF-8 source files under `root`, sorted by path (so the corpus is the same on every run)."""
    root = Path(root)
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        if path.suffix not in suffixes or not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            files.append(SourceFile(rel.as_posix(), text.replace("\r\n", "\n")))
    return files


def is_heldout(path: str, fraction: float = 0.05) -> bool:
    """Deterministic split by path hash: the same file is always on the same side."""
    digest = int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big")
    return digest % 10_000 < fraction * 10_000


def corpus_files(folder: Path, split: str) -> list[SourceFile]:
    """The files of one split of a corpus built by corpus.py, each with its package as its repository and its
    path inside the package (the standard library's repository is python/cpython, as for a plain folder)."""
    files = []
    for f in collect_files(folder / split):
        package, _, path = f.path.partition("/")
        files.append(SourceFile(path, f.text, STDLIB_REPO if package == "python-stdlib" else package))
    return files


def split_files(files: Sequence[SourceFile], heldout_fraction: float = 0.05) -> tuple[list[SourceFile], list[SourceFile]]:
    train = [f for f in files if not is_heldout(f.path, heldout_fraction)]
    heldout = [f for f in files if is_heldout(f.path, heldout_fraction)]
    return train, heldout


def pieces(file: SourceFile, max_chars: int) -> list[SourceFile]:
    """Cut a file at line boundaries into pieces of at most `max_chars` (a longer single line stays whole)."""
    if len(file.text) <= max_chars:
        return [file]
    out, current = [], ""
    for line in file.text.splitlines(keepends=True):
        if current and len(current) + len(line) > max_chars:
            out.append(current)
            current = ""
        current += line
    if current:
        out.append(current)
    return [SourceFile(file.path, text, file.repo) for text in out]


# How FIM middles are chosen (shares of the FIM pieces): what an editor's cursor asks for, and random spans.
SPANS = (("line", 0.30), ("line_rest", 0.15), ("lines", 0.20), ("block", 0.20), ("chars", 0.15))
STDLIB_REPO = "python/cpython"


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of a piece, the middle chosen by a kind drawn from SPANS."""
    lines = text.splitlines(keepends=True)
    kind = rng.choices([k for k, _ in SPANS], weights=[w for _, w in SPANS])[0]
    code = [i for i, line in enumerate(lines) if line.strip()]
    if kind != "chars" and code:
        start = rng.choice(code)
        if kind == "line":
            end = start + 1
        elif kind == "line_rest":  # a cursor inside the line: the middle is the rest of it
            line = lines[start]
            indent = len(line) - len(line.lstrip())
            cut = rng.randrange(indent, len(line.rstrip("\n")) + 1)
            before = "".join(lines[:start]) + line[:cut]
            return before, line[cut:], "".join(lines[start + 1:])
        elif kind == "lines":
            end = min(len(lines), start + rng.randint(2, 5))
        else:
            start, end = _block(lines, start)
        return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])
    a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
    return text[:a], text[a:b], text[b:]


def _block(lines: list[str], start: int) -> tuple[int, int]:
    """The lines of the indented block that `start` opens (a line ending in ':', then its deeper lines), or of the
    block `start` belongs to, from `start` down to where the indentation comes back."""
    def indent(line: str) -> int:
        return len(line) - len(line.lstrip())

    opener = lines[start].rstrip().endswith(":")
    base = indent(lines[start])
    first = start + 1 if opener else start
    end = first
    while end < len(lines) and (not lines[end].strip() or indent(lines[end]) > base or
                                (not opener and indent(lines[end]) == base)):
        end += 1
    while end > first and not lines[end - 1].strip():  # trailing blank lines stay in the suffix
        end -= 1
    return (first, end) if end > first else (start, start + 1)


def format_document(files: Sequence[SourceFile], rng: random.Random, repo_name: str, fim_rate: float = 0.5,
                    middles: list[str] | None = None) -> str:
    """One document of files of one repository; `middles` (if given) collects the FIM middles written."""
    with_metadata = rng.random() < 0.5
    text = f"{REPO_NAME}{repo_name}" if with_metadata else ""
    for f in files:
        head = f"{f.path}\n" if with_metadata else ""
        if rng.random() < fim_rate:
            prefix, middle, suffix = fim_split(f.text, rng)
            text += f"{FILE_SEP}{FIM_PREFIX}{head}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{middle}"
            if middles is not None:
                middles.append(middle)
        else:
            text += f"{FILE_SEP}{head}{f.text}"
    return text + EOS


def epoch_documents(files: Sequence[SourceFile], seed: int, epoch: int, piece_chars: int, repo_name: str,
                    fim_rate: float = 0.5, middles: list[str] | None = None) -> Iterator[str]:
    """The epoch's documents in order: pieces in a random order, each document 1-4 pieces of one repository
    (files of one repository travel together, as in StarCoder2's data)."""
    rng = random.Random(f"{seed}:{epoch}")
    all_pieces = [p for f in files for p in pieces(f, piece_chars)]
    rng.shuffle(all_pieces)
    queues: dict[str, deque] = {}
    for index, piece in enumerate(all_pieces):
        queues.setdefault(piece.repo or repo_name, deque()).append(index)
    used = bytearray(len(all_pieces))
    for index, piece in enumerate(all_pieces):
        if used[index]:
            continue
        queue = queues[piece.repo or repo_name]
        group = []
        n = rng.randint(1, 4)
        while queue and len(group) < n:
            taken = queue.popleft()
            if not used[taken]:
                used[taken] = 1
                group.append(all_pieces[taken])
        yield format_document(group, rng, piece.repo or repo_name, fim_rate, middles)


def epoch_rows(files: Sequence[SourceFile], tokenizer: Tokenizer, seq_len: int, seed: int, epoch: int,
               repo_name: str, fim_rate: float = 0.5, block_docs: int = 256) -> Iterator[torch.Tensor]:
    """The epoch's training rows (seq_len + 1 tokens: inputs and shifted labels), one at a time, in order (a pure
    function of its arguments). Documents are tokenized `block_docs` at a time and packed end to end; the rows of a
    block are shuffled among themselves (the documents already come in a random order)."""
    piece_chars = seq_len * 3  # about one sequence of code per piece
    order = torch.Generator().manual_seed(seed * 1000 + epoch)
    carry = torch.empty(0, dtype=torch.int32)
    block: list[str] = []
    docs = epoch_documents(files, seed, epoch, piece_chars, repo_name, fim_rate)
    for doc in [*docs, None]:
        if doc is not None:
            block.append(doc)
            if len(block) < block_docs:
                continue
        if not block:
            break
        flat = torch.cat([carry, *(torch.tensor(ids, dtype=torch.int32) for ids in tokenizer.encode_batch(block))])
        block = []
        count = flat.numel() // (seq_len + 1)
        rows = flat[: count * (seq_len + 1)].view(count, seq_len + 1)
        carry = flat[count * (seq_len + 1):]
        for i in torch.randperm(count, generator=order).tolist():
            yield rows[i]


class Batches:
    """Batches of training rows over epochs, resumable where a run stopped (its epoch and the next row in it)."""

    def __init__(self, files: Sequence[SourceFile], tokenizer: Tokenizer, seq_len: int, seed: int, repo_name: str,
                 fim_rate: float, batch_size: int, epoch: int = 0, row: int = 0) -> None:
        self.make = lambda e: epoch_rows(files, tokenizer, seq_len, seed, e, repo_name, fim_rate)
        self.batch_size, self.epoch, self.row = batch_size, epoch, row
        self.rows = islice(self.make(epoch), row, None)  # a resumed run replays (tokenizes) the rows it had used

    def next(self) -> torch.Tensor:
        """The next batch (batch_size x (seq_len + 1)); the next epoch begins when this one has no full batch left.
        An InputError when a whole epoch gives less than one batch."""
        rows = list(islice(self.rows, self.batch_size))
        if len(rows) < self.batch_size:
            if self.row == 0:
                raise InputError(f"the training data gives {len(rows)} sequences, fewer than one batch of "
                                 f"{self.batch_size}", field="batch_size")
            self.epoch, self.row = self.epoch + 1, 0
            self.rows = self.make(self.epoch)
            return self.next()
        self.row += self.batch_size
        return torch.stack(rows)


def first_rows(files: Sequence[SourceFile], tokenizer: Tokenizer, seq_len: int, seed: int, repo_name: str,
               fim_rate: float, count: int) -> torch.Tensor:
    """The first `count` rows of epoch 0 (fewer if the files give fewer), as one tensor (the held-out rows)."""
    rows = []
    for row in epoch_rows(files, tokenizer, seq_len, seed, 0, repo_name, fim_rate):
        rows.append(row)
        if len(rows) == count:
            break
    return torch.stack(rows) if rows else torch.empty(0, seq_len + 1, dtype=torch.int32)


def middle_share(files: Sequence[SourceFile], tokenizer: Tokenizer, seq_len: int, seed: int = 0,
                 fim_rate: float = 0.5, docs: int = 2000) -> float:
    """The share of training tokens that are FIM middles, over the first `docs` documents of epoch 0."""
    middles: list[str] = []
    sample = []
    for doc in epoch_documents(files, seed, 0, seq_len * 3, STDLIB_REPO, fim_rate, middles):
        sample.append(doc)
        if len(sample) == docs:
            break
    total = sum(len(ids) for ids in tokenizer.encode_batch(sample))
    return sum(len(ids) for ids in tokenizer.encode_batch(middles)) / max(total, 1)
