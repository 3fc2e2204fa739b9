"""A line-by-line CPU transcription of the CUDA lattice (csrc/cuda/), for tests on machines without a GPU.

Each ``*_kernel`` function is the body of the kernel of the same name in
permutohedral_cuda.cu, run for every thread index in turn; ``build`` and
``filter`` transcribe bindings_cuda.cpp's torch ops in numpy. The order in
which the insert kernel's threads run is a parameter: on a GPU it depends on
timing, so the tests permute it and check that nothing else does. Slow (Python
loops): for a few hundred points.

Not bit for bit in floating point. numpy and Python round every operation;
nvcc contracts ``a * b + c`` into one fused multiply-add (its default,
``-fmad=true``), rounded once: in the elevation (``running - j * cf``,
float64; ``fused=True`` below reproduces it exactly), the splat
(``total += w * s * v``), the blur (``in + 0.5f * (lo + hi)``) and the slice
(``total += w * grid``), all float32. Unfused, 970 of 11,520 elevations of a
48x48 photo crop's bilateral features differ from the fused ones by up to 2
ulps, and no simplex changes (the review counted 5,849 of 9,216 on its grid;
tests/test_cuda_kernels.py holds this on a smaller crop). What is exact: the
integer work given the simplices (keys, hash, insert, vertex numbering,
neighbours, CSR and chunks) and the emulation against itself (a batch
against its images). Filtered values and weights are compared with a
tolerance wherever nvcc fuses.
"""
import math
from fractions import Fraction

import numpy as np

MASK64 = (1 << 64) - 1
SPLAT_CHUNK = 64  # kSplatChunk in permutohedral_cuda.h
KEY_LIMIT = 1073741824.0  # kKeyLimit in simplex.h


# ------------------------------------------------------------ simplex.h


def fma(a, b, c):
    """``a * b + c`` rounded once (float64), as a fused multiply-add: exact rationals, rounded by float()."""
    return float(Fraction(a) * Fraction(b) + Fraction(c))


def elevate(position, d, *, fused=False):
    """simplex.h's elevate; ``fused``: ``running - j * cf`` as nvcc compiles it, one fused multiply-add."""
    elevated = [0.0] * (d + 1)
    running = 0.0
    for j in range(d, 0, -1):
        cf = position[j - 1]
        elevated[j] = fma(-j, cf, running) if fused else running - j * cf
        running += cf
    elevated[0] = running
    return elevated


def enclosing_simplex(elevated, d):
    d1 = d + 1
    down = 1.0 / d1
    if not all(abs(e) < KEY_LIMIT for e in elevated):
        return None
    rem0, rank, remainder, total = [0] * d1, [0] * d1, [0.0] * d1, 0
    for i in range(d1):
        v = elevated[i] * down
        lo = math.floor(v)
        k = int(lo) + (1 if (v - lo) > 0.5 else 0)
        rem0[i] = k * d1
        total += k
        remainder[i] = elevated[i] - rem0[i]
    for i in range(d):
        for j in range(i + 1, d1):
            smaller = int(remainder[i] < remainder[j])
            rank[i] += smaller
            rank[j] += 1 - smaller
    if total > 0:
        for i in range(d1):
            if rank[i] >= d1 - total:
                rem0[i] -= d1
                rank[i] += total - d1
            else:
                rank[i] += total
    elif total < 0:
        for i in range(d1):
            if rank[i] < -total:
                rem0[i] += d1
                rank[i] += d1 + total
            else:
                rank[i] += total
    bary = [0.0] * (d + 2)
    for i in range(d1):
        delta = (elevated[i] - rem0[i]) * down
        bary[d - rank[i]] += delta
        bary[d + 1 - rank[i]] -= delta
    bary[0] += 1.0 + bary[d + 1]
    return rem0, rank, bary


def vertex_key(rem0, rank, d, r):
    return [rem0[i] + r - (d + 1 if rank[i] > d - r else 0) for i in range(d)]


def neighbour_keys(key, d, axis):
    lo = [k - 1 for k in key[:d]]
    hi = [k + 1 for k in key[:d]]
    if axis < d:
        lo[axis] = key[axis] + d
        hi[axis] = key[axis] - d
    return lo, hi


