"""Fill-in-the-middle and repository formats of StarCoder2 (spec §8.3-8.4), as token ids.

Every piece of user text is encoded literally (`encode_text`), so a file that happens to contain "<fim_prefix>"
cannot inject a marker; the markers come from the tokenizer's own special ids, looked up by string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..tokenizer import Tokenizer

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<fim_prefix>", "<fim_middle>", "<fim_suffix>"
FILE_SEP, REPO_NAME, EOS = "<file_sep>", "<repo_name>", "<|endoftext|>"


@dataclass(frozen=True)
class ContextFile:
    path: str
    text: str


def psm_text(prefix: str, suffix: str, path: str | None = None) -> str:
    """The PSM prompt as text, markers written out (for --dry-run display and for training documents)."""
    head = f"{path}\n" if path else ""
    return f"{FIM_PREFIX}{head}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def repo_context_text(files: Sequence[ContextFile], repo_name: str | None) -> str:
    """`<repo_name>{repo}<file_sep>{path}\\n{code}...<file_sep>` - what precedes the current file's FIM prompt."""
    text = f"{REPO_NAME}{repo_name}" if repo_name else ""
    for f in files:
        text += f"{FILE_SEP}{f.path}\n{f.text}"
    return text + (FILE_SEP if (files or repo_name) else "")


def encode_fim_prompt(
    tokenizer: Tokenizer,
    prefix: str,
    suffix: str,
    path: str | None = None,
    context: Sequence[ContextFile] = (),
    repo_name: str | None = None,
) -> list[int]:
    """Token ids of `[<repo_name>..<file_sep>..]<fim_prefix>[path\\n]{prefix}<fim_suffix>{suffix}<fim_middle>`."""
    special = tokenizer.token_id
    ids: list[int] = []
    if repo_name:
        ids += [special(REPO_NAME)] + tokenizer.encode_text(repo_name)
    for f in context:
        ids += [special(FILE_SEP)] + tokenizer.encode_text(f"{f.path}\n{f.text}")
    if context or repo_name:
        ids.append(special(FILE_SEP))
    head = f"{path}\n" if path else ""
    ids += [special(FIM_PREFIX)] + tokenizer.encode_text(head + prefix)
    ids += [special(FIM_SUFFIX)] + tokenizer.encode_text(suffix)
    ids.append(special(FIM_MIDDLE))
    return ids
