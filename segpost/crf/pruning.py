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

Per-point label blocks (``True`` only, more than 64 labels). A trained
network's logits leave few labels prunable for the whole image: every class
comes within a few logits of the top somewhere. Each point then keeps only
the blocks of 8 labels that hold a label whose unary is at most
``BLOCK_GAP = 8`` above its lowest (its other labels' Q held at 0 for the
whole run), and the mean field slices, normalises and scatters only those
blocks; the lattices' vertex rows stay whole and are blurred exactly, so a
kept label's message is the full CRF's on the restricted Q. Labels that
occur together are numbered into the same blocks first (``group_labels``,
from the coarse scores). No a-priori bound covers this: a label 8 below the
best can gain up to ``B`` (8.3 on a 512x512 photo with the DeepLab preset)
from its neighbours. What is measured and tested instead:
``tests/test_label_blocks.py`` checks over peaked logits whose absent
classes sit 3 to 12 below the top that the marginals are within 5e-2 of the
full CRF's and that labels differ only where the full CRF's two best
marginals are within 5e-2 (looser than the whole-image rule's 2e-2: a
search found a difference of 3.2e-2; typically 4e-4). On a trained
network's 150-class logits (``benchmarks/bench_pruning.py``) the labels
were >= 99.998% the full CRF's, at 1.2-2.0x its speed. With every block
kept the kernel is the dense one bit for bit; where the points would keep
more than half the blocks on average (random logits) the dense kernel runs.
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


# Label blocks: a point keeps the blocks of 8 labels holding a label at most this far above its lowest unary,
# and at least BLOCK_MARGIN more than the most its neighbours can add to a label's score (B, message_bound): a
# label dropped at a point then stays below e**-BLOCK_MARGIN (5%) of the point's best in the full CRF.
BLOCK_GAP = 8.0
BLOCK_MARGIN = 3.0
# ... unless the points keep more than this share of the blocks on average (random logits: nearly all): the blocks
# then save no time over the dense kernel, which runs instead. (Measured on the 150-class trained logits: 6.1 of 19
# blocks ran the mean field in 0.9x the dense time in label order, 3.7 grouped in 0.65x.)
BLOCK_SHARE = 0.5
# Label blocks run with more labels than the dense kernel compiles its rows for (8 blocks, held in registers;
# measured faster than the blocks up to 64 labels, slower from 65: 1.2x at 65-100 labels), up to a mask's 64 blocks.
_BLOCK_LABELS = (65, 512)


def uses_label_blocks(prune, num_labels, iterations):
    """Whether the mean field runs on per-point label blocks (``prune=True``, 65 to 512 labels, iterations > 0)."""
    return (isinstance(prune, (bool, np.bool_)) and bool(prune) and iterations > 0
            and _BLOCK_LABELS[0] <= num_labels <= _BLOCK_LABELS[1])


_ORDER_SAMPLE = 4096  # points: a 64x64 coarse grid, 512x512 at output stride 8


def label_block_order(unary_rows, gap=BLOCK_GAP):
    """The label order the mean field's label blocks run in (``group_labels``), or None where they would
    not run: when the labels within ``gap`` of a point's best already make up more than ``BLOCK_SHARE``
    of the points' labels (the blocks they fill are at least as many; random logits), which spares the
    grouping and the kernel's own pass over the unary. ``unary_rows`` is (n, L), of which at most
    ``_ORDER_SAMPLE`` rows, evenly spaced, are looked at: the order only decides the speed."""
    unary_rows = np.asarray(unary_rows, np.float32)
    unary_rows = unary_rows[:: max(1, len(unary_rows) // _ORDER_SAMPLE)]
    if (unary_rows - unary_rows.min(axis=1, keepdims=True) <= gap).mean() > BLOCK_SHARE:
        return None
    return group_labels(unary_rows, gap)


def group_labels(unary_rows, gap=BLOCK_GAP, block=8):
    """A label order (L,) that puts labels occurring at the same points into the same blocks of ``block``.

    ``unary_rows`` is (n, L): the unary energies of a sample of points (the
    coarse scores). A label "occurs" at a point when it is at most ``gap``
    above the point's lowest. Greedy: the label occurring most often among
    those left opens a block, which the labels occurring most often with its
    members then fill. A heuristic for speed only: any order gives the same
    CRF.

    Examples
    --------
    >>> import numpy as np
    >>> from segpost.crf.pruning import group_labels
    >>> unary = np.full((4, 16), 20.0, np.float32)
    >>> unary[:2, [0, 9]] = 0.0      # labels 0 and 9 occur together
    >>> unary[2:, [3, 12]] = 0.0     # so do 3 and 12
    >>> order = group_labels(unary, block=2)
    >>> sorted(order[:2].tolist()), sorted(order[2:4].tolist())
    ([0, 9], [3, 12])
    """
    from scipy import sparse

    unary_rows = np.asarray(unary_rows, np.float32)
    # (L, L): the points where both occur; the diagonal, where each does. A sparse product: a dense one
    # wakes BLAS's threads, which then spin beside the mean field's.
    occurs = sparse.csr_matrix(unary_rows - unary_rows.min(axis=1, keepdims=True) <= gap, dtype=np.float64)
    together = (occurs.T @ occurs).toarray()
    left = np.ones(len(together), bool)
    order = []
    while left.any():
        seed = int(np.argmax(np.where(left, together.diagonal(), -1.0)))
        left[seed] = False
        members, affinity = [seed], together[seed].copy()
        while len(members) < block and left.any():
            best = int(np.argmax(np.where(left, affinity, -1.0)))
            left[best] = False
            members.append(best)
            affinity += together[best]
        order.extend(members)
    return np.asarray(order, np.int64)


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


def message_bound(kernels, num_points):
    """B = max_i sum_m w_m (K~_m 1)_i: the most a Potts CRF's pairwise terms can add to a label's score
    at any point (``kernels`` as for ``labels_to_keep``, weights >= 0), rounding included."""
    ones = np.ones((num_points, 1), np.float32)
    bound = 0.0
    for lattice, pre, post, weight in kernels:
        bound += weight * float(_row_sums(lattice, ones, pre, post).max())
    return bound * (1 + 1e-3)  # the row sums' own float32 rounding


def block_gap(kernels, num_points):
    """The label blocks' gap for this CRF: ``max(BLOCK_GAP, B + BLOCK_MARGIN)``, B its ``message_bound``."""
    return max(BLOCK_GAP, message_bound(kernels, num_points) + BLOCK_MARGIN)


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
    bound = message_bound(kernels, unary.shape[0])
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
