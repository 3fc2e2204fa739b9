"""The shared input checks of the public boundary (segpost._validation)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from segpost._validation import check_finite


@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), hnp.array_shapes(max_dims=3, max_side=6),
                  elements=st.floats(allow_nan=True, allow_infinity=True, width=32)))
def test_check_finite_agrees_with_isfinite(arr):
    # The fast path sums the array; overflowing sums of finite entries must
    # still pass and every NaN or infinity must still be reported.
    if np.isfinite(arr).all():
        check_finite(arr, "x")
    else:
        with pytest.raises(ValueError, match="x must be finite"):
            check_finite(arr, "x")


def test_check_finite_accepts_sums_that_overflow():
    check_finite(np.full(10, 3e38, np.float32), "x")
    with pytest.raises(ValueError, match="1 of its 3"):
        check_finite(np.array([3e38, np.nan, -3e38], np.float32), "x")
