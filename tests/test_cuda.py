"""The CUDA paths against the reference: run where a CUDA GPU is present (`make gpu-check` on a GPU machine),
skipped with the reason elsewhere. The reference runs on the CPU in float32; sc2 runs on the GPU in float32
with TF32 off (torch's default), so greedy tokens must be identical and logits within 1e-4 (the GPU's
reductions run in another order than the CPU's)."""

from __future__ import annotations

import pytest
import torch
from oracle import WINDOW, random_prompt, reference_greedy, windowed_pair

from sc2cli.generation.engine import StopConditions, generate, prefill
from sc2cli.model.cache import KVCache
from sc2cli.model.transformer import Starcoder2ForCausalLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (run on a GPU machine)")


@pytest.fixture(scope="module")
def cuda_pair(tmp_path_factory):
    ref, _ = windowed_pair(directory := tmp_path_factory.mktemp("cuda"))
    ours = Starcoder2ForCausalLM.from_pretrained(directory, dtype=torch.float32, device="cuda")
    return ref, ours.prepare_for_inference()


@pytest.mark.parametrize("decode", ["eager", "static", "cuda-graph"])
def test_each_cuda_decode_mode_gives_the_reference_greedy_tokens(cuda_pair, decode):
    ref, ours = cuda_pair
    prompts = [random_prompt(24, seed=1), random_prompt(7, seed=2)]  # left padding, and the window crossed twice
    new = 3 * WINDOW
    got = generate(ours, None, prompts, stop=StopConditions(max_new_tokens=new), decode=decode)
    assert [c.tokens for c in got] == reference_greedy(ref, prompts, new)


@pytest.mark.parametrize("chunk", [5, 3 * WINDOW])
def test_cuda_prefill_across_the_window_gives_the_reference_logits(cuda_pair, chunk):
    """Chunks after the first attend with a mask tensor (on grouped heads: see `grouped_attention`)."""
    ref, ours = cuda_pair
    ids = torch.tensor([random_prompt(3 * WINDOW + 5, seed=4)])
    with torch.no_grad():
        expected = ref(ids).logits[:, -1]
    cache = KVCache(ours.config, 1, ids.shape[1], dtype=torch.float32, device="cuda")
    gpu_ids = ids.cuda()
    got = prefill(ours, gpu_ids, torch.ones_like(gpu_ids), cache, chunk_size=chunk).cpu()
    assert (got - expected).abs().max().item() <= 1e-4
    assert got.argmax(-1).tolist() == expected.argmax(-1).tolist()


def test_cuda_bfloat16_model_keeps_the_reference_top_token(tmp_path):
    """bf16 on the GPU: the shipped dtype there. The logits move by bf16 rounding; the greedy first token of a
    prompt across the window stays the reference's."""
    ref, _ = windowed_pair(tmp_path)
    ours = Starcoder2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device="cuda").prepare_for_inference()
    ids = torch.tensor([random_prompt(2 * WINDOW + 3, seed=5)])
    with torch.no_grad():
        expected = ref(ids).logits[:, -1]
        got = ours(ids.cuda()).logits[:, -1].float().cpu()
    assert (got - expected).abs().max().item() <= 0.1 * expected.abs().max().item()
    assert got.argmax(-1).tolist() == expected.argmax(-1).tolist()
