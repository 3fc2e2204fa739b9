"""Build of segpost's compiled extensions.

The CPU core, ``segpost._C``, is bound with pybind11 over plain buffers, so
building and installing segpost never depends on the torch ABI. With
``SEGPOST_CUDA=1`` (and a CUDA-enabled torch with nvcc) the GPU kernels are
built too, as ``segpost._C_cuda``: ``CUDA_HOME`` names the toolkit,
``CUDA_INC_PATH`` (paths separated by ``:``) extra headers, and
``TORCH_CUDA_ARCH_LIST`` the architectures (default, without a visible GPU:
``DEFAULT_CUDA_ARCHITECTURES``).

``SEGPOST_SANITIZE=1`` builds with AddressSanitizer and UBSan (``make
sanitize``). The translation units compile in parallel, one per core
(``SEGPOST_BUILD_JOBS=N`` to choose); the mean field's point loops are split
over several of them (``csrc/cpu/mean_field/``) so that both cores of a small
machine share the longest compile.
"""
import os
import sys
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

CPU_SOURCES = ["csrc/*.cpp", "csrc/cpu/*.cpp", "csrc/cpu/lattice/*.cpp", "csrc/cpu/mean_field/*.cpp"]
CPU_HEADERS = ["csrc/*.h", "csrc/cpu/*.h", "csrc/cpu/mean_field/*.h"]


def _files(patterns):
    return sorted(path for pattern in patterns for path in glob(pattern))


# Built for when no GPU is there to ask (a build host, CI): Ampere, Ada, Hopper, and PTX for what comes next.
DEFAULT_CUDA_ARCHITECTURES = "8.0;8.6;8.9;9.0+PTX"


def _paths(variable):
    return [path for path in os.environ.get(variable, "").split(os.pathsep) if path]


def _default_cuda_architectures():
    """Set TORCH_CUDA_ARCH_LIST when it is unset and no GPU is visible.

    torch would otherwise ask the (absent) GPU for its architecture and fail
    after the whole CPU build.
    """
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHITECTURES
        print(f"segpost: no GPU visible, building the CUDA kernels for {DEFAULT_CUDA_ARCHITECTURES} "
              f"(set TORCH_CUDA_ARCH_LIST to choose)")


def get_extensions():
    extra_compile_args = []
    extra_link_args = []
    define_macros = []
    if sys.platform != "win32":
        # No memcpy/memset calls for the short per-row loops of the kernels.
        extra_compile_args += ["-O3", "-fno-math-errno", "-fno-tree-loop-distribute-patterns", "-Wno-psabi"]
        extra_link_args += ["-pthread"]
        if os.environ.get("SEGPOST_SANITIZE", "0") == "1":
            # `make sanitize`: AddressSanitizer + UndefinedBehaviorSanitizer at
            # -O1 (after -O3: the last -O wins), one copy of each hot loop and
            # the mean field's generic (reference) loops only.
            sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
            extra_compile_args += ["-O1", "-g1"] + sanitize  # -g1: line tables, for the reports
            extra_link_args += sanitize
            define_macros += [("SEGPOST_NO_MULTIVERSION", "1"), ("SEGPOST_REFERENCE_ONLY", "1")]
        elif os.environ.get("SEGPOST_NATIVE", "0") == "1":
            # Opt-in only: a -march=native build does not run on older CPUs.
            # It needs no second (baseline) clone of the hot loops.
            extra_compile_args += ["-march=native"]
            define_macros += [("SEGPOST_NO_MULTIVERSION", "1")]
    extensions = [
        Pybind11Extension(
            "segpost._C",
            _files(CPU_SOURCES),
            include_dirs=["csrc"],
            # Headers too: an edited header alone must trigger a rebuild.
            depends=_files(CPU_HEADERS),
            cxx_std=17,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]
    if os.environ.get("SEGPOST_CUDA", "0") == "1":
        # The GPU kernels need a CUDA-enabled torch and nvcc; without this switch
        # segpost builds CPU-only (the first GPU call can compile them just in time).
        _default_cuda_architectures()
        from torch.utils.cpp_extension import CUDAExtension

        extensions.append(
            CUDAExtension(
                "segpost._C_cuda",
                ["csrc/cuda/permutohedral_cuda.cu", "csrc/cuda/bindings_cuda.cpp"],
                # CUDA_INC_PATH: headers of a toolkit assembled from nvidia-* wheels (cuBLAS, cuSPARSE, ...).
                include_dirs=[os.path.abspath("csrc/cuda"), *_paths("CUDA_INC_PATH")],
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
            )
        )
    return extensions


def get_cmdclass():
    if os.environ.get("SEGPOST_CUDA", "0") == "1":
        from torch.utils.cpp_extension import BuildExtension

        return {"build_ext": BuildExtension}
    return {"build_ext": build_ext}


# One compile job per core unless SEGPOST_BUILD_JOBS says otherwise.
ParallelCompile("SEGPOST_BUILD_JOBS", default=0).install()
setup(ext_modules=get_extensions(), cmdclass=get_cmdclass())
