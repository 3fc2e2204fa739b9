"""Input validation shared by every public function.

Each public function validates and converts its inputs here, once, and then
trusts the arrays it passes on. Errors are one sentence naming the parameter,
what was expected and what came.
"""
from __future__ import annotations

import numbers
import os
import sys
import warnings

import numpy as np

__all__ = [
    "is_torch_tensor",
    "on_device",
    "to_numpy",
    "native_byte_order",
    "like_input",
    "dtype_kind",
    "value_range",
    "max_sum_error",
    "check_float_dtype",
    "check_finite",
    "check_positive_number",
    "check_bandwidth",
    "check_int",
    "intensity_scale",
    "tensor_intensity_scale",
    "channels_last",
    "refuse_probabilities_as_logits",
    "two_class_scores",
    "MIN_BANDWIDTH",
    "FLOAT32_MAX",
    "MAX_CRF_SCORE",
    "MAX_FILTER_VALUE",
]

# Features are divided by their bandwidths: below this, image-scale values
# divided by a bandwidth overflow float32 or span more lattice cells than its
# keys can count.
MIN_BANDWIDTH = 1e-6
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Largest unary score or compatibility the CRF accepts: scores, messages
# (compatibility x kernel sums over up to 2**31 points) and their sums stay
# far inside float32's range, so no message overflows and no padding lane
# (at -3e38) can win the softmax.
MAX_CRF_SCORE = 1e15
# Largest value a lattice filter accepts: a filter sums weighted values of up
# to 2**31 points, which must stay inside float32's range.
MAX_FILTER_VALUE = 1e25


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category=UserWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside segpost (the user's line), however deep in the
    package the rule that warns is."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def dtype_name(x) -> str:
    """An array's or a tensor's dtype as numpy spells it ("float32", also for torch.float32)."""
    return str(x.dtype).removeprefix("torch.")


def is_torch_tensor(x) -> bool:
    """True for a torch.Tensor, without importing torch when nobody has.

    While another thread is still inside ``import torch``, the module is in
    ``sys.modules`` before it defines ``Tensor``; no tensor exists yet then.
    """
    tensor_type = getattr(sys.modules.get("torch"), "Tensor", None)
    return tensor_type is not None and isinstance(x, tensor_type)


def on_device(x) -> bool:
    """True for a tensor on an accelerator (the inputs that take the torch-ops paths)."""
    return is_torch_tensor(x) and x.device.type != "cpu"


def to_numpy(x, name: str) -> tuple[np.ndarray, bool]:
    """Return ``(array, came_from_torch)``; CPU tensors are viewed, not copied.

    Never mutates the caller's data and copies only bfloat16 tensors (to
    float32: numpy has no bfloat16); callers that need a different dtype or
    layout convert into a new array.
    """
    if is_torch_tensor(x):
        if x.device.type != "cpu":
            raise ValueError(
                f"{name} is a {x.device.type} tensor, but this function runs on the CPU; "
                f"pass {name}.cpu() (GPU support is tracked separately)"
            )
        if x.is_complex():
            raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}")
        x = x.detach().resolve_conj().resolve_neg()
        if x.dtype in (sys.modules["torch"].bfloat16,):
            x = x.float()  # numpy has no bfloat16 (AMP outputs): the one copy this function makes
        return x.numpy(), True
    if isinstance(x, np.ndarray):
        return native_byte_order(x), False
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and other non-arrays
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from exc
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__} of objects")
    return native_byte_order(arr), False


def native_byte_order(arr: np.ndarray) -> np.ndarray:
    """``arr``, or a copy in this machine's byte order when it is not (FITS, NetCDF, raw files).

    The compiled kernels (Numba's included) only take native dtypes.
    """
    if not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def like_input(result: np.ndarray, was_torch: bool):
    """Give ``result`` the array type the caller used (numpy in, numpy out)."""
    if was_torch:
        import torch

        return torch.from_numpy(np.ascontiguousarray(result))
    return result


