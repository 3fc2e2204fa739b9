"""Build of segpost's compiled extensions.

The CPU core, ``segpost._C``, is bound with pybind11 over plain buffers, so
building and installing segpost never depends on the torch ABI. With
``SEGPOST_CUDA=1`` (and a CUDA-enabled torch with nvcc) the GPU kernels are
built too, as ``segpost._C_cuda``.
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
    extensions = [
        Pybind11Extension(
            "segpost._C",
            sources,
            include_dirs=["csrc"],
            # Headers too: an edited header alone must trigger a rebuild.
            depends=sorted(glob("csrc/*.h") + glob("csrc/cpu/*.h")),
            cxx_std=17,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]
    if os.environ.get("SEGPOST_CUDA", "0") == "1":
        # The GPU kernels need a CUDA-enabled torch and nvcc; without this switch
        # segpost builds CPU-only (the first GPU call can compile them just in time).
        from torch.utils.cpp_extension import CUDAExtension

        extensions.append(
            CUDAExtension(
                "segpost._C_cuda",
                ["csrc/cuda/permutohedral_cuda.cu", "csrc/cuda/bindings_cuda.cpp"],
                include_dirs=[os.path.abspath("csrc/cuda")],
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
            )
        )
    return extensions


def get_cmdclass():
    if os.environ.get("SEGPOST_CUDA", "0") == "1":
        from torch.utils.cpp_extension import BuildExtension

        return {"build_ext": BuildExtension}
    return {"build_ext": build_ext}


setup(ext_modules=get_extensions(), cmdclass=get_cmdclass())
