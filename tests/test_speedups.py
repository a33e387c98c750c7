"""The speed paths give the numbers of the plain path: the bf16 and int8 linears, the static decode step (what a
CUDA graph replays), and prompt-lookup drafts checked in one pass (issue: speed).

Kernel choices depend on the CPU (`sc2cli.devices.cpu_capability`); each branch is forced here by replacing that
one function, so both run on any x86 machine. A branch that needs hardware this CPU lacks is skipped with the
reason. Models whose numbers are asserted are loaded in an explicit dtype (float32 unless the test is about bf16).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from oracle import WINDOW, random_prompt, reference_greedy, windowed_pair

from sc2cli import devices
from sc2cli.devices import AVX2_CPU, AVX512_CPU, AVX512_VNNI_CPU, BASELINE_CPU, CpuCapability
from sc2cli.errors import InputError
from sc2cli.generation.decode import resolve_mode
from sc2cli.generation.engine import StopConditions, generate, prefill
from sc2cli.generation.lookup import PromptLookup
from sc2cli.model.cache import KVCache
from sc2cli.model.linear import (FLOAT32_BLOCK, GEMV_ROWS, ROWS_PER_ROW_GEMV, Bf16Linear, Int8Linear, bf16_kernel,
                                 decode_step, native_kernel_isa, quantize_int8, replacement,
                                 replacements)
from sc2cli.model.transformer import Starcoder2Attention, Starcoder2ForCausalLM, grouped_attention

REAL_CPU = devices.cpu_capability()
X86_INT8 = any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))
NO_ONEDNN_BF16 = pytest.mark.skipif(
    not REAL_CPU.onednn_bf16 or not torch.backends.mkldnn.is_available(),
    reason=f"this CPU ({REAL_CPU.isa}) has no oneDNN bf16 kernels (AVX-512 BW/VL/DQ or AVX-NE-CONVERT): the onednn "
           "branch of Bf16Linear cannot run here (its float32 branch and the choice are tested everywhere)")


def force_cpu(monkeypatch, capability: CpuCapability) -> None:
    monkeypatch.setattr(devices, "cpu_capability", lambda: capability)


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """(reference, checkpoint directory): the windowed checkpoint of the engine tests."""
    directory = tmp_path_factory.mktemp("windowed")
    ref, _ = windowed_pair(directory)
    return ref, directory


@pytest.fixture(scope="module")
def pair(windowed):
    """(reference, ours in float32 prepared for inference): float32 pinned, so no test depends on the CPU."""
    ref, directory = windowed
    return ref, Starcoder2ForCausalLM.from_pretrained(directory, dtype=torch.float32).prepare_for_inference()


# ---- linear kernels ----------------------------------------------------------------------------------------------

def _bf16_product_case(rows: int):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 64, generator=gen).bfloat16()
    bias = torch.randn(96, generator=gen).bfloat16()
    x = torch.randn(2, rows, 64, generator=gen).bfloat16()
    exact = F.linear(x.double(), weight.double(), bias.double())  # the sums without rounding
    return weight, bias, x, exact


def _check_bf16_product(got, exact):
    assert got.shape == exact.shape and got.dtype == torch.bfloat16
    # float32 sums rounded once to bf16 (and the bias added in bf16): within two bf16 steps of the largest output.
    assert (got.double() - exact).abs().max().item() <= 2 ** -7 * exact.abs().max().item()


@pytest.mark.parametrize("rows", [1, ROWS_PER_ROW_GEMV, ROWS_PER_ROW_GEMV + 1, 300])
def test_bf16_linear_float32_branch_computes_the_product(rows):
    """The branch of CPUs without bf16 arithmetic (AVX2): runs on any CPU, so it is tested on every machine."""
    weight, bias, x, exact = _bf16_product_case(rows)
    kernel = Bf16Linear(weight, bias, "float32")
    _check_bf16_product(kernel(x), exact)
    assert kernel.weight.data_ptr() == weight.data_ptr()  # the checkpoint's weight, not a copy


@NO_ONEDNN_BF16
@pytest.mark.parametrize("rows", [1, 5, 300])
def test_bf16_linear_onednn_branch_computes_the_product(rows):
    weight, bias, x, exact = _bf16_product_case(rows)
    _check_bf16_product(Bf16Linear(weight, bias, "onednn")(x), exact)


@pytest.mark.parametrize("capability, kernel", [(AVX512_VNNI_CPU, "onednn"), (AVX512_CPU, "onednn"),
                                                (AVX2_CPU, "float32"), (BASELINE_CPU, None)],
                         ids=["avx512-vnni", "avx512", "avx2", "baseline"])
def test_the_bf16_kernel_follows_the_cpu(capability, kernel, monkeypatch):
    """oneDNN's bf16 GEMM raises on AVX2 ("bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and
    avx512dq"), and torch's own bf16 GEMM is ~30x slower than the float32 one there: AVX2 never multiplies rows
    in bf16. Below AVX2 the bf16 `mv` has no vector code: plain F.linear."""
    force_cpu(monkeypatch, capability)
    cpu = torch.device("cpu")
    expected = kernel if kernel != "onednn" or torch.backends.mkldnn.is_available() else "float32"
    assert bf16_kernel(cpu, torch.bfloat16) == expected
    assert bf16_kernel(cpu, torch.float32) is None and bf16_kernel(cpu, torch.float16) is None
    weight = torch.randn(8, 4).bfloat16()
    chosen = replacement(weight, None, "none")
    assert (chosen is None) if kernel is None else (isinstance(chosen, Bf16Linear) and chosen.wide == expected)


def test_onednn_max_isa_below_bf16_turns_the_onednn_branch_off(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not devices.cpu_capability().onednn_bf16


def _bf16_logits(directory, ids, capability, monkeypatch, prepare: bool = True):
    force_cpu(monkeypatch, capability)
    model = Starcoder2ForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    if prepare:
        model = model.prepare_for_inference()
    with torch.no_grad():
        return model, model(ids).logits


@pytest.mark.parametrize("capability", [AVX2_CPU, AVX512_CPU, BASELINE_CPU], ids=["avx2", "avx512", "baseline"])
def test_bfloat16_model_on_each_cpu_kind_stays_within_bf16_rounding(windowed, capability, monkeypatch):
    """Each CPU kind's kernels (forced here; the onednn branch only where this CPU has it) against the unprepared
    bf16 model on F.linear, over a prompt (many rows) and one decode row."""
    if capability.onednn_bf16 and not (REAL_CPU.onednn_bf16 and torch.backends.mkldnn.is_available()):
        pytest.skip("this CPU has no oneDNN bf16 kernels")
    _, directory = windowed
    ids = torch.tensor([random_prompt(20, seed=5)])
    model, got = _bf16_logits(directory, ids, capability, monkeypatch)
    _, plain = _bf16_logits(directory, ids, capability, monkeypatch, prepare=False)
    kernels = [m for m in model.modules() if isinstance(m, Bf16Linear)]
    if capability is BASELINE_CPU:
        assert not kernels and not getattr(model, "inference_only", False)  # nothing replaced: still saveable
    else:
        assert isinstance(model.lm_head, Bf16Linear) and {k.wide for k in kernels} == {
            "onednn" if capability.onednn_bf16 else "float32"}
    assert got.dtype == torch.bfloat16
    assert (got.float() - plain.float()).abs().max().item() <= 2 ** -6 * plain.float().abs().max().item()
    with torch.no_grad():  # one row: the GEMM branch of a prompt's last token
        one = model(ids[:, :1]).logits
        plain_one = Starcoder2ForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)(ids[:, :1]).logits
    assert (one.float() - plain_one.float()).abs().max().item() <= 2 ** -6 * plain_one.float().abs().max().item()
    # A decode step: the native kernels (attention and products) where they run here; without them, torch's mv and,
    # without bf16 arithmetic (AVX2), decode attention in float32.
    attention = [m for m in model.modules() if isinstance(m, Starcoder2Attention)]
    assert attention and {m.float32_decode_attention for m in attention} == {capability is AVX2_CPU}
    assert {m.decode_attention_isa for m in attention} == {native_kernel_isa(model.device)}
    with torch.no_grad(), decode_step():
        step = model(ids[:, :1]).logits
    assert (step.float() - plain_one.float()).abs().max().item() <= 2 ** -6 * plain_one.float().abs().max().item()


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_the_logits_head_takes_the_decode_path_for_a_prompts_last_row(windowed, quantize, monkeypatch):
    """Only the lm_head: a prompt's last row (its logits) goes through the decode path outside decode steps, and
    gets the numbers a decode step gives it; the decoder's products of one prompt row keep the prompt path
    (the numbers the same row gets inside a whole prompt)."""
    from sc2cli import kernels

    _, directory = windowed
    model = Starcoder2ForCausalLM.from_pretrained(directory, dtype=torch.bfloat16).prepare_for_inference(quantize)
    heads = [m for m in model.modules() if getattr(m, "logits_head", False)]
    assert heads == [model.lm_head] and isinstance(model.lm_head, (Bf16Linear, Int8Linear))
    calls = []
    for name in ("bf16_gemv", "int8_gemv"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, real=real, **k: calls.append(a[0].shape) or real(*a, **k))
    gen = torch.Generator().manual_seed(7)
    last = torch.randn(1, 1, model.config.hidden_size, generator=gen).bfloat16()
    with decode_step():
        in_decode = model.lm_head(last)
    assert torch.equal(model.lm_head(last), in_decode)
    c_fc = model.model.layers[0].mlp.c_fc
    prompt = torch.randn(1, 3 * FLOAT32_BLOCK, c_fc.in_features, generator=gen).bfloat16()
    alone = c_fc(prompt[:, -1:])
    if native_kernel_isa(model.device):  # the decode step and the prompt's last row: the kernel; the c_fc row:
        # only where a prompt's every row takes it (float32: no bf16 arithmetic), never as a decode row
        on_prompt_rows = quantize == "none" and c_fc.wide == "float32"
        assert [rows for rows, _ in calls] == [model.config.vocab_size] * 2 + [c_fc.out_features] * on_prompt_rows
    if quantize == "none":  # (fbgemm rounds a prompt's rows to int8 in blocks: no row has numbers of its own)
        assert torch.equal(alone, c_fc(prompt)[:, -1:])


def test_int8_weights_round_trip_within_half_a_step():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 80, generator=gen)
    weight[3] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_int8(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    error = (q.float() * scale[:, None] - weight).abs()
    assert bool((error <= scale[:, None] / 2 + 1e-7).all())
    assert bool((q[3] == 0).all())


def test_int8_quantization_by_slices_equals_the_whole_matrix_at_once(monkeypatch):
    """Where the native kernel is not built the load quantizes a few rows at a time with torch's operations
    (bounded memory); each row's numbers are its own."""
    from sc2cli.model import linear

    weight = torch.randn(50, 80, generator=torch.Generator().manual_seed(1)).bfloat16()
    whole = linear.quantize_int8_with_torch(weight)
    monkeypatch.setattr(linear, "FLOAT32_SLICE_BYTES", 7 * 80 * 4)  # 7 rows a slice: 50 = 7 * 7 + 1
    sliced = linear.quantize_int8_with_torch(weight)
    assert torch.equal(whole[0], sliced[0]) and torch.equal(whole[1], sliced[1])
    assert (whole[0].float() * whole[1][:, None] - weight.float()).abs().max() <= whole[1].max() / 2 + 1e-7