def dtype_kind(x) -> str:
    """numpy's dtype kind ('b', 'i', 'u', 'f', 'c', ...) of an array or a tensor on any device."""
    if is_torch_tensor(x):
        import torch

        if x.dtype == torch.bool:
            return "b"
        if x.is_complex():
            return "c"
        if x.is_floating_point():
            return "f"
        return "u" if x.dtype == torch.uint8 else "i"
    return x.dtype.kind


def value_range(x) -> tuple[float, float]:
    """``(min, max)`` of a non-empty array or tensor (on its device), as Python floats."""
    if is_torch_tensor(x):
        lo, hi = x.aminmax() if x.dtype != sys.modules["torch"].bool else (x.min(), x.max())
        return float(lo), float(hi)
    return float(x.min()), float(x.max())


def _class_sums(x):
    """Sums over axis 0 in float64, of an array or a tensor on its device."""
    if is_torch_tensor(x):
        return x.sum(0, dtype=sys.modules["torch"].float64)
    return x.sum(axis=0, dtype=np.float64)


def max_sum_error(x) -> float:
    """``max |sum over axis 0 - 1|`` of (C, ...) scores, summed in float64: how far they are from summing to one."""
    return float(abs(_class_sums(x) - 1).max())


def check_float_dtype(arr, name: str) -> None:
    if dtype_kind(arr) != "f":
        raise TypeError(
            f"{name} must have a floating dtype (float16, float32 or float64), got {arr.dtype}; "
            f"convert it explicitly, e.g. {name}.astype(np.float32)"
        )


def _count_finite(arr) -> int:
    if is_torch_tensor(arr):
        return int(sys.modules["torch"].isfinite(arr).sum())
    return int(np.count_nonzero(np.isfinite(arr)))


def _all_finite(arr) -> bool:
    if is_torch_tensor(arr):
        return bool(sys.modules["torch"].isfinite(arr).all())
    # A sum is NaN or infinite whenever an entry is: one pass and no temporary
    # for the common all-finite case; the exact check runs only if the sum is
    # not finite (an entry is, or the sum merely overflowed).
    if arr.dtype.kind in "fc":
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(arr.sum()):
                return True
        return bool(np.isfinite(arr).all())
    return True


def check_finite(arr, name: str, *, bound: float | None = None) -> None:
    """ValueError unless every entry is finite and, with ``bound``, at most ``bound`` in magnitude.

    ``bound=FLOAT32_MAX`` is for inputs computed on in float32 (a float64 value
    beyond float32's range would turn infinite there); the CRF bounds its
    scores tighter (``MAX_CRF_SCORE``). numpy arrays, and tensors on any device
    (checked there: the device paths apply the same rule).
    """
    size = arr.numel() if is_torch_tensor(arr) else arr.size
    if not _all_finite(arr):
        bad = size - _count_finite(arr)
        raise ValueError(f"{name} must be finite, but {bad} of its {size} entries are NaN or infinite")
    if bound is None or size == 0 or dtype_kind(arr) != "f":
        return
    itemsize = arr.element_size() if is_torch_tensor(arr) else arr.dtype.itemsize
    if itemsize <= 4 and bound >= FLOAT32_MAX:
        return  # a finite float16 or float32 is within float32's range
    lo, hi = value_range(arr)
    largest = max(abs(lo), abs(hi))
    if largest > bound:
        raise ValueError(
            f"{name} holds values up to {largest:.3g} in magnitude, beyond the {bound:.3g} that segpost accepts "
            f"(it computes in float32); rescale {name}"
        )