def mix_hash(h):
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    h ^= h >> 33
    return h


def hash_key(key):
    h = 0
    for k in key:
        h = (h * 0x100000001B3 + (int(k) & 0xFFFFFFFF)) & MASK64
    return mix_hash(h)


# ------------------------------------------------------------ the kernels


def simplex_kernel(p, features, origin, scale, d, points_per_image, keys, weights, overflow, fused=False):
    key_size = d + (points_per_image > 0)
    image = p // points_per_image if points_per_image > 0 else 0
    position = [(float(features[p, i]) - origin[image, i]) * scale[i] for i in range(d)]
    found = enclosing_simplex(elevate(position, d, fused=fused), d)
    if found is None:
        overflow[0] = 1
    for r in range(d + 1):
        e = p * (d + 1) + r
        weights[e] = np.float32(found[2][r]) if found else 0.0
        keys[e, :d] = vertex_key(found[0], found[1], d, r) if found else 0
        if key_size > d:
            keys[e, d] = image


def insert_kernel(e, keys, slots, mask, rep):
    key = keys[e]
    slot = hash_key(key) & mask
    while True:
        claimed = slots[slot]  # atomicCAS(slots + slot, -1, e): claims an empty slot
        if claimed < 0:
            slots[slot] = e
        holder = e if claimed < 0 else claimed
        if holder == e or np.array_equal(keys[holder], key):
            rep[e] = holder
            return
        slot = (slot + 1) & mask


def find_key(key, keys, slots, mask):
    slot = hash_key(key) & mask
    while True:
        holder = slots[slot]
        if holder < 0:
            return -1
        if np.array_equal(keys[holder], key):
            return holder
        slot = (slot + 1) & mask


def neighbour_kernel(v, vertex_keys, d, keys, slots, mask, vertex_of_corner, neighbour):
    key = list(vertex_keys[v])
    for axis in range(d + 1):
        lo, hi = neighbour_keys(key, d, axis)
        lo, hi = lo + key[d:], hi + key[d:]  # the batch component: same image
        a, b = find_key(np.array(lo), keys, slots, mask), find_key(np.array(hi), keys, slots, mask)
        neighbour[axis, v] = (0 if a < 0 else vertex_of_corner[a] + 1, 0 if b < 0 else vertex_of_corner[b] + 1)


def splat_chunk_kernel(j, chunk_start, csr_corner, weights, values, pre_scale, d, sums):
    total = np.zeros(values.shape[1], np.float32)
    for e in range(chunk_start[j], chunk_start[j + 1]):
        corner = csr_corner[e]
        p = corner // (d + 1)
        scale = pre_scale[p] if pre_scale is not None else np.float32(1)
        total += weights[corner] * scale * values[p]  # float32, in CSR order, per channel (nvcc: an FMA)
    sums[j] = total


def splat_reduce_kernel(v, sums, vertex_chunk, grid):
    total = np.zeros(sums.shape[1], np.float32)
    for j in range(vertex_chunk[v], vertex_chunk[v + 1]):
        total += sums[j]
    grid[v + 1] = total


# ------------------------------------------------------------ bindings_cuda.cpp


