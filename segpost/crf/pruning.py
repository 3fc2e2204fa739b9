"""Label pruning: the labels no pixel can take, found before the mean field and left out of it.

The bound (Potts compatibilities with non-negative weights, which is what
``crf_refine`` builds). With unary energies ``U`` and the normalised kernels
``K~_m`` of the CRF's lattices, a mean-field iteration scores label ``l`` at
pixel ``i`` as::

    s_i(l) = -U_i(l) + sum_m w_m (K~_m Q(l))_i

Every ``K~_m`` is a non-negative operator (the lattice's splat, blur and
slice weights and the normalisation scales are all >= 0), and ``0 <= Q <= 1``,
so with ``q(l) = max_j Q_j(l)`` and ``b_m = K~_m 1`` (computed with the same
lattice, so the bound is about the operator actually applied)::

    -U_i(l) <= s_i(l) <= -U_i(l) + B q(l),    B = max_i sum_m w_m b_m,i

Let ``l0`` be pixel i's best unary label and ``gap_i(l) = U_i(l) - U_i(l0)``,
``g(l) = min_i gap_i(l)``. Then ``Q_i(l) <= exp(s_i(l) - s_i(l0)) <=
exp(-g(l) + B q(l))``. Before the first iteration ``Q = softmax(-U)`` gives
``q <= exp(-g)``; by induction over the iterations ``q(l)`` never exceeds
``q*(l)``, the smallest fixed point of ``q = exp(-g(l) + B q)`` above
``exp(-g(l))``. Hence:

- label ``l`` is never the argmax at any pixel or iteration when
  ``g(l) > B q*(l)`` (its score stays below ``l0``'s);
- its marginal never exceeds ``q*(l)``;
- leaving it out changes every other label's ``Q_i`` by at most the factor
  ``1 / (1 - sum of the pruned q*)``. Labels are pruned only while that sum
  stays below 2**-24, float32's relative rounding: the pruned CRF runs the
  same iterations up to float32 rounding, and its pruned labels are returned
  with marginal 0 (their true marginal is below ``q*``).

Negative or matrix compatibilities break the lower bound on ``s_i(l0)``:
there nothing is pruned.
"""
from __future__ import annotations

import math

import numpy as np

# The pruned labels' marginals summed over the labels stay below float32's relative rounding of Q.
PRUNED_MASS = 2.0**-24
# A label needs a gap of at least -ln(PRUNED_MASS) = 16.6 to be pruned; at the coarse points, before
# bilinear upsampling (which can lift a minimum between samples), a little less makes it a candidate.
CANDIDATE_GAP = 12.0


def marginal_bound(gap, bound):
    """q*: the smallest fixed point of ``q = exp(-gap + bound q)`` above ``exp(-gap)``; 1.0 if there is none."""
    q = math.exp(-gap) if gap < 745 else 0.0
    for _ in range(200):
        exponent = -gap + bound * q
        following = math.exp(exponent) if exponent < 0 else 1.0
        if following >= 1.0:
            return 1.0
        if following <= q * (1 + 1e-12):
            return following
        q = following
    return 1.0


def worth_checking(coarse_unary, num_labels):
    """Whether any label of these (L, ...) coarse unary energies may be far enough below the best to prune.

    A quick look at the scores before upsampling (a few thousand points)
    that spares the exact check, and its one-time compilation, on logits
    where nothing is prunable (random, or unconfident). Not part of the
    proof: it only decides whether to run the exact check.
    """
    rows = coarse_unary[:num_labels].reshape(num_labels, -1)
    gaps = (rows - rows.min(axis=0)).min(axis=1)
    return bool((gaps > CANDIDATE_GAP).any())


def labels_to_keep(unary, num_labels, kernels):
    """Boolean (L,): the labels a Potts CRF with these kernels may still give some pixel.

    ``unary``: (N, >= L) float32 rows of unary energies; ``kernels``: one
    ``(lattice, pre, post, weight)`` per term (``post * K(pre * v)``, its Potts
    weight). Returns all True when the bound does not apply (a negative
    weight). At least two labels are kept (the CRF's smallest model).
    """
    from ._pruning_kernel import min_gaps

    keep = np.ones(num_labels, bool)
    if num_labels <= 2 or any(weight < 0 for *_, weight in kernels):
        return keep
    gaps = min_gaps(unary, num_labels)
    ones = np.ones((unary.shape[0], 1), np.float32)
    bound = 0.0
    for lattice, pre, post, weight in kernels:
        row_sums = lattice.filter_rows(ones, pre, post)
        bound += weight * float(row_sums.max())
    bound *= 1 + 1e-3  # the row sums' own float32 rounding
    order = np.argsort(-gaps, kind="stable")  # the most clearly absent labels first
    pruned_mass = 0.0
    for label in order[: num_labels - 2]:
        q = marginal_bound(float(gaps[label]), bound)
        if gaps[label] <= bound * q or pruned_mass + q > PRUNED_MASS:
            break
        pruned_mass += q
        keep[label] = False
    return keep
