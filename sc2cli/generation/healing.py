"""Token healing of a prompt's trailing whitespace.

Byte-level BPE merges a newline with the indentation after it ("\\n" + "    " is one token), so a prompt that
ends with a bare newline (or a space) ends on a token the model rarely saw in that place, and it tends to
continue as if a new file began. So the prompt is cut before its trailing whitespace and the generation is
held to begin with exactly that whitespace: while some of it is still owed, only tokens that continue it are
allowed. Those characters are the user's own, so they are not printed again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..tokenizer import Tokenizer

if TYPE_CHECKING:  # (torch is imported where a Healer is used: `split_trailing_whitespace` is for torch-free callers)
    from torch import Tensor

WHITESPACE = " \t\r\n"


def split_trailing_whitespace(text: str) -> tuple[str, str]:
    """(text without its trailing whitespace, that whitespace); all-whitespace text is left whole."""
    body = text.rstrip(WHITESPACE)
    return (body, text[len(body):]) if body else (text, "")


class Healer:
    """Per row: the whitespace still owed, and how many characters of the output belong to the prompt."""

    def __init__(self, tokenizer: Tokenizer, owed: str, rows: int) -> None:
        self.strings = tokenizer.token_strings()
        self.owed = [owed] * rows
        self.skip = [len(owed)] * rows
        self._allowed: dict[str, Tensor] = {}

    def active(self) -> bool:
        return any(self.owed)

    def allowed(self, owed: str) -> Tensor:
        import torch

        if owed not in self._allowed:
            self._allowed[owed] = torch.tensor(
                [bool(s) and (s.startswith(owed) or owed.startswith(s)) for s in self.strings])
        return self._allowed[owed]

    def constrain(self, logits: Tensor) -> Tensor:
        """Logits (rows, V) with every token that does not continue a row's owed whitespace at -inf."""
        out = logits.clone()
        for row, owed in enumerate(self.owed):
            if owed:
                allowed = self.allowed(owed).to(logits.device)
                width = min(out.shape[1], allowed.shape[0])
                out[row, :width].masked_fill_(~allowed[:width], float("-inf"))
                out[row, width:] = float("-inf")
        return out

    def advance(self, row: int, token: int) -> None:
        owed, text = self.owed[row], self.strings[token] if token < len(self.strings) else ""
        self.owed[row] = owed[len(text):] if owed.startswith(text) and text else ""

    def strip(self, row: int, text: str) -> str:
        """The part of a row's new text that is not the prompt's own whitespace."""
        n = min(self.skip[row], len(text))
        self.skip[row] -= n
        return text[n:]
