"""segpost: turn any segmentation model's logits into sharp, measured results.

Dense CRF on a permutohedral lattice, fast metrics, exact upsampling and
test-time-augmentation pipelines.
"""
from ._memory import cached_memory_bytes, release_cached_memory, set_memory_cache_limit
from ._threads import get_num_threads, set_num_threads
from .crf import CRFParams, DenseCRF, crf_refine
from .filters import bilateral_filter
from .lattice import MAX_LATTICE_DIM, PermutohedralLattice
from .metrics import SegMetrics, confusion_matrix
from .pipeline import IMAGENET_MEAN, IMAGENET_STD, Pipeline, PipelineOutput, mask_queries_to_logits
from .evaluation import evaluate, tune_crf
from .sliding_window import predict_volume, sliding_window_inference
from .upsample import (
    crop_to, deeplab_size, joint_bilateral_upsample, pad_to_multiple, resize_labels, resize_logits, upsample_argmax,
)
from . import metrics
from ._version import __version__

# Subpackages the README writes as attributes (segpost.nn.DenseCRF, segpost.viz.colorize, ...), imported
# on first use: segpost.nn imports torch.nn, segpost.viz matplotlib.
_LAZY_SUBMODULES = ("nn", "viz", "compat")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'segpost' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))

__all__ = [
    "CRFParams",
    "DenseCRF",
    "MAX_LATTICE_DIM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PermutohedralLattice",
    "Pipeline",
    "PipelineOutput",
    "mask_queries_to_logits",
    "predict_volume",
    "sliding_window_inference",
    "SegMetrics",
    "bilateral_filter",
    "cached_memory_bytes",
    "confusion_matrix",
    "crop_to",
    "deeplab_size",
    "evaluate",
    "joint_bilateral_upsample",
    "pad_to_multiple",
    "release_cached_memory",
    "resize_labels",
    "resize_logits",
    "set_memory_cache_limit",
    "upsample_argmax",
    "metrics",
    "crf_refine",
    "get_num_threads",
    "set_num_threads",
    "tune_crf",
    "__version__",
]
