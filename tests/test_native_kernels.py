"""sc2's native decode kernels (sc2cli/kernels/gemv.cpp): each instruction set's code against float64 sums, the
guarantees the model layer relies on (a row's numbers never depend on the other rows or the thread count), and
the layers' use of them in decode steps (issue: fast on the machines people have).

Each instruction set is forced by name; one this CPU lacks is skipped with the reason. `make install` builds the
kernels, so a missing library fails here rather than skipping: the fallback is tested by turning them off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sc2cli import devices, kernels
from sc2cli.model import linear
from sc2cli.model.linear import (NATIVE_DECODE_ROWS, Bf16Linear, Int8Linear, decode_step, quantize_int8,
                                 quantize_int8_with_torch)

BUILT = kernels.available()


def test_make_install_builds_the_kernels():
    """Where a C++ compiler is there (as on every machine `make test` runs on), the package is built with them."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine: sc2 runs on torch's kernels (tested below)")
    assert BUILT, kernels.unavailable_reason()


def _isa(name: str) -> str:
    if not BUILT:
        pytest.skip(f"native kernels unavailable: {kernels.unavailable_reason()}")
    if not kernels.runs_here(name):
        pytest.skip(f"this CPU lacks the {name} instructions (its code is tested on CPUs that have them)")
    return name


ISA_PARAMS = pytest.mark.parametrize("isa", kernels.ISAS)


def _case(rows: int, n: int = 37, k: int = 1001, seed: int = 0):
    """K = 1001: every vector body and its scalar tail run; N odd."""
    gen = torch.Generator().manual_seed(seed + rows)
    x = torch.randn(rows, k, generator=gen)
    bf16 = torch.randn(n, k, generator=gen).bfloat16()
    q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, generator=gen) + 0.01
    return x, bf16, q, scale


def _close(got: torch.Tensor, exact: torch.Tensor) -> None:
    """float32 sums of K products: within 1e-5 of the largest output (measured ~3e-7)."""
    assert got.dtype == torch.float32 and got.shape == exact.shape
    assert (got.double() - exact).abs().max().item() <= 1e-5 * exact.abs().max().item()


def _rounded_once(got: torch.Tensor, exact: torch.Tensor) -> None:
    """A bf16 result of float32 sums: each value within half a bf16 step of the exact one (the one rounding),
    plus the float32 sums' error (1e-5 of the largest output)."""
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape
    half_step = 2.0 ** (torch.floor(torch.log2(exact.abs().clamp(min=1e-30))) - 8)
    assert ((got.double() - exact).abs() <= half_step + 1e-5 * exact.abs().max()).all()


@ISA_PARAMS
# 1-4: one pass, two weight rows read at once (AVX2: one for 3-4); 5, 9, 23: a prompt's rows, in groups passed
# over cache-sized blocks of weight rows (AVX2: groups of 6, with a tail)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9, 23])
def test_each_instruction_set_computes_the_products(isa, rows):
    isa = _isa(isa)
    x, bf16, q, scale = _case(rows)
    _close(kernels.bf16_gemv(bf16, x, isa), x.double() @ bf16.double().T)
    _close(kernels.int8_gemv(q, scale, x, isa), (x.double() @ q.double().T) * scale.double())
    # bf16 rows (a bf16 model's): on avx512bf16 through the bf16 dot product, elsewhere widened
    _rounded_once(kernels.bf16_gemv(bf16, x.bfloat16(), isa), x.bfloat16().double() @ bf16.double().T)


def test_avx512bf16_multiplies_bf16_rows_with_the_bf16_dot_product():
    """The instruction reads bf16 subnormals as zero, which tells the two loops apart: a subnormal x times a
    large weight is 2^-130 * 2^120 = 2^-10 when widened, 0 in the dot product. Rows in float32 are widened."""
    isa = _isa("avx512bf16")
    weight = torch.full((3, 64), 2.0 ** 120).bfloat16()
    x = torch.zeros(1, 64)
    x[0, 5] = 2.0 ** -130  # a bf16 subnormal, exact in bf16
    assert kernels.bf16_gemv(weight, x.bfloat16(), isa).float().tolist() == [[0.0] * 3]
    assert kernels.bf16_gemv(weight, x, isa).tolist() == [[2.0 ** -10] * 3]
    assert kernels.bf16_gemv(weight, x.bfloat16(), "avx512").float().tolist() == [[2.0 ** -10] * 3]