def build(features, points_per_image=0, *, insert_order=None, chunk=SPLAT_CHUNK, fused=False):
    """The binding's build; ``insert_order``: the insert kernel's threads in this order (default: index order);
    ``fused``: the elevation's multiply-adds fused, as nvcc compiles them (the weights may then differ in
    the last bit; the module docstring says where else nvcc fuses)."""
    features = np.asarray(features, np.float32)
    n, d = features.shape
    d1 = d + 1
    if n == 0:  # the binding's empty lattice
        return [np.zeros((0, d1), np.int64), np.zeros((0, d1), np.float32), np.zeros((d1, 0, 2), np.int64),
                np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64)]
    images = n // points_per_image if points_per_image > 0 else 1
    key_size = d + (points_per_image > 0)
    scale = np.array([math.sqrt(2.0 / 3.0) * d1 / math.sqrt((i + 1.0) * (i + 2.0)) for i in range(d)])
    period = d1 / scale
    lowest = features.astype(np.float64).reshape(images, n // images, d).min(1)
    origin = np.floor(lowest / period) * period
    corners = n * d1
    keys = np.zeros((corners, key_size), np.int64)
    weights = np.zeros(corners, np.float32)
    overflow = [0]
    for p in range(n):
        simplex_kernel(p, features, origin, scale, d, points_per_image, keys, weights, overflow, fused)
    assert overflow[0] == 0
    capacity = 1
    while capacity < corners * 2:
        capacity <<= 1
    slots = np.full(capacity, -1, np.int64)
    claimant = np.zeros(corners, np.int64)
    for e in (range(corners) if insert_order is None else insert_order):
        insert_kernel(e, keys, slots, capacity - 1, claimant)
    index = np.arange(corners)
    first_of_claimant = np.full(corners, np.iinfo(np.int32).max, np.int64)
    np.minimum.at(first_of_claimant, claimant, index)
    rep = first_of_claimant[claimant]
    first = rep == index
    ids = np.cumsum(first) - 1
    vertex_of_corner = ids[rep]
    m = int(first.sum())
    first_corner = np.full(m, np.iinfo(np.int32).max, np.int64)
    np.minimum.at(first_corner, vertex_of_corner, index)  # scatter_reduce "amin": no host sync for a mask
    vertex_keys = keys[first_corner]
    neighbour = np.zeros((d1, m, 2), np.int64)
    for v in range(m):
        neighbour_kernel(v, vertex_keys, d, keys, slots, capacity - 1, vertex_of_corner, neighbour)
    csr_corner = np.argsort(vertex_of_corner, kind="stable")
    counts = np.bincount(vertex_of_corner, minlength=m)
    csr_start = np.cumsum(counts) - counts
    chunks_of_vertex = (counts + chunk - 1) // chunk
    vertex_chunk = np.concatenate([[0], np.cumsum(chunks_of_vertex)])
    owner = np.repeat(np.arange(m), chunks_of_vertex)
    within = np.arange(len(owner)) - vertex_chunk[owner]
    chunk_start = np.concatenate([csr_start[owner] + within * chunk, [corners]])
    corner_vertex = (vertex_of_corner + 1).reshape(n, d1)
    return [corner_vertex, weights.reshape(n, d1), neighbour, chunk_start, vertex_chunk, csr_corner]


def filter(corner_vertex, weights, neighbour, chunk_start, vertex_chunk, csr_corner, values, pre_scale=None,
           post_scale=None, transpose=False):
    """The binding's filter: splat (chunks, then their sums per vertex), d+1 blurs, slice; float32, each
    operation rounded (the kernels' fused multiply-adds round once: equal to a few ulps, not bit for bit)."""
    values = np.asarray(values, np.float32)
    if len(values) == 0 or values.shape[1] == 0:  # the binding's early return
        return np.zeros(values.shape, np.float32)
    n, d1 = corner_vertex.shape
    d = d1 - 1
    m, c = neighbour.shape[1], values.shape[1]
    flat_weights = weights.reshape(-1)
    chunks = len(chunk_start) - 1
    grid = np.zeros((m + 1, c), np.float32)
    sums = grid[1:] if chunks == m else np.zeros((chunks, c), np.float32)
    for j in range(chunks):
        splat_chunk_kernel(j, chunk_start, csr_corner, flat_weights, values, pre_scale, d, sums)
    if chunks > m:
        for v in range(m):
            splat_reduce_kernel(v, sums, vertex_chunk, grid)
    for step in range(d1):
        axis = d - step if transpose else step
        lo, hi = neighbour[axis, :, 0], neighbour[axis, :, 1]
        # nvcc: one FMA per entry (0.5f * (lo + hi) + in)
        grid = np.concatenate([grid[:1], grid[1:] + np.float32(0.5) * (grid[lo] + grid[hi])])
    alpha = np.float32(1.0 / (1.0 + 2.0 ** -d))
    out = (weights[:, :, None] * grid[corner_vertex]).sum(1, dtype=np.float32)  # nvcc: an FMA per corner
    post = post_scale[:, None] if post_scale is not None else np.float32(1)
    return alpha * post * out
