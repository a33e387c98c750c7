"""Training data in StarCoder2's own format (spec §8.3), packed into fixed-length token sequences.

Files are cut into pieces that fit a training sequence (at line boundaries), grouped into documents, and written
as `[<repo_name>{repo}]<file_sep>[{path}\\n]{code}<file_sep>...<|endoftext|>`; paths and the repo name are present
in half of the documents. Half of the pieces get the FIM transformation (PSM). Half of those split at two random
characters, as StarCoder2 was trained; the other half hide 1-3 whole lines, which is what line infilling asks for.
Everything is a pure function of (files, seed, epoch), so a stopped run can resume exactly where it was.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..fim.formats import EOS, FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, REPO_NAME
from ..tokenizer import Tokenizer

SKIP_DIRS = {"site-packages", "__pycache__", ".git", ".hg", ".svn", "node_modules", ".venv", "venv"}
MAX_FILE_BYTES = 1_000_000


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative, with forward slashes
    text: str


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
    return [SourceFile(file.path, text) for text in out]


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """(prefix, middle, suffix): at two random characters, or (half of the time) around 1-3 whole lines."""
    lines = text.splitlines(keepends=True)
    if rng.random() < 0.5 and len(lines) > 1:
        start = rng.randrange(len(lines))
        end = min(len(lines), start + rng.randint(1, 3))
        return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])
    a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
    return text[:a], text[a:b], text[b:]


def format_document(files: Sequence[SourceFile], rng: random.Random, repo_name: str, fim_rate: float = 0.5) -> str:
    with_metadata = rng.random() < 0.5
    text = f"{REPO_NAME}{repo_name}" if with_metadata else ""
    for f in files:
        head = f"{f.path}\n" if with_metadata else ""
        if rng.random() < fim_rate:
            prefix, middle, suffix = fim_split(f.text, rng)
            text += f"{FILE_SEP}{FIM_PREFIX}{head}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{middle}"
        else:
            text += f"{FILE_SEP}{head}{f.text}"
    return text + EOS


def epoch_documents(files: Sequence[SourceFile], seed: int, epoch: int, piece_chars: int, repo_name: str,
                    fim_rate: float = 0.5) -> list[str]:
    rng = random.Random(f"{seed}:{epoch}")
    all_pieces = [p for f in files for p in pieces(f, piece_chars)]
    rng.shuffle(all_pieces)
    docs, i = [], 0
    while i < len(all_pieces):
        n = rng.randint(1, 4)  # files of one repository travel together, as in StarCoder2's data
        docs.append(format_document(all_pieces[i:i + n], rng, repo_name, fim_rate))
        i += n
    return docs


def pack(token_lists: Sequence[Sequence[int]], seq_len: int) -> torch.Tensor:
    """Concatenate and cut into rows of seq_len + 1 tokens (inputs and shifted labels); the ragged end is dropped."""
    flat = torch.tensor([t for ids in token_lists for t in ids], dtype=torch.int32)
    rows = flat.numel() // (seq_len + 1)
    return flat[: rows * (seq_len + 1)].view(rows, seq_len + 1)


def epoch_tensor(files: Sequence[SourceFile], tokenizer: Tokenizer, seq_len: int, seed: int, epoch: int,
                 repo_name: str, fim_rate: float = 0.5) -> torch.Tensor:
    """All training rows of one epoch, in order (a pure function of its arguments)."""
    piece_chars = seq_len * 3  # about one sequence of code per piece
    docs = epoch_documents(files, seed, epoch, piece_chars, repo_name, fim_rate)
    encoded = tokenizer.encode_batch(docs)
    rows = pack(encoded, seq_len)
    order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return rows[order]

