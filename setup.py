"""The native decode kernels (sc2cli/kernels/*.cpp), built against the torch installed beside the package.

They are optional: without a C++ compiler, or where the build has no torch to compile against (pip's isolated
build environment; `make install` builds with --no-build-isolation), the package installs without them and runs
on torch's own kernels (`sc2 info` says which). Everything else is declared in pyproject.toml.
"""
import sys

from setuptools import setup

ext_modules, cmdclass = [], {}
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    print("sc2cli: torch is not importable in this build environment; the native decode kernels are left out "
          "(install torch first and build with --no-build-isolation to have them)", file=sys.stderr)
else:
    class OptionalBuildExtension(BuildExtension.with_options(no_python_abi_suffix=True)):
        """A kernel build that fails (no compiler, or one that cannot build torch's headers) leaves the kernels
        out with a warning: torch's build raises RuntimeError, which setuptools' `optional` does not catch."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # noqa: BLE001 - any failure here only means: no native kernels
                print(f"sc2cli: the native decode kernels were not built ({str(err).splitlines()[0]}); sc2 will "
                      "run on torch's kernels", file=sys.stderr)

    ext_modules.append(CppExtension(
        "sc2cli.kernels._kernels", ["sc2cli/kernels/gemv.cpp", "sc2cli/kernels/attention.cpp",
                                    "sc2cli/kernels/rotary.cpp", "sc2cli/kernels/quantize.cpp"],
        # at::parallel_for runs on OpenMP only when this unit is compiled with it; at run time it shares the
        # OpenMP runtime torch has already loaded (same soname), so the two never fight over the cores.
        # -ffp-contract=off: a * b + c stays two roundings, as torch's separate operations (rotary.cpp's exactness).
        extra_compile_args=["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=off"], extra_link_args=["-fopenmp"],
        optional=True))  # a failed build leaves the kernels out instead of failing the install
    cmdclass["build_ext"] = OptionalBuildExtension

setup(ext_modules=ext_modules, cmdclass=cmdclass)