@ISA_PARAMS
def test_a_rows_numbers_do_not_depend_on_the_other_rows_or_the_threads(isa):
    """What lets a server evaluate a decode row alone or beside other sequences, and a prompt's rows with the whole
    prompt or alone after a cached prefix, and get the same tokens. 13 rows: a prompt's path (groups of rows
    over blocks of 130 weight rows at K = 1001, so three blocks) against one row at a time."""
    isa = _isa(isa)
    x, bf16, q, scale = _case(13, n=300, k=1001)
    products = (lambda rows: kernels.bf16_gemv(bf16, rows, isa), lambda rows: kernels.int8_gemv(q, scale, rows, isa),
                lambda rows: kernels.bf16_gemv(bf16, rows.bfloat16(), isa).float())
    together = [product(x) for product in products]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for i in range(x.shape[0]):
            for product, all_rows in zip(products, together):
                assert torch.equal(product(x[i:i + 1])[0], all_rows[i])
    finally:
        torch.set_num_threads(threads)


@ISA_PARAMS
def test_the_bias_is_added_in_float32_and_the_result_rounded_once_to_the_rows_dtype(isa):
    """What a 16-bit F.linear with a bias computes: one rounding of the float32 sum, not two."""
    isa = _isa(isa)
    x, bf16, q, scale = _case(3)
    bias = torch.randn(bf16.shape[0], generator=torch.Generator().manual_seed(1)).bfloat16()
    exact = x.bfloat16().double() @ bf16.double().T + bias.double()
    got = kernels.bf16_gemv(bf16, x.bfloat16(), isa, bias)
    _rounded_once(got, exact)
    wide = kernels.bf16_gemv(bf16, x.bfloat16().float(), isa, bias)  # float32 rows: float32 out, bias included
    assert wide.dtype == torch.float32
    if isa != "avx512bf16":  # (there bf16 rows take the dot product, float32 ones are widened: other sums)
        assert torch.equal(got, wide.bfloat16())
    assert torch.equal(kernels.bf16_gemv(bf16, x.bfloat16().float(), isa, bias.float()), wide)
    _close(kernels.int8_gemv(q, scale, x, isa, bias), (x.double() @ q.double().T) * scale.double() + bias.double())


def test_bad_inputs_raise_errors_not_crashes():
    isa = _isa("scalar")
    x, bf16, q, scale = _case(1)
    with pytest.raises(RuntimeError, match="bfloat16"):
        kernels.bf16_gemv(bf16.float(), x, isa)
    with pytest.raises(RuntimeError, match="K = the weight's columns"):
        kernels.bf16_gemv(bf16, x[:, :-1], isa)
    with pytest.raises(RuntimeError, match="one per weight row"):
        kernels.int8_gemv(q, scale[:-1], x, isa)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.bf16_gemv(bf16.T, x[:, :37], isa)
    with pytest.raises(RuntimeError, match="one per weight row"):
        kernels.bf16_gemv(bf16, x, isa, torch.zeros(3))


def test_the_instruction_set_follows_torchs_dispatch_level():
    """ATEN_CPU_CAPABILITY=avx2 (what `sc2 bench speed` caps its AVX2 columns with) gives the AVX2 code."""
    if not BUILT:
        pytest.skip(f"native kernels unavailable: {kernels.unavailable_reason()}")
    assert kernels.isa_for("DEFAULT") is None and kernels.isa_for("NEON") is None
    assert kernels.isa_for("AVX2") == ("avx2" if kernels.runs_here("avx2") else None)
    expected = next((isa for isa in ("avx512bf16", "avx512") if kernels.runs_here(isa)), kernels.isa_for("AVX2"))
    assert kernels.isa_for("AVX512") == expected  # the most this CPU has, never one it lacks


def _spy(monkeypatch, name: str) -> list:
    """Records every call to kernels.`name`: its instruction set, or the name for a kernel that takes none."""
    calls = []
    real = getattr(kernels, name)
    monkeypatch.setattr(kernels, name,
                        lambda *a: calls.append(next((v for v in a if isinstance(v, str)), name)) or real(*a))
    return calls