# fbgemm rounds the activations to 8 bits where the CPU has VNNI and to 7 bits (`reduce_range`) where it would
# otherwise saturate its 16-bit pair sums. Each branch is forced; the full-range one only runs where it is exact.
INT8_BRANCHES = {"vnni": AVX512_VNNI_CPU, "no-vnni": AVX2_CPU}


@pytest.fixture(params=list(INT8_BRANCHES))
def int8_branch(request, monkeypatch) -> str:
    if request.param == "vnni" and X86_INT8 and not REAL_CPU.int8_vnni:
        pytest.skip("8-bit activations need AVX-512 VNNI, which this CPU lacks (fbgemm would saturate its 16-bit "
                    "sums); the no-vnni branch is what runs here")
    force_cpu(monkeypatch, INT8_BRANCHES[request.param])
    return request.param


def activation_levels(layer: Int8Linear) -> int:
    """Steps of fbgemm's activation rounding over [-max|x|, max|x|]: 255 with 8 bits, 127 with 7."""
    return 127 if layer.reduce_range else 255


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 4, 40])
def test_int8_linear_equals_the_dequantized_product(int8_branch, dtype, rows):
    gen = torch.Generator().manual_seed(rows)
    weight = torch.randn(64, 32, generator=gen).to(dtype)
    bias = torch.randn(64, generator=gen).to(dtype)
    layer = Int8Linear(weight, bias, dtype)
    x = torch.randn(rows, 32, generator=gen).to(dtype)
    expected = F.linear(x.float(), layer.dequantized(torch.float32), bias.float())
    got = layer(x).float()
    tolerance = 1e-4 if dtype == torch.float32 else 2 ** -6
    if layer.x86_packed is not None:
        assert layer.reduce_range == (int8_branch == "no-vnni")
        # fbgemm also rounds each block of GEMV_ROWS activation rows (one scale per block) to 8 bits, or 7 on
        # CPUs without VNNI: |error| <= sum|w| * max|x in the block| / levels per output (half a step per
        # activation). The 7-bit bound is twice the 8-bit one, the price of never saturating; measured here,
        # the worst error is 0.46 of its bound with 8 bits and 0.50 with 7 (saturating 8-bit sums: 25x).
        block_max = torch.cat([b.abs().amax().expand(len(b)) for b in x.float().split(GEMV_ROWS)])[:, None]
        bound = layer.dequantized(torch.float32).abs().sum(1) * block_max / activation_levels(layer)
        assert bool(((got - expected).abs() <= bound + tolerance * expected.abs().max()).all())
        assert layer.weight_int8 is None  # the int8 weight exists once, in fbgemm's layout
        return
    assert (got - expected).abs().max().item() <= tolerance * expected.abs().max().item()
    assert layer.weight_int8.dtype == torch.int8


