"""Training a tokenizer shaped like StarCoder2's (spec §8.1): byte-level BPE, digits split one per token before
the GPT-2 byte-level regex, ByteLevel decoder, no BOS/EOS post-processor, and the 38 special tokens as ids 0-37."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import InputError
from ..tokenizer import SPECIAL_TOKENS

# The smallest vocabulary there is: the special tokens and one token per byte (the initial alphabet). The trainer
# never goes below it, so a smaller request would silently become this size.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_VOCAB_SIZE:
        raise InputError(f"the vocabulary must hold at least {MIN_VOCAB_SIZE} tokens ({len(SPECIAL_TOKENS)} special "
                         f"tokens and one per byte), got {vocab_size}", field="vocab_size")


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    check_vocab_size(vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),  # the trainer gives these the first ids, in order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
