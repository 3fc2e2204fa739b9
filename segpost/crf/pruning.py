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
- its marginal never exceeds ``q*(l)`` (so the pruned labels' marginals at
  any pixel sum to at most the sum of their ``q*``).

What leaving labels out changes. Let ``rho_i`` be the pruned labels' summed
marginal at pixel i in the full CRF (at any iteration). For Potts terms a
label's score depends on its own marginals only, so the full CRF's kept
labels are ``(1 - rho_i)`` times the softmax of their scores over the kept
labels alone: the full CRF, restricted to the kept labels, is the pruned CRF
with every pixel's pairwise contribution scaled by ``1 - rho_i``, and with
the kept marginals scaled by it. Pruning is therefore the same as changing
the kernel weights ``w_m`` by a relative amount of at most ``P = max_i
rho_i`` (per pixel and iteration), and the returned kept marginals differ
from the full CRF's rescaled ones by the same factor. The pruned labels are
returned with marginal 0 (their true marginal is below ``q*(l)``, and below
``P`` summed). ``P`` is bounded before the mean field runs::

    rho_i <= sum_pruned exp(-gap_i(l) + B q*(l))

(one pass over the unary), and labels are pruned, most clearly absent first,
while that bound stays within a mass budget:

``"exact"``: ``P <= 2**-24``, float32's relative rounding
    The pruned CRF runs the same iterations up to float32 rounding. It needs
    an absent label to sit about 17 or more below the top at every pixel:
    hand-set logits do, a trained network's seldom do.

``True`` (the default): ``P <= MASS_BUDGET = 1e-2``
    A relative change of the kernel weights of at most 1% (DeepLab's are
    cross-validated on a grid of steps of 1 around 3 to 5). It prunes a label
    once it stays about 4.6 or more below every pixel's best (more when many
    labels are pruned: their sum counts at each pixel).
    Mean field carries a small change of its weights to the labels as it
    carries float32 rounding: damped at confident pixels, with an effect only
    at pixels whose two best labels are nearly tied. ``tests/test_pruning.py``
    checks, over peaked logits with absent classes 3 to 12 below the top,
    that the pruned labels' mass in the full CRF stays within the budget,
    the marginals within 2e-2 of the full CRF's, and that labels differ only
    where the full CRF's two best marginals are within 2e-2. On such logits
    at 512x512 with 150 classes the labels were 99.997% the full CRF's (the
    differing pixels' two best marginals within 1.2e-4), and the largest
    marginal difference 2.5e-4 (``docs/performance.md``).

Negative or matrix compatibilities break the lower bound on ``s_i(l0)``:
there nothing is pruned.
"""
from __future__ import annotations

import math

import numpy as np

# "exact": the pruned labels' marginals summed over the labels stay below float32's relative rounding of Q.
EXACT_MASS = 2.0**-24
PRUNED_MASS = EXACT_MASS  # the name tests and older code use
# The default (prune=True): the most marginal mass the pruned labels may hold together at any pixel.
MASS_BUDGET = 1e-2
# A label needs a gap of at least about -ln(budget) to be pruned; at the coarse points, before bilinear
# upsampling (which can lift a minimum between samples), 72% of it makes it a candidate: 12.0 for "exact",
# 3.3 for the default (random logits, where every label is some point's top, stay below either).
_COARSE_FRACTION = 0.72
CANDIDATE_GAP = -math.log(EXACT_MASS) * _COARSE_FRACTION  # 12.0, the "exact" budget's


def mass_budget(prune):
    """The pruned mass budget ``prune`` asks for (None for no pruning), or a ValueError naming ``prune``."""
    if isinstance(prune, (bool, np.bool_)):
        return MASS_BUDGET if prune else None
    if isinstance(prune, str) and prune == "exact":
        return EXACT_MASS
    raise ValueError(f"prune must be True, False or 'exact'; got {prune!r}")


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


def worth_checking(coarse_unary, num_labels, budget=EXACT_MASS):
    """Whether any label of these (L, ...) coarse unary energies may be far enough below the best to prune.

    A quick look at the scores before upsampling (a few thousand points)
    that spares the exact check, and its one-time compilation, on logits
    where nothing is prunable (random, or unconfident). Not part of the
    proof: it only decides whether to run the exact check.
    """
    rows = coarse_unary[:num_labels].reshape(num_labels, -1)
    gaps = (rows - rows.min(axis=0)).min(axis=1)
    return bool((gaps > -math.log(budget) * _COARSE_FRACTION).any())


def _row_sums(lattice, ones, pre, post):
    """``post * K(pre * 1)``: a kernel's normalised row sums (the lattice interface's filter)."""
    return lattice.filter_rows(ones, pre, post)


def labels_to_keep(unary, num_labels, kernels, budget=EXACT_MASS):
    """Boolean (L,): the labels a Potts CRF with these kernels may still give some pixel.

    ``unary``: (N, >= L) float32 rows of unary energies; ``kernels``: one
    ``(lattice, pre, post, weight)`` per term (``post * K(pre * v)``, its Potts
    weight); ``budget``: the most marginal mass the pruned labels may hold
    together at any pixel and iteration (``EXACT_MASS`` or ``MASS_BUDGET``).
    Returns all True when the bound does not apply (a negative weight). At
    least two labels are kept (the CRF's smallest model).
    """
    from ._pruning_kernel import max_pruned_mass, min_gaps

    keep = np.ones(num_labels, bool)
    if num_labels <= 2 or any(weight < 0 for *_, weight in kernels):
        return keep
    gaps = min_gaps(unary, num_labels)
    if math.exp(-float(gaps.max())) > budget:  # q* >= exp(-g): no label fits, the kernels need not be asked
        return keep
    ones = np.ones((unary.shape[0], 1), np.float32)
    bound = 0.0
    for lattice, pre, post, weight in kernels:
        bound += weight * float(_row_sums(lattice, ones, pre, post).max())
    bound *= 1 + 1e-3  # the row sums' own float32 rounding
    order = np.argsort(-gaps, kind="stable")  # the most clearly absent labels first
    # Candidates: each never the argmax, the sum of their largest marginals within the budget at first,
    # then (one pass over the points) within it at every point.
    lifts, summed = [], 0.0
    for label in order[: num_labels - 2]:
        q = marginal_bound(float(gaps[label]), bound)
        if gaps[label] <= bound * q or q > budget:
            break
        lifts.append(bound * q)
        summed += q
    count = len(lifts)
    if summed > budget:  # the pointwise bound, on ever fewer candidates (halving) until it fits
        while count > 0:
            if max_pruned_mass(unary, num_labels, order[:count].astype(np.int64),
                               np.asarray(lifts[:count])) <= budget:
                break
            count //= 2
    keep[order[:count]] = False
    return keep