def check_positive_number(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def check_bandwidth(value, name: str) -> float:
    """A Gaussian bandwidth: a finite number >= MIN_BANDWIDTH, or a TypeError/ValueError naming it."""
    value = check_positive_number(value, name)
    if value < MIN_BANDWIDTH:
        raise ValueError(
            f"{name} must be at least {MIN_BANDWIDTH:g} (features are divided by it), got {value:g}"
        )
    return value


def per_axis(value, n: int, name: str) -> np.ndarray:
    """A positive scalar or one positive value per axis -> float64 array of length n."""
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64)) if not isinstance(value, (bool, np.bool_)) else None
    if arr is None or arr.ndim != 1 or arr.size not in (1, n) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a positive number or {n} positive numbers (one per axis), got {value!r}")
    if np.any(arr < MIN_BANDWIDTH):
        raise ValueError(f"{name} must be at least {MIN_BANDWIDTH:g} (features are divided by it), got {value!r}")
    return np.broadcast_to(arr, (n,)).astype(np.float64)


def check_int(value, name: str, *, minimum: int = 1) -> int:
    """An int >= minimum: a TypeError for anything that is not an integer (bools and floats included),
    a ValueError for an integer below ``minimum``; both name the parameter."""
    kind = "a positive integer" if minimum == 1 else ("a non-negative integer" if minimum == 0 else f"an integer >= {minimum}")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def environment_number(name: str, convert, expected: str):
    """``convert(os.environ[name])``, or None when the variable is unset, empty or invalid.

    ``convert`` raises ValueError on a bad value, which is then ignored with a
    RuntimeWarning naming the variable: a bad environment variable must not
    make ``import segpost`` fail.
    """
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return convert(raw)
    except ValueError:
        warnings.warn(f"ignoring {name}={raw!r}: expected {expected}", RuntimeWarning, stacklevel=3)
        return None


# ---------------------------------------------------------------- images
#
# segpost's one image layout rule (crf_refine, bilateral_filter,
# DenseCRF.add_bilateral, joint_bilateral_upsample; Pipeline reads its images
# the same way): numpy images are channels-last (H, W, C), as scikit-image and
# PIL give them; torch images are channels-first (C, H, W), as torchvision
# gives them; an image with no channel axis (H, W) has one channel. A
# ``channel_axis`` argument names any other layout (None: no channel axis).


def channels_last(image, *, channel_axis="auto", spatial_ndim=2, name="image", keep_device=False):
    """``(view, was_torch, axis)``: the image as a numpy (*spatial, C) view by the layout rule above.

    ``axis`` is where the channels were (None for an image without a channel
    axis), so that a result can be put back in the input's layout. With
    ``keep_device``, a tensor on an accelerator stays there: the view is a
    tensor (the device paths apply the same rule).
    """
    if keep_device and on_device(image):
        arr, was_torch = image.detach(), True
    else:
        arr, was_torch = to_numpy(image, name)
    if dtype_kind(arr) not in "biuf":
        raise TypeError(f"{name} must have a real numeric dtype, got {dtype_name(arr)}")
    if arr.ndim == spatial_ndim and channel_axis in ("auto", None):
        return arr[..., None], was_torch, None
    if arr.ndim == spatial_ndim + 1 and channel_axis is not None:
        axis = (0 if was_torch else -1) if channel_axis == "auto" else channel_axis
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -arr.ndim <= axis < arr.ndim:
            raise ValueError(f"channel_axis must be an axis of the {arr.ndim}-D {name}, got {channel_axis!r}")
        moved = arr.movedim(int(axis), -1) if is_torch_tensor(arr) else np.moveaxis(arr, int(axis), -1)
        return moved, was_torch, int(axis) % arr.ndim
    spatial = {2: "(H, W)", 3: "(D, H, W)"}.get(spatial_ndim, f"{spatial_ndim} spatial axes")
    if spatial_ndim == 3:
        layout = "(M, D, H, W)" if was_torch else "(D, H, W, M)"
    else:
        layout = "(C, H, W)" if was_torch else "(H, W, C)"
    batch = (f"; a batch of one? pass {name}[0]" if arr.ndim > spatial_ndim + 1 and arr.shape[0] == 1 else "")
    raise ValueError(f"{name} must be {spatial} or {layout} ({'torch' if was_torch else 'numpy'} layout; "
                     f"channel_axis= for others), got shape {tuple(arr.shape)}{batch}")