@ISA_PARAMS
@pytest.mark.parametrize("rows", [1, 4, NATIVE_DECODE_ROWS])  # up to 4 rows a pass; 16 a draft check's size
@pytest.mark.parametrize("wide", ["float32", "onednn"])
def test_bf16_linear_decodes_on_the_native_kernel(isa, rows, wide, monkeypatch):
    """Decode steps of up to 16 rows: the kernel. A prompt's rows, and wider steps: the kernel too where the CPU
    has no bf16 arithmetic (float32) or no bf16 instructions (AVX-512: oneDNN would emulate them), oneDNN's bf16
    GEMM where it has them."""
    isa = _isa(isa)
    if wide == "onednn" and not (devices.cpu_capability().onednn_bf16 and torch.backends.mkldnn.is_available()):
        pytest.skip("this CPU has no oneDNN bf16 kernels")
    gen = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(96, 64, generator=gen).bfloat16(), torch.randn(96, generator=gen).bfloat16()
    x = torch.randn(rows, 1, 64, generator=gen).bfloat16()
    exact = F.linear(x.double(), weight.double(), bias.double())
    calls = _spy(monkeypatch, "bf16_gemv")
    layer = Bf16Linear(weight, bias, wide, isa)
    with decode_step():
        got = layer(x)
    assert calls == [isa] and got.dtype == torch.bfloat16
    assert (got.double() - exact).abs().max().item() <= 2 ** -7 * exact.abs().max().item()
    prompt = layer(x)  # outside a decode step: a prompt's rows
    with decode_step():
        wider = torch.cat([x] * (NATIVE_DECODE_ROWS // rows + 1))  # too many rows for a decode step's passes
        layer(wider)
    on_kernel = wide == "float32" or isa == "avx512"
    assert calls == ([isa] * 3 if on_kernel else [isa])
    if on_kernel:  # a prompt row has a decode row's numbers: the same kernel sums it
        assert torch.equal(prompt, got)


@ISA_PARAMS
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_int8_quantization_has_torchs_numbers(isa, dtype):
    """The load's native quantization against torch's operations, bit for bit: an all-zero row, quotients that
    fall exactly halfway between two integers (ties go to the even one), subnormals, and K = 1001 (a vector body
    and its scalar tail)."""
    isa = _isa(isa)
    gen = torch.Generator().manual_seed(11)
    weight = torch.randn(37, 1001, generator=gen)
    weight[3] = 0.0
    weight[5, :8] = torch.tensor([127.0, 2.5, 3.5, -2.5, -0.5, 0.5, 126.5, -127.0])  # scale 1: ties at .5
    weight[5, 8:] = 0.25
    weight[7] *= 1e-39  # subnormal in float32 (and a zero row in 16 bits)
    weight = weight.to(dtype)
    q, scale = kernels.quantize_int8(weight, isa)
    expected_q, expected_scale = quantize_int8_with_torch(weight)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert torch.equal(scale, expected_scale)
    assert torch.equal(q, expected_q)
    assert q[5, :8].tolist() == [127, 2, 4, -2, 0, 0, 126, -127]
    assert torch.equal(quantize_int8(weight)[0], expected_q)  # the load's entry point takes the kernel


@ISA_PARAMS
def test_int8_linear_decodes_on_the_native_kernel_with_float32_activations(isa, monkeypatch):
    """Weight-only int8: the decode rows are not rounded to int8, unlike fbgemm's dynamic quantization."""
    isa = _isa(isa)
    gen = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(96, 64, generator=gen), torch.randn(96, generator=gen)
    x = torch.randn(2, 1, 64, generator=gen)
    q, scale = quantize_int8(weight)
    exact = F.linear(x.double(), q.double() * scale.double()[:, None], bias.double())
    calls = _spy(monkeypatch, "int8_gemv")
    layer = Int8Linear(weight, bias, torch.float32, isa)
    with decode_step():
        got = layer(x)
    assert calls == [isa]
    assert (got.double() - exact).abs().max().item() <= 1e-5 * exact.abs().max().item()


def test_replacement_picks_the_native_kernel_where_it_runs():
    weight = torch.randn(8, 16).bfloat16()
    chosen = linear.replacement(weight, None, "none")
    expected = linear.native_kernel_isa(weight.device)
    if chosen is not None:
        assert chosen.gemv_isa == expected
    assert linear.replacement(weight, None, "int8").gemv_isa == expected
    assert (expected is not None) == (BUILT and kernels.isa_for(torch.backends.cpu.get_cpu_capability()) is not None)


def test_turned_off_the_model_runs_on_torchs_kernels():
    """SC2_KERNELS=off: the fallback every machine without a compiler gets."""
    code = ("import torch; from sc2cli import kernels; from sc2cli.model.linear import replacement;"
            "w = torch.randn(8, 16).bfloat16(); r = replacement(w, None, 'none');"
            "print(kernels.available(), kernels.unavailable_reason(), r is None or r.gemv_isa)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SC2_KERNELS": "off"},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out[0] == "False" and "SC2_KERNELS=off" in " ".join(out) and out[-1] in ("None", "True")


@pytest.mark.slow
def test_a_build_without_a_compiler_installs_without_the_kernels(tmp_path):
    """setup.py: a kernel build that fails leaves the kernels out with a warning, and the build still succeeds."""
    root = kernels.LIBRARY.parents[2]
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(root / name, tmp_path / name)
    (tmp_path / "sc2cli" / "kernels").mkdir(parents=True)
    for source in [*(root / "sc2cli" / "kernels").glob("*.cpp"), *(root / "sc2cli" / "kernels").glob("*.h")]:
        shutil.copy(source, tmp_path / "sc2cli" / "kernels" / source.name)
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "CC": str(tmp_path / "no-such-cc")}
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the native decode kernels were not built" in done.stderr
    assert not list((tmp_path / "sc2cli" / "kernels").glob("_kernels*.so"))


# ---- decode attention ----------------------------------------------------------------------------------------------

EXCLUDED = torch.finfo(torch.bfloat16).min  # what the cache's masks put on empty, padding and out-of-window slots


def _attention_case(dtype, dim=64, batch=2, heads=8, kv_heads=2, length=37, seed=0):
    """q [B, H, D] and a cache slice [B, KV, L, D] out of a longer ring (strided, as the model passes it); row 0's
    mask excludes four keys, row 1's adds a penalty to the last four."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, dim, generator=gen).to(dtype)
    keys = torch.randn(batch, kv_heads, length + 5, dim, generator=gen).to(dtype)[:, :, :length]
    values = torch.randn(batch, kv_heads, length + 5, dim, generator=gen).to(dtype)[:, :, :length]
    mask = torch.zeros(batch, length)
    mask[0, 3:7] = EXCLUDED
    mask[1, -4:] = -1.5
    return q, keys, values, mask.to(dtype)


def _attention_exact(q, keys, values, mask, scale):
    group = q.shape[1] // keys.shape[1]
    k, v = keys.double().repeat_interleave(group, 1), values.double().repeat_interleave(group, 1)
    scores = torch.einsum("bhd,bhld->bhl", q.double(), k) * scale
    if mask is not None:
        scores = scores + mask.double()[:, None]
    return torch.einsum("bhl,bhld->bhd", scores.softmax(-1), v)


@ISA_PARAMS
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("dim", [64, 72, 128])  # 72: no AVX-512 vector body (the scalar loops run)
def test_decode_attention_of_each_instruction_set(isa, dtype, dim):
    isa = _isa(isa)
    q, keys, values, mask = _attention_case(dtype, dim)
    scale = dim ** -0.5
    # float32: float32 sums (measured ~3e-7); bf16: the output's one rounding (2^-8 of its size).
    bound = 1e-5 if dtype == torch.float32 else 2 ** -8
    for m in (mask, mask[:1], None):  # per row, one for every row, none
        got = kernels.decode_attention(q, keys, values, m, scale, isa)
        exact = _attention_exact(q, keys, values, m, scale)
        assert got.dtype == dtype and got.shape == q.shape
        assert (got.double() - exact).abs().max().item() <= bound * exact.abs().max().item()


def test_avx512bf16_scores_a_bf16_cache_with_the_bf16_dot_product():
    """As for the products: a bf16 subnormal in q times a large key is 2^-10 when widened, 0 in the dot product.
    Scaled by 2^12, key 0's score is 4 against key 1's 0: weight 0.98 widened, 0.5 by the dot product. A float32
    cache (or float32 q) is widened."""
    isa = _isa("avx512bf16")
    q = torch.zeros(1, 1, 64)
    q[0, 0, 5] = 2.0 ** -130
    keys = torch.zeros(1, 1, 2, 64)
    keys[0, 0, 0, 5] = 2.0 ** 120
    values = torch.zeros(1, 1, 2, 64)
    values[0, 0, 0] = 1.0
    def weight(q, keys, values, isa):
        return kernels.decode_attention(q, keys, values, None, 2.0 ** 12, isa)[0, 0, 0].item()
    widened = torch.sigmoid(torch.tensor(4.0)).item()
    assert weight(q.bfloat16(), keys.bfloat16(), values.bfloat16(), isa) == 0.5
    assert weight(q.bfloat16(), keys.bfloat16(), values.bfloat16(), "avx512") == pytest.approx(widened, abs=2 ** -8)
    assert weight(q, keys, values, isa) == pytest.approx(widened, abs=1e-6)


@ISA_PARAMS
def test_excluded_keys_are_never_read(isa):
    """A slot the mask excludes may hold anything (an empty ring slot, another prompt's key): NaN there changes
    nothing, and the result is that of the cache without those slots."""
    isa = _isa(isa)
    q, keys, values, mask = _attention_case(torch.bfloat16)
    keys, values = keys.clone(), values.clone()
    keys[0, :, 3:7], values[0, :, 3:7] = float("nan"), float("nan")
    got = kernels.decode_attention(q[:1], keys[:1], values[:1], mask[:1], 0.125, isa)
    kept = [j for j in range(keys.shape[2]) if not 3 <= j < 7]
    alone = kernels.decode_attention(q[:1], keys[:1, :, kept], values[:1, :, kept], mask[:1, kept], 0.125, isa)
    assert torch.equal(got, alone)


@ISA_PARAMS
def test_a_rows_attention_does_not_depend_on_the_other_rows_or_the_threads(isa):
    isa = _isa(isa)
    q, keys, values, mask = _attention_case(torch.bfloat16, batch=3, kv_heads=4)
    together = kernels.decode_attention(q, keys, values, mask, 0.125, isa)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for i in range(3):
            row = slice(i, i + 1)
            assert torch.equal(kernels.decode_attention(q[row], keys[row], values[row], mask[row], 0.125, isa),
                               together[row])
    finally:
        torch.set_num_threads(threads)


def test_decode_attention_refuses_bad_inputs_with_a_message():
    isa = _isa("scalar")
    q, keys, values, mask = _attention_case(torch.bfloat16)
    with pytest.raises(RuntimeError, match="multiple of KV"):
        kernels.decode_attention(q[:, :7], keys, values, mask, 0.125, isa)
    with pytest.raises(RuntimeError, match="bfloat16 or float32"):
        kernels.decode_attention(q, keys.half(), values.half(), mask, 0.125, isa)
    with pytest.raises(RuntimeError, match="additive floating-point"):
        kernels.decode_attention(q, keys, values, mask[:, :-1], 0.125, isa)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.decode_attention(q, keys.transpose(2, 3), values.transpose(2, 3), None, 0.125, isa)


@ISA_PARAMS
def test_a_prepared_bf16_model_decodes_attention_on_the_native_kernels(isa, tmp_path, monkeypatch):
    """Steps past the sliding window (the mask excludes keys) through the static step, on the native rotary and
    attention kernels, against the same model on torch's (attention in float32): the same greedy tokens."""
    isa = _isa(isa)
    from oracle import WINDOW, random_prompt, windowed_pair

    from sc2cli.generation.engine import StopConditions, generate
    from sc2cli.model.transformer import Starcoder2Attention, Starcoder2ForCausalLM

    windowed_pair(tmp_path)
    monkeypatch.setattr(linear, "native_kernel_isa", lambda device: isa)
    model = Starcoder2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).prepare_for_inference()
    attention = [m for m in model.modules() if isinstance(m, Starcoder2Attention)]
    assert attention and {m.decode_attention_isa for m in attention} == {isa}
    calls, rotations = _spy(monkeypatch, "decode_attention"), _spy(monkeypatch, "rotary_qkv")
    prompt = [random_prompt(WINDOW - 4, seed=2)]
    stop = StopConditions(token_ids=frozenset(), max_new_tokens=2 * WINDOW)
    native = generate(model, None, prompt, stop=stop, decode="static")[0]
    assert calls and set(calls) == {isa} and len(rotations) == len(calls)
    for m in attention:
        m.decode_attention_isa, m.float32_decode_attention = None, True
    plain = generate(model, None, prompt, stop=stop, decode="static")[0]
    assert native.tokens == plain.tokens


# ---- rotary embeddings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("angle_rows", [1, 2])  # one set of angles for every row, or one per row
def test_rotary_on_the_fused_projection_gives_torchs_numbers_bit_for_bit(dtype, angle_rows):
    """Each product and the sum rounded as torch's separate operations round them: what lets the native decode
    path keep the float32 contract and the bf16 model's own numbers."""
    if not BUILT:
        pytest.skip(f"native kernels unavailable: {kernels.unavailable_reason()}")
    from sc2cli.model.rope import apply_rotary

    gen = torch.Generator().manual_seed(angle_rows)
    batch, length, heads, kv_heads, dim = 2, 3, 6, 2, 64
    qkv = torch.randn(batch, length, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    angles = torch.randn(angle_rows, length, dim, generator=gen) * 50
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    q, k, v = kernels.rotary_qkv(qkv, cos, sin, heads, kv_heads)
    split = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q_ref, k_ref, v_ref = (t.view(batch, length, -1, dim).transpose(1, 2) for t in split)
    assert torch.equal(q, apply_rotary(q_ref, cos, sin)) and torch.equal(k, apply_rotary(k_ref, cos, sin))
    assert torch.equal(v, v_ref) and q.dtype == k.dtype == dtype


def test_rotary_refuses_bad_inputs_with_a_message():
    if not BUILT:
        pytest.skip(f"native kernels unavailable: {kernels.unavailable_reason()}")
    qkv, cos = torch.randn(1, 1, 10 * 8), torch.randn(1, 1, 8)
    with pytest.raises(RuntimeError, match=r"\(heads \+ 2 kv_heads\) \* D"):
        kernels.rotary_qkv(qkv, cos, cos, 7, 2)
    with pytest.raises(RuntimeError, match="dtype"):
        kernels.rotary_qkv(qkv, cos.bfloat16(), cos.bfloat16(), 6, 2)
    with pytest.raises(RuntimeError, match="bfloat16 or float32"):
        kernels.rotary_qkv(qkv.half(), cos.half(), cos.half(), 6, 2)


def test_a_prompt_lookup_draft_is_checked_on_the_native_kernels(tmp_path, monkeypatch):
    """A draft check is a few rows, like a decode step: its products go through the kernel (one pass over the
    weights per 4 rows), not through the GEMM of a prompt, which on AVX2 pads every call to 64 rows and made
    greedy completion with prompt lookup 3.7x slower than without (measured on the ~180M shape)."""
    if linear.native_kernel_isa(torch.device("cpu")) is None:
        pytest.skip(f"no native kernels here: {kernels.unavailable_reason() or 'a CPU below AVX2'}")
    from oracle import windowed_pair

    from sc2cli.generation.engine import StopConditions, generate
    from sc2cli.model.transformer import Starcoder2ForCausalLM

    windowed_pair(tmp_path)
    model = Starcoder2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).prepare_for_inference()
    widths = []
    real = kernels.bf16_gemv
    monkeypatch.setattr(kernels, "bf16_gemv", lambda w, x, *a: widths.append(x.shape[0]) or real(w, x, *a))
    prompt = [[5, 6, 7, 8] * 6]  # a loop a greedy model soon copies: lookup drafts from it
    stop = StopConditions(token_ids=frozenset(), max_new_tokens=24)
    generate(model, None, prompt, stop=stop, prompt_lookup=True)
    assert widths and max(widths) > 1  # a draft check's rows, on the kernel
