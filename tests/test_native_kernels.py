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

from sc2cli import kernels
from sc2cli.model import linear
from sc2cli.model.linear import ROWS_PER_ROW_GEMV, Bf16Linear, Int8Linear, decode_step, quantize_int8

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


@ISA_PARAMS
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
def test_each_instruction_set_computes_the_products(isa, rows):
    isa = _isa(isa)
    x, bf16, q, scale = _case(rows)
    _close(kernels.bf16_gemv(bf16, x, isa), x.double() @ bf16.double().T)
    _close(kernels.int8_gemv(q, scale, x, isa), (x.double() @ q.double().T) * scale.double())


@ISA_PARAMS
def test_a_rows_numbers_do_not_depend_on_the_other_rows_or_the_threads(isa):
    """What lets a server evaluate a decode row alone or beside other sequences and get the same tokens."""
    isa = _isa(isa)
    x, bf16, q, scale = _case(6, n=300, k=515)
    together = kernels.bf16_gemv(bf16, x, isa), kernels.int8_gemv(q, scale, x, isa)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for i in range(x.shape[0]):
            alone = kernels.bf16_gemv(bf16, x[i:i + 1], isa), kernels.int8_gemv(q, scale, x[i:i + 1], isa)
            assert torch.equal(alone[0][0], together[0][i]) and torch.equal(alone[1][0], together[1][i])
    finally:
        torch.set_num_threads(threads)


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


def test_the_instruction_set_follows_torchs_dispatch_level():
    """ATEN_CPU_CAPABILITY=avx2 (what `sc2 bench speed` caps its AVX2 columns with) gives the AVX2 code."""
    if not BUILT:
        pytest.skip(f"native kernels unavailable: {kernels.unavailable_reason()}")
    assert kernels.isa_for("DEFAULT") is None and kernels.isa_for("NEON") is None
    assert kernels.isa_for("AVX2") == ("avx2" if kernels.runs_here("avx2") else None)
    expected = "avx512" if kernels.runs_here("avx512") else kernels.isa_for("AVX2")
    assert kernels.isa_for("AVX512") == expected  # never an instruction set this CPU lacks


def _spy(monkeypatch, name: str) -> list:
    calls = []
    real = getattr(kernels, name)
    monkeypatch.setattr(kernels, name, lambda *a: calls.append(a[-1]) or real(*a))
    return calls


@ISA_PARAMS
@pytest.mark.parametrize("rows", [1, ROWS_PER_ROW_GEMV])
def test_bf16_linear_decodes_on_the_native_kernel(isa, rows, monkeypatch):
    isa = _isa(isa)
    gen = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(96, 64, generator=gen).bfloat16(), torch.randn(96, generator=gen).bfloat16()
    x = torch.randn(rows, 1, 64, generator=gen).bfloat16()
    exact = F.linear(x.double(), weight.double(), bias.double())
    calls = _spy(monkeypatch, "bf16_gemv")
    layer = Bf16Linear(weight, bias, "float32", isa)
    with decode_step():
        got = layer(x)
    assert calls == [isa] and got.dtype == torch.bfloat16
    assert (got.double() - exact).abs().max().item() <= 2 ** -7 * exact.abs().max().item()
    layer(x)  # outside a decode step (a prompt's rows): a GEMM, never the kernel
    assert calls == [isa]


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
    expected = linear.native_gemv_isa(weight.device)
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
    shutil.copy(root / "sc2cli" / "kernels" / "gemv.cpp", tmp_path / "sc2cli" / "kernels" / "gemv.cpp")
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "CC": str(tmp_path / "no-such-cc")}
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the native decode kernels were not built" in done.stderr
    assert not list((tmp_path / "sc2cli" / "kernels").glob("_gemv*.so"))
