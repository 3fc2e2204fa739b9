"""DeepLab-style inference around any PyTorch model: test-time augmentation,
sliding windows, exact restoration to the original size, optional CRF."""
from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from ._validation import check_int, is_torch_tensor
from .upsample import deeplab_size, pad_to_multiple

__all__ = ["Pipeline", "PipelineOutput", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class PipelineOutput:
    """Prediction for one image: ``labels`` (H, W) int64 and, on request, ``probs`` (C, H, W) float32."""

    labels: np.ndarray
    probs: np.ndarray | None = None


def _model_logits(output):
    """The logits tensor of a model's output: a tensor, a dict with "out" (torchvision), or a tuple/list (first)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        if "out" not in output:
            raise ValueError(f"the model returned a dict without an 'out' entry (keys: {sorted(output)})")
        return _model_logits(output["out"])
    if isinstance(output, (tuple, list)) and output:
        return _model_logits(output[0])
    raise TypeError(f"the model returned {type(output).__name__}; expected a tensor, a dict with 'out', or a tuple")


def _positions(length, window, stride):
    """Window starts along one axis: a regular grid with the last window pushed to the edge."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def _blend_weights(size, blend, device):
    import torch

    h, w = size
    if blend == "constant":
        return torch.ones((h, w), device=device)
    # Gaussian weights, sigma = window / 8 (nnU-Net's choice), centred on the window.
    def axis(n):
        x = torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2
        return torch.exp(-0.5 * (x / max(n / 8, 1e-6)) ** 2)

    weights = axis(h)[:, None] * axis(w)[None, :]
    return (weights / weights.max()).clamp_min(1e-3)  # no zero weights at window corners


class Pipeline:
    """Full-resolution, optionally CRF-refined predictions from any segmentation model.

    Parameters
    ----------
    model : torch.nn.Module or callable
        Takes a (B, 3, h, w) float tensor, returns logits (B, C, h', w') at any
        output stride: a tensor, a dict with ``"out"`` (torchvision), or a tuple
        (first item).
    mean, std : sequences of float, keyword-only
        Normalisation of the [0, 1] image (ImageNet's by default).
    scales : sequence of float, keyword-only, default (1.0,)
        Multi-scale test-time augmentation.
    flip : bool, keyword-only
        Also predict the horizontally flipped image.
    window : int or (int, int), keyword-only, optional
        Sliding-window size (at each scale); None runs the whole image.
    overlap : float, keyword-only, default 1/3
        Overlap of neighbouring windows, in [0, 1).
    blend : {"gaussian", "constant"}, keyword-only
        Weights of overlapping windows (Gaussian: sigma = window / 8).
    merge : {"probs", "logits"}, keyword-only
        Average softmax probabilities over views (DeepLab, mmseg) or logits (nnU-Net, ttach).
    align_corners : bool, keyword-only
        Upsampling convention of the model's logits; True also resizes scaled
        views to DeepLab sizes ``(n - 1) * s + 1``.
    size_divisor : int, keyword-only, optional
        Pad each view (bottom/right) to a multiple of this (a model's output stride).
    crf : CRFParams, "deeplab", "pydensecrf" or dict, keyword-only, optional
        Refine the merged probabilities with :func:`segpost.crf_refine`.
    device : str or torch.device, keyword-only, optional
        Where to run the model; by default the device of its parameters.
    batch_size : int, keyword-only, default 1
        Windows (or images in ``predict_batch``) per forward pass.

    Notes
    -----
    Every view records its scale, flip, padding and the original size and is
    restored exactly, in this order: upsample the logits to the padded input
    size, crop the padding, unflip, resize to the original size, softmax,
    merge, CRF, argmax. The model runs in eval mode under
    ``torch.inference_mode``.

    Examples
    --------
    >>> import torch
    >>> from skimage import data
    >>> from segpost import Pipeline
    >>> model = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)
    >>> pipe = Pipeline(model, scales=(0.5, 1.0), flip=True)
    >>> out = pipe(data.astronaut()[:64, :96], return_probs=True)
    >>> out.labels.shape, out.probs.shape
    ((64, 96), (4, 64, 96))
    """

    def __init__(self, model, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, scales=(1.0,), flip=False, window=None,
                 overlap=1 / 3, blend="gaussian", merge="probs", align_corners=False, size_divisor=None, crf=None,
                 device=None, batch_size=1):
        import torch

        from .crf import CRFParams

        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
        self.model = model
        self.mean = torch.tensor([float(m) for m in mean]).view(-1, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(-1, 1, 1)
        if self.mean.numel() != self.std.numel() or not bool((self.std > 0).all()):
            raise ValueError("mean and std must have the same length and std must be positive")
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or any(not math.isfinite(s) or s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive numbers, got {scales!r}")
        self.flip = bool(flip)
        if window is not None:
            window = (window, window) if isinstance(window, numbers.Integral) else tuple(window)
            if len(window) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in window):
                raise ValueError(f"window must be a positive int or (height, width), got {window!r}")
            window = (int(window[0]), int(window[1]))
        self.window = window
        if not 0 <= float(overlap) < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        self.overlap = float(overlap)
        if blend not in ("gaussian", "constant"):
            raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
        self.blend = blend
        if merge not in ("probs", "logits"):
            raise ValueError(f"merge must be 'probs' or 'logits', got {merge!r}")
        self.merge = merge
        self.align_corners = bool(align_corners)
        self.size_divisor = None if size_divisor is None else check_int(size_divisor, "size_divisor")
        self.crf = None if crf is None else CRFParams.coerce(crf)
        self.batch_size = check_int(batch_size, "batch_size")
        if device is None:
            params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
            device = params[0].device if params else torch.device("cpu")
        self.device = torch.device(device)
        if isinstance(model, torch.nn.Module):
            model.to(self.device).eval()

    # ----------------------------------------------------------------- public

    def __call__(self, image, *, return_probs=False) -> PipelineOutput:
        """Predict one image: numpy (H, W, 3) uint8 (or float in [0, 1]) or torch (3, H, W)."""
        import torch

        with torch.inference_mode():
            tensor, original = self._to_tensor(image)
            probs = self._predict(tensor)
            return self._finish(probs, original, return_probs)

    def predict_batch(self, images, *, return_probs=False):
        """Predict a list (or a (B, ...) array/tensor) of images; returns a list of PipelineOutput."""
        return [self(image, return_probs=return_probs) for image in images]

    # --------------------------------------------------------------- internals

    def _to_tensor(self, image):
        """(C, H, W) float32 in [0, 1] on the device, and the image as (H, W, C) uint8 if the CRF needs it."""
        import torch

        if is_torch_tensor(image):
            t = image.detach()
            if t.ndim != 3:
                raise ValueError(f"a torch image must be (C, H, W), got shape {tuple(t.shape)}")
            t = t.float() / 255 if not t.is_floating_point() else t.float()
        else:
            arr = np.asarray(image)
            if arr.ndim != 3 or arr.dtype.kind not in "uif":
                raise ValueError(f"a numpy image must be (H, W, C) numeric, got shape {arr.shape} and dtype {arr.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
            t = t.float() / 255 if arr.dtype.kind in "ui" else t.float()
        c, h, w = t.shape
        if c != self.mean.numel():
            raise ValueError(f"the image has {c} channels but mean/std have {self.mean.numel()}")
        if h == 0 or w == 0:
            raise ValueError(f"the image is empty: {h}x{w}")
        if not bool(torch.isfinite(t).all()) or float(t.min()) < -1e-3 or float(t.max()) > 1 + 1e-3:
            raise ValueError("image intensities must be in [0, 255] (integers) or [0, 1] (floats)")
        original = None
        if self.crf is not None:
            original = (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return t.to(self.device), original

    def _view_size(self, h, w, scale):
        if scale == 1.0:
            return h, w
        if self.align_corners:
            return deeplab_size(h, scale), deeplab_size(w, scale)
        return max(1, int(round(h * scale))), max(1, int(round(w * scale)))

    def _predict(self, image):
        """Merged (C, H, W) probabilities over all views."""
        import torch
        import torch.nn.functional as F

        _, h, w = image.shape
        normalised = (image - self.mean.to(image.device)) / self.std.to(image.device)
        total = None
        num_classes = None
        views = 0
        for scale in self.scales:
            size = self._view_size(h, w, scale)
            scaled = normalised if size == (h, w) else F.interpolate(
                normalised[None], size=size, mode="bilinear", align_corners=self.align_corners)[0]
            for flipped in ((False, True) if self.flip else (False,)):
                view = scaled.flip(-1) if flipped else scaled
                logits = self._logits(view)                        # (C, size), padding already cropped
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=self.align_corners)[0]
                if num_classes is None:
                    num_classes = logits.shape[0]
                elif logits.shape[0] != num_classes:
                    raise ValueError(f"the model returned {logits.shape[0]} classes for one view and {num_classes} for "
                                     f"another (scale {scale}, flip {flipped})")
                contribution = logits.float() if self.merge == "logits" else torch.softmax(logits.float(), dim=0)
                total = contribution if total is None else total + contribution
                views += 1
        merged = total / views
        return torch.softmax(merged, dim=0) if self.merge == "logits" else merged

    def _forward(self, batch):
        import torch

        out = _model_logits(self.model(batch))
        if out.ndim != 4 or out.shape[0] != batch.shape[0]:
            raise ValueError(f"the model must return (B, C, h, w) logits, got shape {tuple(out.shape)}")
        if not bool(torch.isfinite(out).all()):
            raise ValueError("the model returned NaN or infinite logits")
        return out

    def _restore(self, logits, padded_size, valid_size):
        """Upsample a view's logits to its padded input size, then crop the padding."""
        import torch.nn.functional as F

        if logits.shape[-2:] != padded_size:
            logits = F.interpolate(logits[None], size=padded_size, mode="bilinear", align_corners=self.align_corners)[0]
        return logits[:, : valid_size[0], : valid_size[1]]

    def _logits(self, view):
        """(C, h, w) logits of one view at its own size (whole image or sliding windows)."""
        import torch

        _, h, w = view.shape
        if self.window is None:
            padded, _ = pad_to_multiple(view, self.size_divisor or 1)
            return self._restore(self._forward(padded[None])[0], tuple(padded.shape[-2:]), (h, w))
        import torch.nn.functional as F

        wh, ww = self.window
        # Pad only when the image is smaller than the window.
        ph, pw = max(h, wh), max(w, ww)
        padded = F.pad(view, (0, pw - w, 0, ph - h)) if (ph, pw) != (h, w) else view
        sh, sw = max(1, int(wh * (1 - self.overlap))), max(1, int(ww * (1 - self.overlap)))
        boxes = [(y, x) for y in _positions(ph, wh, sh) for x in _positions(pw, ww, sw)]
        weights = _blend_weights((wh, ww), self.blend, view.device)
        acc = None
        norm = torch.zeros((ph, pw), device=view.device)
        for i in range(0, len(boxes), self.batch_size):
            chunk = boxes[i: i + self.batch_size]
            batch = torch.stack([padded[:, y: y + wh, x: x + ww] for y, x in chunk])
            out = self._forward(batch)
            for (y, x), logits in zip(chunk, out):
                logits = self._restore(logits, (wh, ww), (wh, ww)).float()
                if acc is None:
                    acc = torch.zeros((logits.shape[0], ph, pw), device=view.device, dtype=torch.float32)
                elif logits.shape[0] != acc.shape[0]:
                    raise ValueError(f"the model returned {logits.shape[0]} classes for one window and {acc.shape[0]} for another")
                acc[:, y: y + wh, x: x + ww] += logits * weights
                norm[y: y + wh, x: x + ww] += weights
        return (acc / norm)[:, :h, :w]

    def _finish(self, probs, original, return_probs):
        from .crf import crf_refine

        probs_np = probs.float().cpu().numpy()
        if self.crf is not None:
            labels, refined = crf_refine(original, probs=np.ascontiguousarray(probs_np), params=self.crf, return_probs=True)
            return PipelineOutput(labels, refined if return_probs else None)
        labels = probs_np.argmax(axis=0).astype(np.int64)
        return PipelineOutput(labels, probs_np if return_probs else None)
