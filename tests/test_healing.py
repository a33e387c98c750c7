"""Token healing of trailing whitespace: the prompt loses its trailing whitespace, the generation must begin with
it, and it is not printed twice."""

from __future__ import annotations

import torch

from sc2cli.generation.engine import StopConditions, generate
from sc2cli.generation.healing import Healer, split_trailing_whitespace
from sc2cli.hub import shipped_model_dir
from sc2cli.model.transformer import Starcoder2ForCausalLM
from sc2cli.tokenizer import Tokenizer


def test_split_trailing_whitespace():
    assert split_trailing_whitespace("def f():\n    ") == ("def f():", "\n    ")
    assert split_trailing_whitespace("x = ") == ("x =", " ")
    assert split_trailing_whitespace("x") == ("x", "")
    assert split_trailing_whitespace(" \n") == (" \n", "")  # nothing but whitespace: left alone


def test_healer_allows_only_continuations_and_strips_the_owed_text():
    tokenizer = Tokenizer.from_dir(shipped_model_dir())
    healer = Healer(tokenizer, "\n    ", rows=1)
    logits = torch.zeros(1, tokenizer.vocab_size)
    allowed = torch.isfinite(healer.constrain(logits)[0]).nonzero().flatten().tolist()
    strings = tokenizer.token_strings()
    assert allowed and all(strings[i].startswith("\n    ") or "\n    ".startswith(strings[i]) for i in allowed)
    assert tokenizer.eos_id not in allowed
    newline = strings.index("\n")
    healer.advance(0, newline)
    assert healer.owed == ["    "] and healer.active()
    assert healer.strip(0, "\n") == "" and healer.strip(0, "    return") == "return"
    assert healer.strip(0, " x") == " x"  # the prompt's part is gone once


def test_generation_begins_with_the_healed_whitespace_and_does_not_repeat_it():
    directory = shipped_model_dir()
    model = Starcoder2ForCausalLM.from_pretrained(directory).prepare_for_inference()
    tokenizer = Tokenizer.from_dir(directory)
    body, owed = split_trailing_whitespace("def add(a, b):\n")
    stop = StopConditions(token_ids=frozenset({tokenizer.eos_id}), max_new_tokens=12)
    (c,) = generate(model, tokenizer, [tokenizer.encode(body)], stop=stop, heal=owed)
    full = tokenizer.decode(c.tokens)
    assert full.startswith("\n")
    assert c.text == full[1:]
    assert c.text.startswith(" ")  # an indented body, which the unhealed prompt does not get
