"""llama.cpp as a second oracle, on GGUF files `sc2 export gguf` writes: it tokenizes real files exactly as sc2
does, and on the exported float32 model its greedy tokens are sc2's float32 tokens (logits compared at every
position). llama.cpp's starcoder2 attends over the whole context, so sequences stay within the model's window.

Needs llama-cpp-python (`make test` builds it once; pip caches the wheel); skipped with the reason otherwise."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it could not be built)")

from conftest import PARITY_REPORT  # noqa: E402
from sc2cli.checkpoint import load  # noqa: E402
from sc2cli.export.gguf import export  # noqa: E402
from sc2cli.hub import resolve  # noqa: E402

pytestmark = pytest.mark.slow
FILES = 300
PROMPTS = 40
NEW_TOKENS = 24
PROMPT_CHARS = 600


@pytest.fixture(scope="module")
def gguf_f32(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama") / "sc2-tiny-f32.gguf"
    export(resolve("sc2-tiny"), path, "f32")
    return path


@pytest.fixture(scope="module")
def ours():
    return load("sc2-tiny", dtype="float32")


def _stdlib_files(count: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        if len(texts) == count:
            break
    return texts


def test_llama_cpp_tokenizes_real_files_as_sc2_does(gguf_f32, ours):
    vocab = llama_cpp.Llama(model_path=str(gguf_f32), vocab_only=True, verbose=False)
    texts = _stdlib_files(FILES)
    assert len(texts) == FILES
    differing = [i for i, text in enumerate(texts)
                 if vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                 != ours.tokenizer.encode_text(text)]
    PARITY_REPORT[f"llama.cpp tokenization: files differing of {FILES}"] = float(len(differing))
    assert not differing, [texts[i][:80] for i in differing[:3]]


def _prompts(tokenizer, window: int) -> list[list[int]]:
    """Starts of real files, short enough that prompt and generation stay inside the window."""
    prompts = []
    for text in _stdlib_files(PROMPTS * 2):
        ids = tokenizer.encode_text(text[:PROMPT_CHARS])
        ids = ids[: window - NEW_TOKENS - 1]
        if len(ids) >= 8:
            prompts.append(ids)
        if len(prompts) == PROMPTS:
            break
    return prompts


def test_the_exported_f32_model_gives_sc2s_greedy_tokens(gguf_f32, ours):
    model, tokenizer = ours.model, ours.tokenizer
    window = model.config.sliding_window or model.config.max_position_embeddings
    # (a float32 KV cache: llama.cpp's default float16 one would round every key and value)
    llm = llama_cpp.Llama(model_path=str(gguf_f32), n_ctx=window, n_threads=2, n_batch=window, logits_all=True,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
    agree = 0
    worst = 0.0
    prompts = _prompts(tokenizer, window)
    for prompt in prompts:
        ids = list(prompt)
        for _ in range(NEW_TOKENS):  # greedy on both sides, from the same tokens
            with torch.inference_mode():
                logits = model(torch.tensor([ids])).logits[0].float().numpy()
            llm.reset()
            llm.eval(ids)
            theirs = np.asarray(llm.scores[: len(ids)])
            scale = np.abs(logits).max()
            worst = max(worst, float(np.abs(theirs - logits).max() / scale))
            ids.append(int(logits[-1].argmax()))
            if int(theirs[-1].argmax()) != ids[-1]:
                break
        else:
            agree += 1
    PARITY_REPORT[f"llama.cpp f32 greedy: prompts agreeing of {len(prompts)}"] = float(agree)
    PARITY_REPORT["llama.cpp f32 logits vs sc2 f32 (max |diff| / max |logit|)"] = worst
    assert agree == len(prompts)
    # Not 1e-5 as against transformers: ggml's CPU GELU reads a float16 table (about 2.5e-4 of the largest logit
    # measured here), the rest is summation order.
    assert worst < 1e-3