def test_int8_model_stays_close_and_cannot_be_saved(int8_branch, windowed, tmp_path):
    _, directory = windowed
    plain = Starcoder2ForCausalLM.from_pretrained(directory, dtype=torch.float32).prepare_for_inference()
    q8 = Starcoder2ForCausalLM.from_pretrained(directory, dtype=torch.float32).prepare_for_inference("int8")
    assert isinstance(q8.lm_head, Int8Linear) and isinstance(q8.model.layers[0].self_attn.qkv_kernel, Int8Linear)
    ids = torch.tensor([random_prompt(20, seed=5)])
    with torch.no_grad():
        a, b = plain(ids).logits, q8(ids).logits
    # Measured max |diff| / max |logit| (prompt seeds 5-7): 0.032-0.040 with 8-bit activations, 0.047-0.057 with
    # 7-bit ones (twice the activation step; weight rounding is the same), 0.25-0.29 when 8-bit sums saturate.
    reduce_range = q8.lm_head.reduce_range
    assert (a - b).abs().max().item() <= (0.08 if reduce_range else 0.05) * a.abs().max().item()
    with pytest.raises(ValueError, match="prepare_for_inference"):
        q8.save_pretrained(tmp_path / "out")
    with pytest.raises(ValueError, match="quantize"):
        Starcoder2ForCausalLM.from_pretrained(directory, dtype=torch.float32).prepare_for_inference("int4")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_layers_built_on_several_threads_equal_those_built_one_at_a_time(dtype):
    """The load builds int8 layers on torch's thread count at once (fbgemm packs on one core); each layer, and the
    order they come in, must be what one thread builds."""
    gen = torch.Generator().manual_seed(12)
    layers = [(torch.randn(n, k, generator=gen).to(dtype), torch.randn(n, generator=gen).to(dtype) if n % 2 else None)
              for n, k in [(48, 32), (33, 64), (64, 48), (17, 32), (40, 40)]]
    alone = list(replacements(layers, "int8", workers=1))
    together = list(replacements(layers, "int8", workers=3))
    assert [type(m) for m in together] == [Int8Linear] * len(layers)
    for (weight, _), a, b in zip(layers, alone, together):
        x = torch.randn(40, weight.shape[1], generator=gen).to(dtype)
        assert torch.equal(a.scale, b.scale) and torch.equal(a(x), b(x))
        assert torch.equal(a(x[:1]), b(x[:1]))


