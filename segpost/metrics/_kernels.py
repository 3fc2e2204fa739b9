"""Private Numba kernels for the metrics. Use the public functions in segpost.metrics."""
import numpy as np

from ._jit import jit

@jit
def confusion_counts(pred, target, k, copies):
    """Fused, branch-free confusion count over flat integer arrays of any dtype.

    Labels outside [0, K) land in an extra row/column K of a (K+1, K+1)
    histogram, so the bounds check costs no branch and doubles as the ignore
    filter for ignore values outside [0, K): row K counts pixels whose target
    is out of range (ignored or invalid; ``count_equal`` tells them apart),
    column K invalid predictions per target class. With ``copies == 4`` four
    interleaved sub-histograms break the store-to-load chains of runs of
    identical pixels (for small K); otherwise one histogram is used.

    Returns the ((K+1) * (K+1),) int64 histogram.
    """
    k1 = k + 1
    hists = np.zeros((4 if copies == 4 else 1, k1 * k1), np.int64)
    n = pred.size
    start = 0
    if copies == 4:
        start = n - n % 4
        for i in range(0, start, 4):
            for j in range(4):  # constant trip count: unrolled
                t = np.int64(target[i + j])
                p = np.int64(pred[i + j])
                ok_t = (t >= 0) & (t < k)
                ok_p = (p >= 0) & (p < k)
                hists[j, (t if ok_t else k) * k1 + (p if ok_p else k)] += 1
    for i in range(start, n):
        t = np.int64(target[i])
        p = np.int64(pred[i])
        ok_t = (t >= 0) & (t < k)
        ok_p = (p >= 0) & (p < k)
        hists[0, (t if ok_t else k) * k1 + (p if ok_p else k)] += 1
    total = hists[0].copy()
    for c in range(1, hists.shape[0]):
        total += hists[c]
    return total


@jit
def confusion_counts_lookup(pred, target, target_row, pred_column, num_bins):
    """Confusion count of 8- or 16-bit labels through two lookup tables: one add per pixel, no compare.

    ``pred`` and ``target`` are the labels' bit patterns (viewed as unsigned);
    ``target_row[v]`` is the histogram offset of target value v's row and
    ``pred_column[v]`` prediction value v's column, both precomputed for every
    value the dtype holds, so that the range checks and the ignore filter are
    table entries instead of work per pixel (see ``confusion._lookup_tables``).
    Four interleaved sub-histograms break the store-to-load chains of runs of
    identical pixels, as in ``confusion_counts``.

    Returns the (num_bins,) int64 histogram.
    """
    hists = np.zeros((4, num_bins), np.int64)
    n = pred.size
    start = n - n % 4
    for i in range(0, start, 4):
        for j in range(4):  # constant trip count: unrolled
            hists[j, target_row[target[i + j]] + pred_column[pred[i + j]]] += 1
    for i in range(start, n):
        hists[0, target_row[target[i]] + pred_column[pred[i]]] += 1
    total = hists[0].copy()
    for c in range(1, 4):
        total += hists[c]
    return total


@jit
def count_equal(values, value):
    """Number of entries equal to `value` (of the array's own dtype: the loop vectorises)."""
    count = 0
    for i in range(values.size):
        count += values[i] == value
    return count


@jit
def first_invalid(pred, target, k, ignored):
    """Value of the first invalid label (target first, then prediction), scanning in order; ignored: int64 array."""
    for i in range(pred.size):
        t = np.int64(target[i])
        skip = False
        for v in ignored:
            if t == v:
                skip = True
        if skip:
            continue
        if t < 0 or t >= k:
            return t
        p = np.int64(pred[i])
        if p < 0 or p >= k:
            return p
    return 0


