"""``crf_refine``: sharpen any model's output with a dense CRF in one call."""
from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from .._threads import torch_fork_safe
from .._validation import MIN_BANDWIDTH, is_torch_tensor
from ..upsample import _resize_points
from .device import refine_on_device
from .inputs import PROBABILITY_CLIP, padded_labels, refine_inputs
from .model import _POTTS, DenseCRF, _check_iterations
from .pruning import mass_budget, worth_checking

__all__ = ["CRFParams", "crf_refine"]


@dataclasses.dataclass(frozen=True)
class CRFParams:
    """Parameters of the two-kernel dense CRF used by :func:`crf_refine`.

    Names follow DeepLab's released script (Pos_W, Pos_XY, Bi_W, Bi_XY,
    Bi_RGB). Energies use Potts compatibilities and symmetric normalisation.

    Parameters
    ----------
    pos_weight : float, default 3
        Weight w2 of the smoothness kernel ``exp(-|p_i - p_j|^2 / (2 pos_xy^2))``:
        removes small isolated regions.
    pos_xy : float, default 3
        Its spatial bandwidth in pixels (in ``spacing`` units, millimetres
        say, when crf_refine is given a ``spacing``).
    bi_weight : float, default 4
        Weight w1 of the appearance kernel
        ``exp(-|p_i - p_j|^2 / (2 bi_xy^2) - |I_i - I_j|^2 / (2 bi_rgb^2))``:
        nearby pixels of similar colour take the same label.
    bi_xy : float, default 49
        Its spatial bandwidth in pixels (or ``spacing`` units).
    bi_rgb : float, default 5
        Its colour bandwidth in 0..255 intensity units for an image; for a
        volume in the scan's own units (Hounsfield units for CT;
        ``segpost.crf.inputs.INTENSITY_RULE``).
    iterations : int, default 10
        Mean-field iterations (5 to 10 are usually converged).

    Notes
    -----
    How to choose them: keep ``pos_weight = pos_xy = 3`` (DeepLab fixed them);
    tune ``bi_weight`` in [3, 6], ``bi_xy`` in 30..100 and ``bi_rgb`` in [3, 6]
    on a few held-out images (DeepLab v2's search ranges; ``segpost.tune_crf``
    automates it). Larger ``bi_xy`` lets colour evidence travel further;
    smaller ``bi_rgb`` makes edges stricter; larger ``bi_weight`` trusts the
    image more than the model. Presets: :meth:`deeplab` (the defaults) and
    :meth:`pydensecrf` (its README: pos 3/3, bilateral weight 10, sxy 80,
    srgb 13, 5 iterations) - the latter smooths much more.

    Examples
    --------
    >>> from segpost import CRFParams
    >>> CRFParams.pydensecrf().bi_xy
    80.0
    >>> CRFParams(bi_weight=5).iterations
    10
    """

    pos_weight: float = 3.0
    pos_xy: float = 3.0
    bi_weight: float = 4.0
    bi_xy: float = 49.0
    bi_rgb: float = 5.0
    iterations: int = 10

    def __post_init__(self):
        for name in ("pos_weight", "bi_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("pos_xy", "bi_xy", "bi_rgb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite bandwidth, got {value!r}")
            if value < MIN_BANDWIDTH:
                raise ValueError(f"{name} must be at least {MIN_BANDWIDTH:g} (features are divided by it), got "
                                 f"{value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "iterations", _check_iterations(self.iterations))

    @classmethod
    def deeplab(cls) -> "CRFParams":
        """DeepLab's released values: Pos_W 3, Pos_XY 3, Bi_W 4, Bi_XY 49, Bi_RGB 5, 10 iterations."""
        return cls()

    @classmethod
    def pydensecrf(cls) -> "CRFParams":
        """pydensecrf's README values: Gaussian 3/3, bilateral weight 10, sxy 80, srgb 13, 5 iterations."""
        return cls(pos_weight=3, pos_xy=3, bi_weight=10, bi_xy=80, bi_rgb=13, iterations=5)

    @classmethod
    def ct(cls) -> "CRFParams":
        """For CT volumes with ``spacing`` in millimetres: smoothness 1.5 mm (weight 1), appearance 3 mm and
        10 HU (weight 3), 10 iterations; chosen with ``tune_crf`` on CT phantoms
        (``benchmarks/tune_volume_crf.py``)."""
        return cls(pos_weight=1, pos_xy=1.5, bi_weight=3, bi_xy=3, bi_rgb=10, iterations=10)

    @classmethod
    def coerce(cls, value) -> "CRFParams":
        """A CRFParams from None (DeepLab's), a preset name, a dict of fields, or a CRFParams."""
        if value is None:
            return cls.deeplab()
        if isinstance(value, CRFParams):
            return value
        if isinstance(value, str):
            presets = {"deeplab": cls.deeplab, "pydensecrf": cls.pydensecrf, "ct": cls.ct}
            if value not in presets:
                raise ValueError(f"unknown CRF preset {value!r}; choose 'deeplab', 'pydensecrf' or 'ct'")
            return presets[value]()
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"unknown CRF parameter(s) {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"params must be a CRFParams, a preset name or a dict, got {type(value).__name__}")

    def replace(self, **changes) -> "CRFParams":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _resize_volume(scores, size, align_corners):
    """(C, d, h, w) float32 scores resized trilinearly to (C, *size): torch's interpolate, whose half-pixel
    (``align_corners=False``) and corner conventions are the 2-D path's."""
    import torch
    import torch.nn.functional as F

    torch_fork_safe()
    resized = F.interpolate(torch.from_numpy(scores)[None], size=tuple(size), mode="trilinear",
                            align_corners=bool(align_corners))
    return resized[0].numpy()


def _refine_on_cpu(inputs, params, iterations, align_corners, return_probs, prune):
    """crf_refine on the C++ CRF from checked inputs (:class:`segpost.crf.inputs.RefineInputs`): ``(labels, Q
    or None)`` as numpy, labels (N,) and Q (N, C) point-major."""
    scores = inputs.scores
    num_classes, spatial = scores.shape[0], inputs.spatial_shape
    ndim = len(spatial)
    # Point-major (N, C') scores straight from the resize: the layout the CRF
    # runs in, rows padded with zero classes to the kernel's width C' (a
    # multiple of 8; the padding is never read as a class).
    padded = np.zeros((padded_labels(num_classes), *scores.shape[1:]), np.float32)
    padded[:num_classes] = scores
    # softmax(-U - P) is unchanged by a per-pixel constant, so -logits is as
    # good a unary as -log softmax(logits): negated in the resize's pass.
    negate = not inputs.probabilities
    if scores.shape[1:] == spatial or ndim == 3:
        if scores.shape[1:] != spatial:
            padded = _resize_volume(padded, spatial, align_corners)
        full = np.ascontiguousarray(np.moveaxis(padded, 0, -1)).reshape(-1, padded.shape[0])
        if negate:
            np.negative(full, out=full)
    else:
        full = _resize_points(padded, spatial, bool(align_corners), negate=negate)
    if negate:
        unary = full
    else:
        unary = np.negative(np.log(np.clip(full, PROBABILITY_CLIP, 1.0, out=full), out=full), out=full)

    # The terms go in through the model's trusting entry points: the inputs are checked and the memory
    # estimated (refine_inputs), so add_gaussian/add_bilateral's checks would only repeat.
    crf = DenseCRF._from_point_major(unary, spatial, num_labels=num_classes)
    if params.pos_weight > 0:
        crf._add_grid_term(np.full(ndim, params.pos_xy), inputs.spacing, _POTTS, params.pos_weight, None, "diag",
                           "symmetric")
    if params.bi_weight > 0:
        colours = inputs.colours
        crf._add_image_term(colours, np.full(ndim, params.bi_xy), inputs.spacing,
                            np.full(colours.shape[-1], params.bi_rgb), _POTTS, params.bi_weight, None, "diag",
                            "symmetric")
    budget = mass_budget(prune)
    if budget is not None:
        coarse_unary = -scores if negate else -np.log(np.clip(scores, PROBABILITY_CLIP, 1.0))
        prune = prune if worth_checking(coarse_unary, num_classes, budget) else False
    return crf._infer_points(iterations, return_q=return_probs, prune=prune)


def crf_refine(image, logits=None, *, probs=None, params=None, iterations=None, align_corners=False,
               return_probs=False, prune=True, spacing=None, batch=False):
    """Refine a segmentation model's output with a dense CRF.

    The model's scores are upsampled bilinearly (trilinearly for a volume) to the image size if needed,
    then a fully connected CRF with a smoothness kernel and an appearance
    kernel (see :class:`CRFParams`) snaps the labels to the image's edges.

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8 or torch.Tensor (3, H, W), or a scan
        The image or volume the model saw, at full resolution; the scores'
        dimensions say which.

        - With (C, h, w) scores, an image: also (H, W) gray or any number of
          channels up to 16. Integers hold 0..255 whatever their dtype
          (values beyond raise; an image of 0..2 only warns), floats hold
          [0, 1] (scaled by 255), booleans are 0 / 255.
        - With (C, d, h, w) scores, a scan: (D, H, W), or (D, H, W, M) with M
          modalities (torch: (M, D, H, W)), read in its own units (Hounsfield
          units for CT; standardise MRI first), which ``bi_rgb`` is given in;
          none of the image rules above applies.
    logits : (C, h, w) or (C, d, h, w) array_like or torch.Tensor, optional
        Raw class scores at any resolution (output stride 1 to 32 ...), any
        float dtype (bfloat16 tensors too). One channel (a sigmoid model's z)
        means two classes, background and z: scores [0, z], whose softmax is
        [1 - sigmoid(z), sigmoid(z)]. Scores that look like softmax
        probabilities (all in [0, 1], summing to 1) raise a ValueError: pass them as probs=.
    probs : (C, h, w) or (C, d, h, w) array_like or torch.Tensor, keyword-only, optional
        Softmax probabilities instead of logits (clipped at 1e-5 before the
        log, as pydensecrf's ``unary_from_softmax``); one channel p means
        [1 - p, p]. Exactly one of ``logits`` and ``probs`` must be given: we
        never guess which it is.
    params : CRFParams, "deeplab", "pydensecrf" or dict, keyword-only
        CRF parameters; default DeepLab's (:meth:`CRFParams.deeplab`).
    iterations : int, keyword-only, optional
        Overrides ``params.iterations``.
    align_corners : bool, keyword-only, default False
        Upsampling convention of the scores: False for half-pixel centres
        (PyTorch's default), True for DeepLab/Caffe-style models whose sizes
        are ``(n - 1) * stride + 1``.
    return_probs : bool, keyword-only, default False
        Also return the refined marginals.
    prune : bool or "exact", keyword-only, default True
        Leave out of the mean field the labels that provably no pixel can
        take and that together hold at most a small part of any pixel's
        marginal (``segpost.crf.pruning``: a bound from each label's smallest
        gap below the best unary and the kernels' weights). True: at most
        1e-2, which is the same as changing the kernel weights by at most 1%
        (the kept marginals move by about that much, labels change only
        where the two best are nearly tied; on peaked test logits 99.99% or
        more of the labels are the full CRF's). ``"exact"``: at most 2**-24,
        the full CRF's result up to float32 rounding. False: every label.
        The pruned labels' returned marginals are 0. Logits whose absent
        classes stay about 5-10 or more below the top at every pixel then
        cost about as much as their other classes. The
        device path runs every label.
    spacing : float or sequence of float, keyword-only, optional
        The size of a step along each spatial axis (a volume's voxel size in
        millimetres, slice thickness first; a microscope's pixel size);
        ``pos_xy`` and ``bi_xy`` are then in these units. Default 1 (pixels).
    batch : bool, keyword-only, default False
        A batch: (B, C, h, w) scores (or (B, C, d, h, w)) with B images along
        the first axis ((B, H, W, 3) numpy, (B, 3, H, W) torch), each
        refined as alone, giving (B, H, W) labels and (B, C, H, W) marginals.
        On a GPU the batch is one mean field on one lattice per kernel; on
        the CPU the images run one after another. Without it, 4-D scores are
        a volume's.

    Returns
    -------
    labels : (H, W) or (D, H, W) int64
        The refined label map.
    probs : (C, H, W) or (C, D, H, W) float32
        With ``return_probs=True``: the CRF's marginals (sum to 1 over C).
        Both are numpy arrays for numpy scores, CPU torch tensors for CPU
        torch scores, and tensors on the device for CUDA tensors: there
        everything (validation, upsampling, lattices, mean field) runs on the
        GPU, on the CUDA lattice when it is built (``SEGPOST_CUDA=1``), else
        on the pure-torch lattice with a warning.

    Raises
    ------
    ValueError
        Both or neither of logits/probs, wrong shapes, NaN/inf, empty image,
        scores larger than the image or with an aspect ratio that does not
        match it, probabilities that do not sum to 1, a
        float image outside [0, 1], bad parameters.
    TypeError
        Non-numeric inputs.
    MemoryError
        When the refinement would need more memory than allowed
        (``SEGPOST_MAX_MEMORY_GB``, default 75% of RAM), before allocating it.

    Examples
    --------
    >>> import numpy as np
    >>> from skimage import data
    >>> from segpost import crf_refine
    >>> image = data.astronaut()[:128, :128]                 # (128, 128, 3) uint8
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(3, 16, 16)).astype(np.float32)  # output stride 8
    >>> labels = crf_refine(image, logits)
    >>> labels.shape, labels.dtype
    ((128, 128), dtype('int64'))
    >>> labels, probs = crf_refine(image, logits, return_probs=True, iterations=5)
    >>> probs.shape
    (3, 128, 128)

    A CT volume with a 3-D network's logits at output stride (1, 4, 4), its
    kernels in millimetres and Hounsfield units:

    >>> ct = rng.normal(40, 15, size=(8, 64, 64)).astype(np.float32)  # (D, H, W) in HU
    >>> ct[:, 16:48, 16:48] += 70                                         # an organ
    >>> volume_logits = rng.normal(size=(2, 8, 16, 16)).astype(np.float32)
    >>> crf_refine(ct, volume_logits, params="ct", spacing=(3.0, 0.8, 0.8)).shape
    (8, 64, 64)
    """
    p = CRFParams.coerce(params)
    its = p.iterations if iterations is None else _check_iterations(iterations)
    mass_budget(prune)  # a bad prune= raises on every path
    return _crf_refine(image, logits, probs, p, its, align_corners, return_probs, prune, spacing=spacing,
                       batch=batch)


def _crf_refine(image, logits, probs, params, iterations, align_corners, return_probs, prune, *, spacing=None,
                device=None, batch=False):
    """crf_refine after its parameters: one front end (``refine_inputs``), then the CPU or the device path.

    ``device``: run the torch-ops path on this device whatever the inputs (the tests pass the CPU).
    """
    if batch:
        return _refine_batch(image, logits, probs, params, iterations, align_corners, return_probs, prune,
                             spacing, device)
    inputs = refine_inputs(image, logits, probs, spacing=spacing, device=device)
    if inputs.device is None:
        labels, marginals = _refine_points_on_cpu(inputs, params, iterations, align_corners, return_probs, prune)
    else:
        labels, marginals = refine_on_device(inputs, params, iterations, align_corners, return_probs)
    if not return_probs:
        return inputs.output(labels)
    return inputs.output(labels), inputs.output(marginals)


def _refine_points_on_cpu(inputs, params, iterations, align_corners, return_probs, prune):
    """``(labels, marginals or None)`` of the CPU path, shaped like the image."""
    spatial = inputs.spatial_shape
    q, labels = _refine_on_cpu(inputs, params, iterations, align_corners, return_probs, prune)
    return labels.reshape(spatial), None if q is None else np.ascontiguousarray(q.T).reshape(-1, *spatial)


def _refine_batch(images, logits, probs, params, iterations, align_corners, return_probs, prune, spacing, device):
    """crf_refine over a batch: (B, C, ...) scores and B images, each checked as alone; (B, ...) results.

    On the CPU the images run one after another (each already uses every
    thread); on a device all of them run as one mean field (``refine_on_device``).
    """
    if (logits is None) == (probs is None):
        raise ValueError("give exactly one of logits (raw scores) or probs= (softmax probabilities)")
    name, scores = ("logits", logits) if probs is None else ("probs", probs)
    if not hasattr(scores, "shape"):
        scores = np.asarray(scores)
    if not hasattr(images, "shape"):
        images = np.asarray(images)
    if len(scores.shape) not in (4, 5):
        raise ValueError(f"with batch=True, {name} must be (B, C, h, w) or (B, C, d, h, w), got shape "
                         f"{tuple(scores.shape)}")
    if len(images.shape) < 1 or images.shape[0] != scores.shape[0]:
        raise ValueError(f"with batch=True, images must hold one image per {name[:-1]} map along axis 0: "
                         f"{scores.shape[0]} {name} for images of shape {tuple(images.shape)}")
    every = [refine_inputs(images[b], scores[b] if probs is None else None, scores[b] if probs is not None else None,
                           spacing=spacing, device=device) for b in range(scores.shape[0])]
    if not every:
        return _empty_batch(images, scores, return_probs)
    if every[0].device is None:
        results = [_refine_points_on_cpu(inputs, params, iterations, align_corners, return_probs, prune)
                   for inputs in every]
    else:
        results = refine_on_device(every, params, iterations, align_corners, return_probs)
    stack = _stack_like(every[0])
    labels = stack([labels for labels, _ in results])
    return (labels, stack([marginals for _, marginals in results])) if return_probs else labels


def _stack_like(inputs):
    """Stacks results (numpy, or device tensors) into the type the caller gave the scores."""
    def stack(parts):
        if inputs.device is not None:
            import torch

            return inputs.output(torch.stack(parts))
        return inputs.output(np.stack(parts))

    return stack


def _empty_batch(images, scores, return_probs):
    """The results of an empty batch: (0, *spatial) labels (and (0, C, *spatial) marginals)."""
    ndim = len(scores.shape) - 2
    if len(images.shape) - 1 == ndim:
        spatial = tuple(images.shape[1:])
    else:
        spatial = tuple(images.shape[2:] if is_torch_tensor(images) else images.shape[1:-1])
    labels = np.zeros((0, *spatial), np.int64)
    marginals = np.zeros((0, scores.shape[1], *spatial), np.float32)
    if is_torch_tensor(scores):
        import torch

        labels, marginals = (torch.from_numpy(x).to(scores.device) for x in (labels, marginals))
    return (labels, marginals) if return_probs else labels