AVX2_KERNEL_CHECK = textwrap.dedent("""
    import torch, torch.nn.functional as F
    from sc2cli import devices
    from sc2cli.model.linear import GEMV_ROWS, Int8Linear

    assert not devices.cpu_capability().int8_vnni  # FBGEMM_ENABLE_INSTRUCTIONS=AVX2 is honoured
    gen = torch.Generator().manual_seed(40)
    weight, bias = torch.randn(64, 32, generator=gen), torch.randn(64, generator=gen)
    x = torch.randn(40, 32, generator=gen)
    layer = Int8Linear(weight, bias, torch.float32)
    expected = F.linear(x, layer.dequantized(torch.float32), bias)
    half_step = layer.dequantized(torch.float32).abs().sum(1) * torch.cat(
        [b.abs().amax().expand(len(b)) for b in x.split(GEMV_ROWS)])[:, None]
    for reduce_range in (True, False):
        layer.reduce_range = reduce_range
        print((((layer(x) - expected).abs() - 1e-4 * expected.abs().max()) / half_step).max().item())
""")


@pytest.mark.slow
@pytest.mark.skipif(not (X86_INT8 and torch.cpu.get_capabilities().get("avx2")), reason="needs fbgemm on an AVX2 CPU")
def test_int8_on_fbgemm_avx2_kernels_is_as_accurate_as_the_bound(tmp_path):
    """The real AVX2 kernels (fbgemm capped by FBGEMM_ENABLE_INSTRUCTIONS, so this runs on AVX-512 CPUs too):
    sc2 picks 7-bit activations there and stays within the 7-bit bound; 8-bit ones would saturate far beyond it."""
    env = {**os.environ, "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}
    result = subprocess.run([sys.executable, "-c", AVX2_KERNEL_CHECK], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    seven_bit, eight_bit = (float(v) for v in result.stdout.split())
    assert seven_bit <= 1 / 127  # within sum|w| * max|x| / 127, as on a VNNI CPU with reduce_range
    assert eight_bit > 1 / 255, "fbgemm did not run its AVX2 kernels: the check above proved nothing"


# ---- choosing the device and dtype (sc2cli.devices) -----------------------------------------------------------------

def test_cpu_capability_reads_the_cpu_features(monkeypatch):
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    features = torch.cpu.get_capabilities()
    real = devices.cpu_capability()
    assert real.isa == torch.backends.cpu.get_cpu_capability()
    if features.get("architecture") == "x86_64":
        avx512 = all(features.get(f) for f in ("avx512_bw", "avx512_vl", "avx512_dq"))
        assert real.onednn_bf16 == bool(avx512 or features.get("avx_ne_convert"))
        assert real.int8_vnni == bool(features.get("avx512_vnni"))
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "avx2")  # fbgemm then runs its AVX2 kernels, VNNI or not
    assert not devices.cpu_capability().int8_vnni


@pytest.mark.parametrize("capability, dtype", [(AVX512_VNNI_CPU, torch.bfloat16), (AVX512_CPU, torch.bfloat16),
                                               (AVX2_CPU, torch.bfloat16), (BASELINE_CPU, torch.float32)],
                         ids=["avx512-vnni", "avx512", "avx2", "baseline"])
def test_auto_dtype_on_cpu_keeps_weights_16_bit_where_the_cpu_streams_them(capability, dtype, monkeypatch):
    force_cpu(monkeypatch, capability)
    assert devices.resolve_dtype("auto", torch.device("cpu")) == dtype
    assert devices.resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16  # explicit: runs everywhere


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
NO_MPS = pytest.mark.skipif(devices._mps_available(), reason="MPS is present")


@pytest.mark.parametrize("field, call, words", [
    pytest.param("device", lambda: devices.resolve_device("tpu"), "'tpu'", id="device-unknown"),
    pytest.param("device", lambda: devices.resolve_device("cuda"), "no CUDA GPU is available here; use cpu",
                 id="cuda-absent", marks=NO_CUDA),
    pytest.param("device", lambda: devices.resolve_device("mps"), "MPS is not available here; use cpu",
                 id="mps-absent", marks=NO_MPS),
    pytest.param("dtype", lambda: devices.resolve_dtype("float64", torch.device("cpu")),
                 "unknown dtype 'float64'; use auto, float32", id="dtype-unknown"),
    pytest.param("dtype", lambda: devices.resolve_dtype("float16", torch.device("cpu")),
                 "float16 does not run on cpu; use float32", id="dtype-does-not-run"),
])
def test_device_and_dtype_errors_name_the_field_not_a_flag(field, call, words, monkeypatch):
    """The core describes the problem; the CLI adds its flag (`--device: ...`)."""
    monkeypatch.setattr(devices, "_runs", lambda dtype, device: False)  # "does not run" is simulated
    with pytest.raises(InputError) as caught:
        call()
    assert caught.value.field == field and caught.value.exit_code == 2
    assert words in str(caught.value)
    assert "--" not in str(caught.value)


# ---- prompt attention over grouped heads ---------------------------------------------------------------------------

@pytest.mark.parametrize("masked", [False, True])
def test_repeating_kv_heads_gives_grouped_attention_its_numbers(masked):
    """The CUDA branch of `grouped_attention` (each query head given its own copy of its kv head, where the fused
    masked kernel takes no grouped heads), forced here: query head h must use kv head h // group."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 5, 16, generator=gen)
    k, v = torch.randn(2, 2, 9, 16, generator=gen), torch.randn(2, 2, 9, 16, generator=gen)
    mask = None
    if masked:  # a chunk after the first: every earlier key, then causal, with one padded key in row 1
        mask = torch.zeros(2, 1, 5, 9)
        mask[:, :, torch.arange(5)[:, None] < torch.arange(9)[None, :] - 4] = torch.finfo(torch.float32).min
        mask[1, :, :, 0] = torch.finfo(torch.float32).min
    grouped = grouped_attention(q, k, v, mask, not masked, 0.25, repeat_heads=False)
    repeated = grouped_attention(q, k, v, mask, not masked, 0.25, repeat_heads=True)
    expected = torch.stack([F.scaled_dot_product_attention(q[:, h], k[:, h // 3], v[:, h // 3],
                                                           attn_mask=None if mask is None else mask[:, 0],
                                                           is_causal=not masked, scale=0.25) for h in range(6)], 1)
    assert (repeated - expected).abs().max().item() <= 1e-6
    assert (grouped - expected).abs().max().item() <= 1e-6


# ---- the static decode step ----------------------------------------------------------------------------------------

def test_static_step_equals_reference_with_padding_and_window(pair):
    ref, ours = pair
    prompts = [random_prompt(24, seed=1), random_prompt(7, seed=2)]  # left padding, and the window crossed twice
    new = 40
    got = generate(ours, None, prompts, stop=StopConditions(max_new_tokens=new), decode="static")
    assert [c.tokens for c in got] == reference_greedy(ref, prompts, new)


def test_static_step_logits_equal_eager_logits_at_every_step(pair):
    _, ours = pair
    from sc2cli.generation.decode import EagerStep, StaticStep

    prompt = torch.tensor([random_prompt(5, seed=3)])
    caches = [KVCache(ours.config, 1, 5 + 3 * WINDOW) for _ in range(2)]
    worst = 0.0
    with torch.inference_mode():
        logits = [prefill(ours, prompt, torch.ones_like(prompt), c) for c in caches]
        steps = [EagerStep(ours, caches[0]), StaticStep(ours, caches[1])]
        position = torch.tensor([5])
        for _ in range(3 * WINDOW):  # the ring wraps twice
            token = logits[0].argmax(-1)
            logits = [step(token, position) for step in steps]
            worst = max(worst, (logits[0] - logits[1]).abs().max().item())
            position += 1
    assert worst <= 1e-5
    assert caches[0].seen == caches[1].seen
    assert sorted(caches[1].slot_columns.tolist()) == sorted(caches[0].slot_columns.tolist())


def test_decode_modes_are_checked(pair):
    _, ours = pair
    assert resolve_mode("auto", ours) == "static"  # on CPU
    for mode in ("cuda-graph", "compile"):
        with pytest.raises(ValueError, match="CUDA"):
            resolve_mode(mode, ours)
    with pytest.raises(ValueError, match="decode mode"):
        resolve_mode("turbo", ours)


# ---- prompt lookup -----------------------------------------------------------------------------------------------

def test_lookup_drafts_what_followed_the_latest_earlier_occurrence():
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8], draft_tokens=3)
    assert lookup.draft() == []  # the suffix (7, 8) never occurred before
    lookup.append(2)
    lookup.append(3)
    assert lookup.draft() == [7, 8, 2]  # (8, 2, 3) is new; (2, 3) last occurred at 6-7, followed by 7, 8, 2
    assert lookup.draft(limit=1) == [7]
    lookup.append(4)
    assert lookup.draft() == [5, 9, 2]  # (2, 3, 4) occurred once, at the start
    assert PromptLookup([5, 5]).draft() == []  # single-token matches are not drafted


def test_tentative_step_then_commit_equals_writing_the_kept_columns(pair):
    _, ours = pair
    prompt = torch.tensor([random_prompt(14, seed=4)])
    extra = torch.tensor([random_prompt(6, seed=5)])
    a, b = (KVCache(ours.config, 1, 40) for _ in range(2))
    with torch.inference_mode():
        prefill(ours, prompt, torch.ones_like(prompt), a)
        prefill(ours, prompt, torch.ones_like(prompt), b)
        positions = torch.arange(14, 20)[None]
        ours(extra, position_ids=positions, cache=a, tentative=True)
        a.commit(4)  # keep 4 of 6; the ring (16 slots) wraps inside the step
        ours(extra[:, :4], position_ids=positions[:, :4], cache=b)
        next_a = ours(extra[:, 4:5], position_ids=positions[:, 4:5], cache=a).logits
        next_b = ours(extra[:, 4:5], position_ids=positions[:, 4:5], cache=b).logits
    assert a.seen == b.seen == 19
    assert a.slot_columns.tolist() == b.slot_columns.tolist()
    assert (a.keys - b.keys).abs().max().item() <= 1e-5
    assert (next_a - next_b).abs().max().item() <= 1e-5


def test_prompt_lookup_checks_drafts_and_gives_exactly_the_greedy_tokens(pair, monkeypatch):
    ref, ours = pair
    # A prompt that repeats itself, so drafts are found; whether they are accepted is up to the model.
    base = random_prompt(12, seed=6)
    prompts = [base + base + base[:5]]
    new = 48
    passes = {"one": 0, "many": 0}
    forward = type(ours).forward

    def counting(self, input_ids=None, *args, **kwargs):
        passes["many" if input_ids.shape[1] > 1 else "one"] += 1
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(ours), "forward", counting)
    with_lookup = generate(ours, None, prompts, stop=StopConditions(max_new_tokens=new), prompt_lookup=True)[0]
    draft_passes = passes["many"] - 1  # minus the prefill
    plain = generate(ours, None, prompts, stop=StopConditions(max_new_tokens=new), prompt_lookup=False)[0]
    assert with_lookup.tokens == plain.tokens == reference_greedy(ref, prompts, new)[0]
    assert abs(with_lookup.logprob - plain.logprob) <= 1e-3
    assert draft_passes > 0, "the repeated prompt should have produced drafts"


@pytest.mark.parametrize("wide, slice_bytes, shape", [("float32", 8 << 20, (256, 128)),
                                                       ("float32", 100 * 128 * 4, (256, 128)),
                                                       ("float32", 8 << 20, (1536, 1024)),
                                                       ("onednn", None, (256, 128))],
                         ids=["float32", "float32-sliced", "float32-layer-sized", "onednn"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_prompt_row_has_the_same_numbers_alone_or_with_the_whole_prompt(wide, slice_bytes, shape, threads,
                                                                         monkeypatch):
    """A server that reuses a cached prefix evaluates the rest of a prompt alone, often one token: its numbers
    (and so the greedy tokens) must be those of the whole prompt's evaluation. Only decode steps use `mv` or the
    native kernel. "float32-sliced": the weight upcast 100 output rows at a time (256 = 100 + 100 + 56). The
    float32 GEMM (where the native kernel is not built) takes the prompt's rows padded to a multiple of 16 in
    one call, which relies on its giving a row the same numbers for every such count: checked here against one
    call per block of 16, on a layer-sized matrix too, at one thread and two."""
    from sc2cli.model import linear

    if wide == "onednn" and not (REAL_CPU.onednn_bf16 and torch.backends.mkldnn.is_available()):
        pytest.skip("this CPU has no oneDNN bf16 kernels")
    if slice_bytes:
        monkeypatch.setattr(linear, "FLOAT32_SLICE_BYTES", slice_bytes)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(3)
        out_features, in_features = shape
        kernel = Bf16Linear(torch.randn(out_features, in_features, generator=gen).bfloat16(),
                            torch.randn(out_features, generator=gen).bfloat16(), wide)
        prompt = torch.randn(517, in_features, generator=gen).bfloat16()  # a 512-token chunk and then some
        whole = kernel(prompt)
        blocks = torch.cat([kernel(block) for block in prompt.split(FLOAT32_BLOCK)])
        assert torch.equal(blocks, whole)
        for start, stop in ((0, 1), (7, 8), (FLOAT32_BLOCK - 1, FLOAT32_BLOCK + 3), (3, 12), (0, 64),
                            (10, 2 * FLOAT32_BLOCK + 5), (5, 200), (5, 517)):
            assert torch.equal(kernel(prompt[start:stop]), whole[start:stop]), (start, stop)
    finally:
        torch.set_num_threads(before)
    with decode_step():  # the decode branch: one mv per row, batch-independent for a few rows
        one = kernel(prompt[:1])
        assert torch.equal(kernel(prompt[:1]), one)
    _check_bf16_product(one[None], F.linear(prompt[:1].double(), kernel.weight.double(), kernel.bias.double())[None])
    _check_bf16_product(whole, F.linear(prompt.double(), kernel.weight.double(), kernel.bias.double()))