@jit
def boundary_band(labels, d, k, out):
    """Every class's Boundary IoU band at once, as one label map written to `out`.

    The official band of class c (boundary-iou-api's ``mask_to_boundary``) is
    ``mask - erode(pad(mask, 1, 0), 3x3, d times)``: a pixel of c lies in it
    unless the (2d+1) x (2d+1) square around it holds class c only, the one
    zero pixel of padding included. So a pixel is in its own class's band
    exactly when it lies within d pixels of the image border or its square
    holds another label; out[i, j] is then labels[i, j], else k (no band).
    Labels outside [0, k) belong to no class: k as well.

    Two passes with O(1) work per pixel whatever d: the start of the current
    run of equal labels along each row tells whether a row window is
    constant; the start of the current run of equal, row-constant labels down
    each column tells whether the square is.
    """
    h, w = labels.shape
    row_constant = np.empty((h, w), np.bool_)
    for i in range(h):
        start = 0
        for j in range(w):
            if j > 0 and labels[i, j] != labels[i, j - 1]:
                start = j
            centre = j - d  # its window [centre - d, j] has just been read
            if centre >= 0:
                row_constant[i, centre] = start <= centre - d  # False within d of the left border
        for centre in range(max(0, w - d), w):  # within d of the right border
            row_constant[i, centre] = False
    run_start = np.zeros(w, np.int64)
    for i in range(h + d):
        centre = i - d
        for j in range(w):
            if i < h:
                if not row_constant[i, j]:
                    run_start[j] = i + 1
                elif i > 0 and labels[i, j] != labels[i - 1, j]:
                    run_start[j] = i
            if centre >= 0:
                # Rows past the bottom border count as another label: within d of it, the square is not constant.
                interior = i < h and run_start[j] <= centre - d
                label = np.int64(labels[centre, j])
                out[centre, j] = k if interior or label < 0 or label >= k else label
    return out


@jit
def class_surfaces(labels, k, first_axis_is_grid, out):
    """Every class's surface at once: out[v] = labels[v] where v is a surface voxel of a class in [0, k), else -1.

    ``labels`` is 3-D; a 2-D map comes as (1, H, W) with ``first_axis_is_grid``
    False, so that its dummy first axis has no neighbours. A voxel of class c
    is on c's surface when it is not in ``binary_erosion(labels == c)`` with
    the cross (6- or 4-connected) structuring element and the image border
    counting as background: when a face neighbour holds another label or lies
    outside the image. ``out`` is a signed integer array that holds k - 1.

    The interior of each row is compared branch-free (it vectorises); only
    rows holding a surface voxel are read again for the boxes and counts.

    Returns ``(boxes, counts)``: boxes (k, 6) int64 the per-class bounding box
    of the surface (lo0, hi0, lo1, hi1, lo2, hi2, hi exclusive; lo > hi for an
    absent class), counts (k,) int64 the surface voxels per class.
    """
    n0, n1, n2 = labels.shape
    boxes = np.empty((k, 6), np.int64)
    for c in range(k):
        boxes[c, 0] = boxes[c, 2] = boxes[c, 4] = np.iinfo(np.int64).max
        boxes[c, 1] = boxes[c, 3] = boxes[c, 5] = 0
    counts = np.zeros(k, np.int64)
    # Rows of one label: a row whose face-neighbour rows hold that same label alone has no surface voxel
    # but its two ends (most of a volume is such rows of background).
    constant = np.empty((n0, n1), np.bool_)
    for i in range(n0):
        for j in range(n1):
            first = labels[i, j, 0]
            same = True
            for m in range(1, n2):
                same &= labels[i, j, m] == first
            constant[i, j] = same
    for i in range(n0):
        for j in range(n1):
            border_row = j == 0 or j == n1 - 1 or (first_axis_is_grid and (i == 0 or i == n0 - 1))
            found = False
            if not border_row and constant[i, j]:
                lab = labels[i, j, 0]
                quiet = (constant[i, j - 1] and constant[i, j + 1] and labels[i, j - 1, 0] == lab
                         and labels[i, j + 1, 0] == lab)
                if quiet and first_axis_is_grid:
                    quiet = (constant[i - 1, j] and constant[i + 1, j] and labels[i - 1, j, 0] == lab
                             and labels[i + 1, j, 0] == lab)
                if quiet:
                    keep = (lab >= 0) & (lab < k)
                    for m in range(n2):
                        out[i, j, m] = -1
                    if keep:
                        out[i, j, 0] = lab
                        out[i, j, n2 - 1] = lab
                        counts[lab] += 2 if n2 > 1 else 1
                        boxes[lab, 0] = min(boxes[lab, 0], i)
                        boxes[lab, 1] = max(boxes[lab, 1], i + 1)
                        boxes[lab, 2] = min(boxes[lab, 2], j)
                        boxes[lab, 3] = max(boxes[lab, 3], j + 1)
                        boxes[lab, 4] = 0
                        boxes[lab, 5] = max(boxes[lab, 5], n2)
                    continue
            for m in range(n2):
                lab = labels[i, j, m]
                if border_row or m == 0 or m == n2 - 1:
                    keep = (lab >= 0) & (lab < k)
                    out[i, j, m] = lab if keep else -1
                    found |= keep
            if not border_row:
                for m in range(1, n2 - 1):
                    lab = labels[i, j, m]
                    edge = ((labels[i, j, m - 1] != lab) | (labels[i, j, m + 1] != lab)
                            | (labels[i, j - 1, m] != lab) | (labels[i, j + 1, m] != lab))
                    if first_axis_is_grid:
                        edge |= (labels[i - 1, j, m] != lab) | (labels[i + 1, j, m] != lab)
                    keep = edge & (lab >= 0) & (lab < k)
                    out[i, j, m] = lab if keep else -1
                    found |= keep
            if found:
                for m in range(n2):
                    c = np.int64(out[i, j, m])
                    if c >= 0:
                        counts[c] += 1
                        boxes[c, 0] = min(boxes[c, 0], i)
                        boxes[c, 1] = max(boxes[c, 1], i + 1)
                        boxes[c, 2] = min(boxes[c, 2], j)
                        boxes[c, 3] = max(boxes[c, 3], j + 1)
                        boxes[c, 4] = min(boxes[c, 4], m)
                        boxes[c, 5] = max(boxes[c, 5], m + 1)
    return boxes, counts


