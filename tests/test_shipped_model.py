"""The model that ships with sc2 (issue: shipped model): its shape and size, parity with the reference on its real
weights, the README's main command, and prompt lookup on real code."""

from __future__ import annotations

import ast
import json

import pytest
import torch
from cli_helpers import run_sc2
from oracle import load_reference

from sc2cli.generation.engine import StopConditions, generate
from sc2cli.generation.healing import split_trailing_whitespace
from sc2cli.hub import shipped_model_dir
from sc2cli.model.transformer import Starcoder2ForCausalLM
from sc2cli.tokenizer import Tokenizer

SHIPPED = shipped_model_dir()


def test_shipped_model_has_the_promised_shape_and_size():
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
    assert config["sliding_window"] < config["max_position_embeddings"]  # the window path runs for real
    total = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert total <= 40 * 1024 * 1024


def test_shipped_weights_give_the_reference_logits():
    ours = Starcoder2ForCausalLM.from_pretrained(SHIPPED, dtype=torch.float32)
    ref = load_reference("Starcoder2ForCausalLM", SHIPPED)
    ids = torch.tensor([Tokenizer.from_dir(SHIPPED).encode("import os\n\n\ndef walk(root):\n    for name in ")])
    with torch.no_grad():
        assert (ours(ids).logits - ref(ids).logits).abs().max().item() <= 1e-4  # trained weights: larger logits


@pytest.mark.slow
def test_main_command_prints_python_that_parses(tmp_path):
    # As the README has it (dtype auto: bfloat16 on x86 CPUs with AVX2 or AVX-512, float32 elsewhere), it runs...
    readme = run_sc2(["complete", "def fibonacci(n):"], tmp_path)
    assert readme.returncode == 0 and readme.stdout.strip(), readme.stderr.decode()
    # ...and the text asserted comes from float32, pinned so that it does not depend on the CPU.
    result = run_sc2(["complete", "--dtype", "float32", "def fibonacci(n):"], tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    code = "def fibonacci(n):" + result.stdout.decode()
    ast.parse(code)
    assert len(code.strip().splitlines()) >= 2  # a body, not just the prompt


@pytest.mark.slow
def test_line_mode_stops_at_the_end_of_the_line(tmp_path):
    result = run_sc2(["complete", "--dtype", "float32", "import os\nx = ", "--mode", "line"], tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert "\n" not in result.stdout.decode().strip("\n")


def test_prompt_lookup_copies_repeated_code_in_fewer_passes(monkeypatch):
    model = Starcoder2ForCausalLM.from_pretrained(SHIPPED, dtype=torch.float32).prepare_for_inference()
    tokenizer = Tokenizer.from_dir(SHIPPED)
    method = ("    def area(self):\n        return self.width * self.height\n\n"
              "    def scale(self, factor):\n        self.width *= factor\n        self.height *= factor\n"
              "        return self\n\n")
    body, owed = split_trailing_whitespace("class Box:\n" + method + "\nclass Frame:\n    def area(self):\n")
    prompt = tokenizer.encode(body)
    stop = StopConditions(token_ids=frozenset({tokenizer.eos_id}), max_new_tokens=40)
    passes = []
    forward = type(model).forward

    def counting(self, input_ids=None, *args, **kwargs):
        passes.append(input_ids.shape[1])
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", counting)
    plain = generate(model, tokenizer, [prompt], stop=stop, prompt_lookup=False, heal=owed)[0]
    plain_passes = len(passes)
    passes.clear()
    drafted = generate(model, tokenizer, [prompt], stop=stop, prompt_lookup=True, heal=owed)[0]
    assert drafted.tokens == plain.tokens
    assert plain.text.startswith("        return self.width * self.")  # healed: the body, not a new file
    assert len(passes) < plain_passes * 0.8, (len(passes), plain_passes)
