"""Prompt-lookup drafts: guesses of the next tokens copied from earlier in the sequence.

Infilling and editing often write code that already appears in the prompt (a repeated call, a mirrored branch,
the rest of a line that exists elsewhere). When the last few tokens occurred before, the tokens that followed
them then are a cheap guess of what follows now. The engine checks a whole guess in one forward pass and keeps
only the tokens the model itself would have chosen greedily, so the output is unchanged: the gain is fewer,
fuller passes (reading the weights once for several tokens).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_NGRAM = 3
MIN_NGRAM = 2  # single-token matches ("(", "self") are everywhere and mostly wrong guesses
DRAFT_TOKENS = 8

LOOKUP_NEEDS = ("prompt lookup keeps the drafts greedy decoding would choose: it needs one greedy completion "
                "(temperature 0, one sample, one prompt) without a repetition penalty")


def lookup_applies(sampling, rows: int) -> bool:
    """Whether checking drafts in one pass gives the tokens decoding one at a time would (see LOOKUP_NEEDS)."""
    return rows == 1 and sampling.greedy and sampling.repetition_penalty == 1.0


class PromptLookup:
    """The token history and, for each n-gram size, where each n-gram last ended (the index of its follower)."""

    def __init__(self, tokens: Iterable[int], max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM,
                 draft_tokens: int = DRAFT_TOKENS) -> None:
        self.tokens: list[int] = []
        self.max_ngram, self.min_ngram, self.draft_tokens = max_ngram, min_ngram, draft_tokens
        self._follower: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(min_ngram, max_ngram + 1)}
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        # Before adding the token, record every n-gram that ends at the current last token as followed by it.
        end = len(self.tokens)
        for n, table in self._follower.items():
            if end >= n:
                table[tuple(self.tokens[end - n:])] = end
        self.tokens.append(token)

    def draft(self, limit: int | None = None) -> list[int]:
        """Up to `draft_tokens` (and `limit`) tokens that followed the most recent earlier occurrence of the
        longest matching suffix; empty when the suffix never occurred before."""
        count = self.draft_tokens if limit is None else min(self.draft_tokens, limit)
        if count <= 0:
            return []
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(self.tokens) < n:
                continue
            start = self._follower[n].get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start:start + count]
        return []
