"""Builds mdctr's one compiled part, its CPU kernels (mdctr/csrc/ -> mdctr._kernels: MLoRA's
routed layer's grouped GEMMs, a domain's own embedding rows, the towers' dropout).
Everything else is in pyproject.toml.

It compiles against the installed torch, so install with ``--no-build-isolation``
(scripts/install.sh does). Without torch at build time the kernels are left out and the
same computations run as torch calls (mdctr/core/native.py says which).
"""

import sys

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:  # an isolated build environment without torch
    print("mdctr: torch is not importable at build time; building without mdctr's CPU kernels "
          "(install with --no-build-isolation to get them)", file=sys.stderr)
    setup()
else:
    sources = [f"mdctr/csrc/{name}.cpp" for name in ("bindings", "grouped", "rows", "dropout")]
    setup(
        ext_modules=[CppExtension("mdctr._kernels", sources,
                                  extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])],
        cmdclass={"build_ext": BuildExtension},
    )
