"""StarCoder2 tokenizer: a thin wrapper over the `tokenizers` library plus a streaming detokenizer.

StarCoder2 ships a byte-level BPE `tokenizer.json` (spec §8.1). Special-token ids are always looked up by
string, never hard-coded, so any tokenizer.json with the same token strings works.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import tokenizers

# Spec §8.2, in id order (0..37 in the released tokenizer).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<repo_name>", "<file_sep>",
    "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
    "<jupyter_output>", "<jupyter_script>", "<empty_output>", "<code_to_intermediate>", "<intermediate_to_code>",
    "<pr>", "<pr_status>", "<pr_is_merged>", "<pr_base>", "<pr_file>", "<pr_base_code>", "<pr_diff>",
    "<pr_diff_hunk>", "<pr_comment>", "<pr_event_id>", "<pr_review>", "<pr_review_state>", "<pr_review_comment>",
    "<pr_in_reply_to_review_id>", "<pr_in_reply_to_comment_id>", "<pr_diff_hunk_comment_line>",
    "<NAME>", "<EMAIL>", "<KEY>", "<PASSWORD>",
)
EOS_TOKEN = "<|endoftext|>"
# What the byte-level decoder yields for bytes that are not (yet) a whole UTF-8 character.
_REPLACEMENT = "\ufffd"


class Tokenizer:
    """A `tokenizers.Tokenizer` with the conventions a code-completion CLI needs."""

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        self._tok = tokenizer
        # A second copy that reads special-token strings as plain text (for `encode_text`). Switching one
        # instance's `encode_special_tokens` back and forth would race when requests of a server encode at once.
        self._literal = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self._literal.encode_special_tokens = True
        self._token_strings: list[str] | None = None

    def token_strings(self) -> list[str]:
        """Each id's own text ("" for special tokens), computed once."""
        if self._token_strings is None:
            ids = [[i] for i in range(self.vocab_size)]
            self._token_strings = self._tok.decode_batch(ids, skip_special_tokens=True)
        return self._token_strings

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json`; a missing file is FileNotFoundError, an unreadable one ValueError."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception with a multi-line serde message
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(f"cannot load tokenizer {path}: {reason}") from e
        return cls(tok)

    @classmethod
    def from_dir(cls, directory: str | Path) -> Tokenizer:
        """Load `tokenizer.json` from a checkpoint directory."""
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {directory}")
        return cls.from_file(path)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        return self.special_id(EOS_TOKEN)

    def special_id(self, token: str) -> int | None:
        """Id of `token` (e.g. "<file_sep>"), or None when this tokenizer lacks it."""
        return self._tok.token_to_id(token)

    def token_id(self, token: str) -> int:
        """Id of `token`; KeyError when this tokenizer lacks it."""
        token_id = self.special_id(token)
        if token_id is None:
            raise KeyError(f"token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS.

        Special-token strings inside `text` (e.g. "<fim_prefix>") become their special ids, which is how FIM
        and repo-level prompts are built; user text containing such strings is therefore not escaped.
        """
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of many texts at once (in parallel inside the library)."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def encode_text(self, text: str) -> list[int]:
        """Token ids of `text` taken literally: special-token strings in it are plain text (for file contents,
        which must never inject FIM markers into a prompt)."""
        return self._literal.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`. Whitespace is kept byte for byte: the ByteLevel decoder does no clean-up."""
        # Note: the library's own default is skip_special_tokens=True; ours keeps them.
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


class IncrementalDetokenizer:
    """Turns a stream of token ids into text chunks that never end inside a UTF-8 character.

    Byte-level BPE can split one character over several tokens; decoding the first part alone yields
    U+FFFD. Like text-generation-inference and vLLM, we decode a small window: `ids[:read]` was already
    emitted (kept as decoder context), `ids[read:]` is pending. Pending text is released once the window's
    text no longer ends in U+FFFD, i.e. the last character is complete; then the window slides forward.
    The concatenation of every `add()` result and `flush()` equals `tokenizer.decode(all_ids)`.

    A text that really ends in U+FFFD is only held back until the next token (or `flush()`).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []  # the window; everything before it has been emitted for good
        self._read = 0  # ids[:read] are emitted, ids[read:] pending

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Feed one token; return the text that became final (often "", never half a character)."""
        self._ids.append(token_id)
        emitted = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        if text.endswith(_REPLACEMENT) or not text.startswith(emitted):
            return ""
        self._ids = self._ids[self._read :]
        self._read = len(self._ids)
        return text[len(emitted) :]

    def flush(self) -> str:
        """End the stream: return all pending text, incomplete characters included (as U+FFFD)."""
        emitted = self._decode(self._ids[: self._read])
        text = self._decode(self._ids)
        self._ids, self._read = [], 0
        return text[len(emitted) :]


# Tokens after which a code completion is over: end of text, the start of another file or repository, or any
# FIM marker (the maintainers recommend stopping on <file_sep>; spec §8.4).
BOUNDARY_TOKENS = ("<|endoftext|>", "<file_sep>", "<repo_name>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>",
                   "<fim_pad>")


def boundary_token_ids(tokenizer: Tokenizer) -> frozenset[int]:
    return frozenset(i for i in map(tokenizer.special_id, BOUNDARY_TOKENS) if i is not None)