@jit
def squared_distance_lines(site_labels, c, step, g):
    """First pass of the separable distance transform: along the last axis, the squared distance to a site.

    Sites are the voxels where ``site_labels == c`` (a 3-D view);
    g[i, j, m] = ((m - m') * step)**2 for the nearest site m' on the line,
    inf when the line has none.
    """
    n0, n1, n2 = site_labels.shape
    for i in range(n0):
        for j in range(n1):
            last = -1
            for m in range(n2):
                if site_labels[i, j, m] == c:
                    last = m
                g[i, j, m] = np.inf if last < 0 else ((m - last) * step) ** 2
            following = -1
            for m in range(n2 - 1, -1, -1):
                if site_labels[i, j, m] == c:
                    following = m
                if following >= 0:
                    d = ((following - m) * step) ** 2
                    if d < g[i, j, m]:
                        g[i, j, m] = d
    return g


_BLOCK = 16  # lines handled together: a block's rows are contiguous runs of memory


@jit
def lower_envelope_pass(g, axis, step, query_labels, c, restrict):
    """One more axis (0 or 1) of the exact squared Euclidean distance transform, in place (Felzenszwalb & Huttenlocher).

    Each line of ``g`` (3-D, C-contiguous) along ``axis`` becomes min over p
    of ((q - p) * step)**2 + g[p], through the lower envelope of the parabolas
    rooted at its finite entries. Lines are copied in blocks of neighbours
    along the last axis, so that the strided axis is read a cache line at a
    time. With ``restrict``, only lines holding a query voxel
    (``query_labels == c``) are computed: the last pass needs no others.
    """
    n0, n1, n2 = g.shape
    n = n0 if axis == 0 else n1
    outer = n1 if axis == 0 else n0
    block = np.empty((_BLOCK, n), np.float64)
    needed = np.empty(_BLOCK, np.bool_)
    v = np.empty(n, np.int64)
    roots = np.empty(n, np.float64)
    for o in range(outer):
        for b in range(0, n2, _BLOCK):
            width = min(_BLOCK, n2 - b)
            for q in range(n):
                for t in range(width):
                    block[t, q] = g[q, o, b + t] if axis == 0 else g[o, q, b + t]
            for t in range(width):
                needed[t] = not restrict
            if restrict:
                for q in range(n):
                    for t in range(width):
                        label = query_labels[q, o, b + t] if axis == 0 else query_labels[o, q, b + t]
                        if label == c:
                            needed[t] = True
            for t in range(width):
                if not needed[t]:
                    continue
                f = block[t]
                # The lower envelope without divisions: parabola p is dropped when the new one, rooted at q,
                # meets it left of where p met the one before it (intersections compared cross-multiplied:
                # (r_q - r_p) / (q - p) against (r_p - r_pp) / (p - pp), with r = f + (x * step)**2).
                top = -1  # the envelope's last parabola
                for q in range(n):
                    if f[q] == np.inf:
                        continue
                    root = f[q] + (q * step) ** 2
                    while top >= 1:
                        p, pp = v[top], v[top - 1]
                        if (root - roots[p]) * (p - pp) > (roots[p] - roots[pp]) * (q - p):
                            break
                        top -= 1
                    top += 1
                    v[top] = q
                    roots[q] = root
                if top < 0:
                    continue  # no site on the line: it stays inf
                h = 0
                for q in range(n):
                    # The envelope's values at q fall, then rise, along it: walk while the next is no larger.
                    best = ((q - v[h]) * step) ** 2 + f[v[h]]
                    while h < top:
                        following = ((q - v[h + 1]) * step) ** 2 + f[v[h + 1]]
                        if following > best:
                            break
                        best = following
                        h += 1
                    if axis == 0:
                        g[q, o, b + t] = best
                    else:
                        g[o, q, b + t] = best
    return g


