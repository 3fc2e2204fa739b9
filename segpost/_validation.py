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
    "to_numpy",
    "native_byte_order",
    "like_input",
    "check_float_dtype",
    "check_finite",
    "check_positive_number",
    "check_bandwidth",
    "check_int",
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


def is_torch_tensor(x) -> bool:
    """True for a torch.Tensor, without importing torch when nobody has."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x, name: str) -> tuple[np.ndarray, bool]:
    """Return ``(array, came_from_torch)``; CPU tensors are viewed, not copied.

    Never copies or mutates the caller's data: callers that need a different
    dtype or layout convert into a new array.
    """
    if is_torch_tensor(x):
        if x.device.type != "cpu":
            raise ValueError(
                f"{name} is a {x.device.type} tensor, but this function runs on the CPU; "
                f"pass {name}.cpu() (GPU support is tracked separately)"
            )
        if x.is_complex():
            raise TypeError(f"{name} must be real-valued, got dtype {x.dtype}")
        return x.detach().resolve_conj().resolve_neg().numpy(), True
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


def check_float_dtype(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind != "f":
        raise TypeError(
            f"{name} must have a floating dtype (float16, float32 or float64), got {arr.dtype}; "
            f"convert it explicitly, e.g. {name}.astype(np.float32)"
        )


def check_finite(arr: np.ndarray, name: str, *, bound: float | None = None) -> None:
    """ValueError unless every entry is finite and, with ``bound``, at most ``bound`` in magnitude.

    ``bound=FLOAT32_MAX`` is for inputs computed on in float32 (a float64 value
    beyond float32's range would turn infinite there); the CRF bounds its
    scores tighter (``MAX_CRF_SCORE``).
    """
    # A sum is NaN or infinite whenever an entry is: one pass and no temporary
    # for the common all-finite case; the exact check runs only if the sum is
    # not finite (an entry is, or the sum merely overflowed).
    if arr.dtype.kind in "fc":
        with np.errstate(over="ignore", invalid="ignore"):
            total_finite = np.isfinite(arr.sum())
    else:
        total_finite = True
    if not total_finite and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} must be finite, but {bad} of its {arr.size} entries are NaN or infinite")
    if bound is None or arr.size == 0 or arr.dtype.kind != "f":
        return
    if arr.dtype.itemsize <= 4 and bound >= FLOAT32_MAX:
        return  # a finite float16 or float32 is within float32's range
    largest = max(abs(float(arr.max())), abs(float(arr.min())))
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


def check_int(value, name: str, *, minimum: int = 1) -> int:
    """An int >= minimum (bools refused), or a ValueError naming the parameter."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else ("a non-negative integer" if minimum == 0 else f"an integer >= {minimum}")
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
