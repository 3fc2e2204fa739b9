"""Sliding-window inference over images and volumes, with MONAI's window grid and blending, and flip TTA."""
from __future__ import annotations

import itertools
import math
import numbers

import numpy as np

from ._memory import check_working_set
from ._validation import channels_last, check_int, is_torch_tensor, to_numpy, two_class_scores

__all__ = ["sliding_window_inference", "predict_volume"]

_PADDING_MODES = ("constant", "reflect", "replicate", "circular")


def _per_axis(value, n, name, check):
    """``value`` (a number or a sequence of ``n``) as a tuple of ``n`` numbers, each passed through ``check``."""
    values = (value,) * n if isinstance(value, numbers.Real) and not isinstance(value, bool) else tuple(value)
    if len(values) != n:
        raise ValueError(f"{name} must be a number or {n} numbers (one per spatial axis), got {value!r}")
    return tuple(check(v, name) for v in values)


def _check_overlap(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def _check_sigma_scale(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _check_roi_size(roi_size, n):
    """roi_size as n positive ints: an int for every axis, or one per axis."""
    values = (roi_size,) * n if isinstance(roi_size, numbers.Integral) and not isinstance(roi_size, bool) else tuple(roi_size)
    if len(values) != n or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
        raise ValueError(f"roi_size must be a positive int or {n} positive ints (one per spatial axis), got {roi_size!r}")
    return tuple(int(v) for v in values)


def _window_starts(length, window, interval):
    """MONAI's ``dense_patch_slices`` along one axis: a regular grid, the last window pushed back to the edge."""
    count = next(i for i in range(max(1, math.ceil(length / interval))) if i * interval + window >= length) + 1
    return [i * interval - max(i * interval + window - length, 0) for i in range(count)]


def _importance_map(size, mode, sigma_scale, device):
    """MONAI's ``compute_importance_map``, float32: ones, or a separable Gaussian of sigma ``sigma_scale * size``
    per axis (not normalised), clamped below at its minimum or 1e-3, whichever is larger (no zero weights)."""
    import torch

    if mode == "constant":
        weights = torch.ones(size, device=device, dtype=torch.float)
    else:
        for i, (n, scale) in enumerate(zip(size, sigma_scale)):
            sigma = n * scale
            x = torch.arange(start=-(n - 1) / 2.0, end=(n - 1) / 2.0 + 1, dtype=torch.float, device=device)
            x = torch.exp(x**2 / (-2 * sigma**2))
            weights = weights.unsqueeze(-1) * x[(None,) * i] if i > 0 else x
    return torch.clamp(weights, min=max(torch.min(weights).item(), 1e-3))


def _logits_of(output, select):
    """The (B, K, ...) float32 logits tensor of a model's output (see Pipeline's ``output=``)."""
    from .pipeline import _model_logits

    return _model_logits(output, select)


def sliding_window_inference(inputs, model, *, roi_size, overlap=0.25, mode="constant", sigma_scale=0.125,
                             padding_mode="constant", cval=0.0, sw_batch_size=1, output=None):
    """Run ``model`` over an image or volume in overlapping windows and blend the window outputs.

    The windows, their order, padding and blending are MONAI's
    ``monai.inferers.sliding_window_inference`` [MONAI]_, and so are the
    numbers (tested against MONAI 1.6): along each axis windows start every
    ``int(roi * (1 - overlap))`` voxels (at least 1; one window when it
    covers the axis), the last one pushed back to end at the edge; an input
    smaller than the window is padded on both sides (``padding_mode``,
    ``cval``) and the result cropped back. Each window's output is
    multiplied by the importance map (ones, or a Gaussian of sigma
    ``sigma_scale * roi`` per axis, at least 1e-3) and the sum is divided by
    the summed maps.

    Parameters
    ----------
    inputs : (B, M, H, W) or (B, M, D, H, W) torch.Tensor or ndarray
        A batch of images (two spatial axes) or volumes (three), channel-first,
        as MONAI takes them; given to the model as float32 windows
        (normalise the intensities beforehand, as the model was trained).
    model : callable
        Takes an (n, M, ...) float32 tensor of windows of ``roi_size``, returns (n, K, ...)
        logits (or any scores): a tensor, a dict with ``"out"`` or
        ``"logits"``, a tuple (first item), or what ``output=`` picks. One
        channel means two classes, [0, z]. Outputs at another resolution are
        resized to the window (bilinear or trilinear, half-pixel; MONAI
        instead stitches them at their own resolution).
    roi_size : int or sequence of int, keyword-only
        The window; an int is used along every spatial axis.
    overlap : float or sequence of float, keyword-only, default 0.25
        Overlap of neighbouring windows along each axis, in [0, 1).
    mode : {"constant", "gaussian"}, keyword-only, default "constant"
        Blending of overlapping windows.
    sigma_scale : float or sequence of float, keyword-only, default 0.125
        The Gaussian's sigma as a fraction of the window, per axis.
    padding_mode : {"constant", "reflect", "replicate", "circular"}, keyword-only
        Padding of inputs smaller than the window (``torch.nn.functional.pad``).
    cval : float, keyword-only, default 0
        The value of constant padding (other modes refuse a non-zero one).
    sw_batch_size : int, keyword-only, default 1
        Windows per forward pass (under ``torch.no_grad``; the model's
        train/eval mode is the caller's, as in MONAI).
    output : str or callable, keyword-only, optional
        The key of the model's output holding the logits, or a function from
        the output to the logits tensor.

    Returns
    -------
    (B, K, H, W) or (B, K, D, H, W) float32
        numpy for numpy inputs, a tensor (on the inputs' device) for tensors.

    Raises
    ------
    ValueError
        On inputs that are not (B, M, H, W) or (B, M, D, H, W) with two or three spatial
        axes, non-finite inputs, bad options, or a model whose outputs are
        not (n, K, ...) finite scores.
    MemoryError
        If the blended output would exceed the working-set limit.

    References
    ----------
    .. [MONAI] MONAI Consortium, "MONAI: Medical Open Network for AI".
       ``monai/inferers/utils.py::sliding_window_inference``.

    Examples
    --------
    >>> import torch
    >>> from segpost import sliding_window_inference
    >>> model = torch.nn.Conv3d(1, 3, kernel_size=3, padding=1)
    >>> volume = torch.randn(1, 1, 20, 40, 40)
    >>> sliding_window_inference(volume, model, roi_size=(16, 32, 32), overlap=0.5, mode="gaussian").shape
    torch.Size([1, 3, 20, 40, 40])
    """
    import torch
    import torch.nn.functional as F

    was_torch = is_torch_tensor(inputs)
    if was_torch:
        t = inputs.detach()
        if t.is_complex():
            raise TypeError(f"inputs must be real, got {t.dtype}")
    else:
        arr, _ = to_numpy(inputs, "inputs")
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"inputs must have a real numeric dtype, got {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    # A window of three sizes asks for volumes: said so when the inputs lack the batch (and channel) axes.
    volume_window = np.ndim(roi_size) == 1 and np.size(roi_size) == 3
    if t.ndim not in (4, 5) or 0 in t.shape:
        hint = ": a volume without its batch and channel axes? pass inputs[None, None]" if t.ndim == 3 and \
            volume_window else ""
        raise ValueError(f"inputs must be a non-empty (B, M, H, W) or (B, M, D, H, W) batch, channel-first as MONAI "
                         f"takes it, got shape {tuple(t.shape)}{hint}")
    n = t.ndim - 2
    if t.ndim == 4 and volume_window:
        # The spatial axes are counted from the input: a 4-D one is a batch of images, whatever the model.
        raise ValueError(f"a 3-long roi_size needs (B, M, D, H, W) volumes, got 4-D inputs of shape "
                         f"{tuple(t.shape)} (read as a (B, M, H, W) batch of images): a volume without its batch "
                         f"axis? pass inputs[None]")
    roi = _check_roi_size(roi_size, n)
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("inputs must be finite, but they contain NaN or infinity")
    overlaps = _per_axis(overlap, n, "overlap", _check_overlap)
    if mode not in ("constant", "gaussian"):
        raise ValueError(f"mode must be 'constant' or 'gaussian', got {mode!r}")
    sigmas = _per_axis(sigma_scale, n, "sigma_scale", _check_sigma_scale)
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
    if isinstance(cval, bool) or not isinstance(cval, numbers.Real) or not math.isfinite(cval):
        raise ValueError(f"cval must be a finite number, got {cval!r}")
    if cval != 0 and padding_mode != "constant":
        raise ValueError(f"cval is the value of constant padding: padding_mode={padding_mode!r} takes none "
                         f"(MONAI refuses it too), got cval={cval!r}")
    sw_batch_size = check_int(sw_batch_size, "sw_batch_size")
    if output is not None and not callable(output) and not isinstance(output, str):
        raise TypeError(f"output must be a key (str) or a callable, got {type(output).__name__}")
    if not callable(model):
        raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")

    batch, _, *spatial = t.shape
    # Inputs smaller than the window: padded on both sides (the extra voxel after), cropped back at the end.
    pads = []
    for axis in reversed(range(n)):
        diff = max(roi[axis] - spatial[axis], 0)
        pads += [diff // 2, diff - diff // 2]
    if any(pads):
        t = F.pad(t, pads, mode=padding_mode, value=float(cval)) if padding_mode == "constant" else \
            F.pad(t, pads, mode=padding_mode)
    size = tuple(t.shape[2:])
    intervals = [roi[a] if roi[a] == size[a] else max(1, int(roi[a] * (1 - overlaps[a]))) for a in range(n)]
    windows = list(itertools.product(*(_window_starts(size[a], roi[a], intervals[a]) for a in range(n))))
    weights = _importance_map(roi, mode, sigmas, t.device)
    total = acc = None
    jobs = [(b, start) for b in range(batch) for start in windows]  # MONAI's order: image, then window
    for first in range(0, len(jobs), sw_batch_size):
        chunk = jobs[first: first + sw_batch_size]
        regions = [tuple(slice(s, s + r) for s, r in zip(start, roi)) for _, start in chunk]
        data = torch.cat([t[(slice(b, b + 1), slice(None), *region)] for (b, _), region in zip(chunk, regions)])
        with torch.no_grad():
            logits = _window_logits(model(data), output, len(chunk), roi)
        if acc is None:
            k = logits.shape[1]
            check_working_set(4 * (batch * k + 1) * math.prod(size),
                              f"sliding_window_inference over {'x'.join(map(str, size))} with {k} classes",
                              "run the volume in parts")
            acc = torch.zeros((batch, k, *size), dtype=torch.float32, device=t.device)
            total = torch.zeros(size, dtype=torch.float32, device=t.device)
            for start in windows:
                total[tuple(slice(s, s + r) for s, r in zip(start, roi))] += weights
        elif logits.shape[1] != acc.shape[1]:
            raise ValueError(f"the model returned {logits.shape[1]} classes for one window and {acc.shape[1]} "
                             f"for another")
        logits = logits * weights
        for (b, _), region, window_logits in zip(chunk, regions, logits):
            acc[(b, slice(None), *region)] += window_logits
    acc /= total
    if any(pads):
        crop = [slice(None), slice(None)]
        for axis in range(n):
            before = pads[2 * (n - 1 - axis)]
            crop.append(slice(before, before + spatial[axis]))
        acc = acc[tuple(crop)]
    return acc if was_torch else acc.cpu().numpy()


def _window_logits(out, select, count, roi):
    """(count, K, *roi) float32 logits of a model's output for ``count`` windows."""
    import torch
    import torch.nn.functional as F

    logits = _logits_of(out, select)
    if not isinstance(logits, torch.Tensor) or logits.ndim != len(roi) + 2 or logits.shape[0] != count:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return (n, K, {', '.join('...' for _ in roi)}) scores for n windows, "
                         f"got {shape} for {count}")
    logits = logits.float()
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the model returned NaN or infinite scores")
    if logits.shape[1] == 1:
        logits = two_class_scores(logits.transpose(0, 1), probabilities=False).transpose(0, 1)
    if tuple(logits.shape[2:]) != roi:
        logits = F.interpolate(logits, size=roi, mode="bilinear" if len(roi) == 2 else "trilinear",
                               align_corners=False)
    return logits


def predict_volume(model, volume, *, roi_size, overlap=0.5, blend="gaussian", sigma_scale=0.125, flip_axes=(),
                   merge="probs", sw_batch_size=1, padding_mode="constant", cval=0.0, channel_axis="auto",
                   output=None, device=None, return_probs=False, crf=None, spacing=None):
    """Labels (and probabilities) of a 3-D model on one volume: sliding windows, flip TTA, softmax, argmax.

    Each view of the volume (the volume itself and, with ``flip_axes``, every
    combination of flips over those axes: 2, 4 or 8 views, nnU-Net's
    mirroring) runs through :func:`sliding_window_inference`; its blended
    logits are flipped back, turned into probabilities (``merge="probs"``,
    averaged over views) or averaged as logits (``merge="logits"``, then one
    softmax), and the argmax gives the labels.

    With ``crf``, :func:`segpost.crf_refine` then refines the merged
    probabilities on the volume (its kernels in ``spacing`` units).

    Parameters
    ----------
    model : torch.nn.Module or callable
        Takes (n, M, d, h, w) float32 windows, returns (n, K, d, h, w) logits
        (see :func:`sliding_window_inference`). A Module runs in eval mode
        under ``torch.inference_mode`` and is put back in its own mode after.
    volume : (D, H, W), numpy (D, H, W, M) or torch (M, D, H, W)
        One scan, single- or multi-channel (segpost's layout rule:
        ``channel_axis=`` for other layouts). Passed to the model as float32
        as it is: normalise it as the model was trained (CT windowing, z-score).
    roi_size : int or (int, int, int), keyword-only
        The window.
    overlap : float or sequence of float, keyword-only, default 0.5
    blend : {"gaussian", "constant"}, keyword-only, default "gaussian"
        MONAI's ``mode``; Gaussian weights of sigma ``sigma_scale * roi_size``.
    sigma_scale : float or sequence of float, keyword-only, default 0.125
    flip_axes : sequence of int, keyword-only, default ()
        Spatial axes (0 = depth, 1 = height, 2 = width) to flip for
        test-time augmentation; every subset of them is one view.
    merge : {"probs", "logits"}, keyword-only, default "probs"
        Average softmax probabilities over views, or logits.
    sw_batch_size : int, keyword-only, default 1
    padding_mode, cval : keyword-only
        As for :func:`sliding_window_inference`.
    channel_axis : "auto", int or None, keyword-only
        Where the volume's channels are.
    output : str or callable, keyword-only, optional
        Picks the logits from the model's output.
    device : str or torch.device, keyword-only, optional
        Where to run; by default the device of the model's parameters.
    return_probs : bool, keyword-only, default False
    crf : CRFParams, preset name or dict, keyword-only, optional
        Refine with the dense CRF after the windows (e.g. ``"ct"``). It reads
        ``volume`` as given, in its own units (Hounsfield units for the CT
        preset): pass the scan before any normalisation the model needs and
        normalise inside ``model``, or choose ``bi_rgb`` in the units you pass.
    spacing : sequence of float, keyword-only, optional
        The voxel size (depth, height, width) for the CRF, e.g. in millimetres.

    Returns
    -------
    PipelineOutput
        ``labels`` (D, H, W) int64 and, with ``return_probs``, ``probs``
        (K, D, H, W) float32, numpy.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from segpost import predict_volume
    >>> model = torch.nn.Conv3d(1, 3, kernel_size=3, padding=1)
    >>> volume = np.random.default_rng(0).normal(size=(20, 40, 40)).astype(np.float32)
    >>> out = predict_volume(model, volume, roi_size=(16, 32, 32), flip_axes=(1, 2), return_probs=True)
    >>> out.labels.shape, out.probs.shape
    ((20, 40, 40), (3, 20, 40, 40))
    >>> predict_volume(model, volume, roi_size=16, crf="ct", spacing=(3.0, 0.8, 0.8)).labels.shape
    (20, 40, 40)
    """
    import torch

    from .crf.inputs import MAX_IMAGE_CHANNELS
    from .pipeline import PipelineOutput, _eval_mode

    arr, was_torch, axis = channels_last(volume, channel_axis=channel_axis, spatial_ndim=3, name="volume")
    if 0 in arr.shape:
        raise ValueError(f"volume must not be empty, got shape {tuple(np.shape(volume))}")
    if not was_torch and channel_axis == "auto" and arr.shape[-1] > MAX_IMAGE_CHANNELS >= np.shape(volume)[0]:
        # numpy volumes are (D, H, W, M): a (1, D, H, W) one would go to the model as D modalities.
        raise ValueError(f"volume of shape {tuple(np.shape(volume))} reads as numpy's (D, H, W, M) with "
                         f"{arr.shape[-1]} modalities: a (M, D, H, W) array? pass channel_axis=0 (or volume[0] "
                         f"for one channel)")
    if not bool(np.isfinite(arr).all()):
        raise ValueError("volume must be finite, but it contains NaN or infinity")
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    if merge not in ("probs", "logits"):
        raise ValueError(f"merge must be 'probs' or 'logits', got {merge!r}")
    axes = []
    for a in flip_axes:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral) or not -3 <= a < 3:
            raise ValueError(f"flip_axes must hold spatial axes 0, 1, 2 (depth, height, width), got {flip_axes!r}")
        if int(a) % 3 in axes:
            raise ValueError(f"flip_axes names axis {int(a) % 3} twice: {flip_axes!r}")
        axes.append(int(a) % 3)
    if not callable(model):
        raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
    if device is None:
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        device = params[0].device if params else (volume.device if was_torch else torch.device("cpu"))
    device = torch.device(device)
    channel_first = np.ascontiguousarray(np.moveaxis(arr, -1, 0), dtype=np.float32)
    t = torch.from_numpy(channel_first).to(device)[None]                      # (1, M, D, H, W)
    views = [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]
    total = None
    with torch.inference_mode(), _eval_mode(model):
        for combo in views:
            dims = [2 + a for a in combo]
            view = t.flip(dims) if dims else t
            logits = sliding_window_inference(view, model, roi_size=roi_size, overlap=overlap, mode=blend,
                                              sigma_scale=sigma_scale, padding_mode=padding_mode, cval=cval,
                                              sw_batch_size=sw_batch_size, output=output)
            logits = logits.flip(dims) if dims else logits
            contribution = logits[0] if merge == "logits" else torch.softmax(logits[0], dim=0)
            total = contribution if total is None else total + contribution
        merged = total / len(views)
        probs = torch.softmax(merged, dim=0) if merge == "logits" else merged
        probs_np = probs.float().cpu().numpy()
    if crf is not None:
        from .crf import crf_refine

        labels, probs_np = crf_refine(arr, probs=probs_np, params=crf, spacing=spacing, return_probs=True)
    else:
        labels = probs_np.argmax(axis=0).astype(np.int64)
    return PipelineOutput(labels, probs_np if return_probs else None)
