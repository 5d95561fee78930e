"""Builds mdctr's one compiled part, the CPU grouped-GEMM kernel of the MLoRA layer
(mdctr/adapters/csrc/grouped.cpp -> mdctr.adapters._grouped). Everything else is in
pyproject.toml.

It compiles against the installed torch, so install with ``--no-build-isolation``
(scripts/install.sh does). Without torch at build time the kernel is left out and the
layer uses its pure-PyTorch path (mdctr/adapters/grouped.py says which one runs).
"""

import sys

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:  # an isolated build environment without torch
    print("mdctr: torch is not importable at build time; building without the grouped-GEMM kernel "
          "(install with --no-build-isolation to get it)", file=sys.stderr)
    setup()
else:
    setup(
        ext_modules=[CppExtension("mdctr.adapters._grouped", ["mdctr/adapters/csrc/grouped.cpp"],
                                  extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])],
        cmdclass={"build_ext": BuildExtension},
    )
