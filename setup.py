"""Build of segpost's compiled extension.

The CPU core, ``segpost._C``, is bound with pybind11 over plain buffers, so
building and installing segpost never depends on the torch ABI.
"""
import os
import sys
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def get_extensions():
    sources = sorted(glob("csrc/*.cpp") + glob("csrc/cpu/*.cpp"))
    extra_compile_args = []
    extra_link_args = []
    if sys.platform != "win32":
        # No memcpy/memset calls for the short per-row loops of the kernels.
        extra_compile_args += ["-O3", "-fno-math-errno", "-fno-tree-loop-distribute-patterns", "-Wno-psabi"]
        extra_link_args += ["-pthread"]
        if os.environ.get("SEGPOST_NATIVE", "0") == "1":
            # Opt-in only: a -march=native build does not run on older CPUs.
            extra_compile_args += ["-march=native"]
    return [
        Pybind11Extension(
            "segpost._C",
            sources,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


setup(ext_modules=get_extensions(), cmdclass={"build_ext": build_ext})