#
# segpost's one rule for image intensities (crf_refine, Pipeline, nn.DenseCRF
# and the command line): integer images hold 0..255 whatever their dtype (an
# int64 or uint16 array of 0..255 is an 8-bit image in a wider type), booleans
# are 0 / 255, floating-point images hold [0, 1]. The CRF's bi_rgb is in 0..255
# units, so anything else would silently change what it means.

# Below this maximum an integer image uses under 1% of 0..255: a label map, or
# a [0, 1] image cast to integers, passed as the image.
_DIM_IMAGE_MAX = 255 // 100


def intensity_scale(kind: str, lo: float, hi: float, name: str = "image") -> float:
    """The factor that brings an image with values in [lo, hi] of dtype kind ``kind`` to 0..255 units.

    Raises a ValueError for values outside the rule above (naming the fix);
    warns for an integer image that uses under 1% of 0..255.
    """
    if kind == "f":
        if lo < -1e-3 or hi > 1 + 1e-3:
            hint = (" (an ImageNet-normalised image? undo it: image * std + mean)" if lo < 0 else
                    " (a 0..255 image in a float type? divide it by 255, or pass it as uint8)")
            raise ValueError(f"{name} of a floating-point dtype must hold intensities in [0, 1], got values in "
                             f"[{lo:.3g}, {hi:.3g}]{hint}")
        return 255.0
    if kind == "b":
        return 255.0
    if lo < 0 or hi > 255:
        raise ValueError(
            f"{name} of an integer dtype must hold intensities 0..255 whatever the dtype, got values in "
            f"[{lo:g}, {hi:g}]; "
            f"convert 16-bit data yourself (e.g. (image / 65535).astype(np.float32) for [0, 1] floats)")
    if 0 < hi <= _DIM_IMAGE_MAX:  # (an all-zero image has no colour to misread)
        warn(
            f"{name} (integers) holds values 0..{hi:g} only, under 1% of the 0..255 it is read in: is it a label "
            f"map, or a [0, 1] image cast to integers? (pass floats in [0, 1] or uint8 0..255)")
    return 1.0


def tensor_intensity_scale(image, name="image", dtype=None):
    """``(values, scale)``: a tensor image as ``dtype`` (float32 by default) and the factor that brings it to
    0..255 units (``intensity_scale``'s rule, applied with torch ops: any device)."""
    import torch

    values = image.to(dtype or torch.float32)
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} must be finite, but holds NaN or infinite values")
    return values, intensity_scale(dtype_kind(image), *value_range(values), name)


def refuse_probabilities_as_logits(scores, name: str = "logits", fix: str = "probs=") -> None:
    """ValueError when (C, ...) ``scores`` given as logits are softmax probabilities (in [0, 1], summing to 1).

    Softmax of probabilities is nearly uniform, so a CRF on them mostly smooths
    (77% of the right labels on a measured case). Raw scores of two or more
    classes never all lie in [0, 1] and sum to 1 within 1e-3 at every pixel,
    so the call is refused rather than warned about. numpy arrays or tensors
    on any device.
    """
    size = scores.numel() if is_torch_tensor(scores) else scores.size
    if scores.shape[0] < 2 or size == 0:
        return
    lo, hi = value_range(scores)
    if lo < 0 or hi > 1:
        return
    if max_sum_error(scores) <= 1e-3:
        raise ValueError(f"the {name} are all in [0, 1] and sum to 1 over classes at every pixel: these are softmax "
                         f"probabilities; pass them as {fix} instead (logits are raw scores)")


def two_class_scores(scores, *, probabilities: bool):
    """(1, ...) binary scores as (2, ...): logits z as [0, z] (softmax gives [1 - sigmoid(z), sigmoid(z)]),
    probabilities p as [1 - p, p]. numpy arrays and torch tensors alike; the class axis is axis 0."""
    if probabilities:
        pieces = (1 - scores, scores)
    else:
        pieces = (scores * 0, scores)
    if is_torch_tensor(scores):
        import torch

        return torch.cat(pieces, dim=0)
    return np.concatenate(pieces, axis=0)