@jit
def distances_at(g, query_labels, c, count):
    """sqrt(g) at the ``count`` voxels where ``query_labels == c``, in C order."""
    out = np.empty(count, np.float64)
    k = 0
    n0, n1, n2 = g.shape
    for i in range(n0):
        for j in range(n1):
            for m in range(n2):
                if query_labels[i, j, m] == c:
                    out[k] = np.sqrt(g[i, j, m])
                    k += 1
    return out


@jit
def surface_points(surface_labels, counts):
    """Coordinates of every class's surface voxels, grouped by class (a counting sort, C order within a class).

    ``surface_labels`` is ``class_surfaces``' output and ``counts`` its
    per-class counts. Returns (points (N, 3) int64, offsets (k + 1,) int64):
    class c's voxels are ``points[offsets[c]:offsets[c + 1]]``.
    """
    k = counts.size
    offsets = np.zeros(k + 1, np.int64)
    for c in range(k):
        offsets[c + 1] = offsets[c] + counts[c]
    fill = offsets[:k].copy()
    points = np.empty((offsets[k], 3), np.int64)
    n0, n1, n2 = surface_labels.shape
    for i in range(n0):
        for j in range(n1):
            for m in range(n2):
                c = surface_labels[i, j, m]
                if c >= 0:
                    row = fill[c]
                    points[row, 0] = i
                    points[row, 1] = j
                    points[row, 2] = m
                    fill[c] = row + 1
    return points, offsets


@jit
def nearest_in_ball(site_labels, c, queries, offsets, offset_distances, out):
    """For each query voxel, the distance to the nearest voxel where ``site_labels == c`` within a ball.

    ``offsets`` (M, 3) are all integer offsets of the ball, sorted by their
    distance ``offset_distances`` (M,): the first site found is the nearest
    (every nearer offset lies in the ball and was looked at before it).
    out[i] is that distance, or -1 when the ball holds no site.
    """
    n0, n1, n2 = site_labels.shape
    for i in range(queries.shape[0]):
        x0, x1, x2 = queries[i, 0], queries[i, 1], queries[i, 2]
        out[i] = -1.0
        for m in range(offsets.shape[0]):
            y0, y1, y2 = x0 + offsets[m, 0], x1 + offsets[m, 1], x2 + offsets[m, 2]
            if 0 <= y0 < n0 and 0 <= y1 < n1 and 0 <= y2 < n2 and site_labels[y0, y1, y2] == c:
                out[i] = offset_distances[m]
                break
    return out
