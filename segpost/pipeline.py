"""DeepLab-style inference around any PyTorch model: test-time augmentation,
sliding windows, exact restoration to the original size, optional CRF."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from collections.abc import Mapping

import numpy as np

from ._validation import check_int, is_torch_tensor, tensor_intensity_scale, two_class_scores
from .upsample import deeplab_size, pad_to_multiple

__all__ = ["Pipeline", "PipelineOutput", "mask_queries_to_logits", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class PipelineOutput:
    """What :class:`Pipeline` returns for one image.

    Attributes
    ----------
    labels : (H, W) int64 ndarray
        At the image's original size.
    probs : (C, H, W) float32 ndarray or None
        The merged (and, with ``crf=``, refined) probabilities, with
        ``return_probs=True``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from segpost import Pipeline
    >>> out = Pipeline(torch.nn.Conv2d(3, 2, 1))(np.zeros((4, 6, 3), np.uint8), return_probs=True)
    >>> out.labels.shape, out.probs.shape
    ((4, 6), (2, 4, 6))
    """

    labels: np.ndarray
    probs: np.ndarray | None = None


def _model_logits(output, output_option=None):
    """The logits tensor of a model's output.

    A tensor; a dict/Mapping with ``"out"`` (torchvision) or ``"logits"``
    (transformers' ModelOutput); a tuple or list (its first item); or what
    ``output_option`` picks: a key (or attribute) name, or a callable.
    """
    import torch

    if output_option is not None:
        if callable(output_option):
            picked = output_option(output)
        elif isinstance(output, Mapping) and output_option in output:
            picked = output[output_option]
        elif hasattr(output, output_option):
            picked = getattr(output, output_option)
        else:
            keys = list(output) if isinstance(output, Mapping) else []
            raise ValueError(f"the model's output has no {output_option!r} (output=); its keys: {keys}")
        if not isinstance(picked, torch.Tensor):
            raise TypeError(f"output={output_option!r} gave {type(picked).__name__}, expected a (B, C, h, w) tensor")
        return picked
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("out", "logits"):
            if key in output:
                return _model_logits(output[key])
        keys = list(output)
        if "class_queries_logits" in output and "masks_queries_logits" in output:
            hint = "a mask-classification model (MaskFormer, Mask2Former): pass output=segpost.mask_queries_to_logits"
        else:
            hint = "pass output='<key>' or output=<callable returning the logits tensor>"
        raise ValueError(f"the model returned a {type(output).__name__} with keys {keys} and none of 'out' "
                         f"(torchvision) or 'logits' (transformers): {hint}")
    if isinstance(output, (tuple, list)) and output:
        return _model_logits(output[0])
    raise TypeError(f"the model returned {type(output).__name__}; expected a tensor, a dict with 'out' or 'logits', "
                    f"or a tuple; pass output=<key or callable> to pick the logits")


def mask_queries_to_logits(output):
    """Per-pixel class scores of a mask-classification model (MaskFormer, Mask2Former, OneFormer), as logits.

    The semantic scores of transformers' ``post_process_semantic_segmentation``:
    each query's class probabilities (softmax over C + 1, the last being "no
    object", dropped) weigh its mask probabilities (sigmoid), summed over
    queries: ``score[b, c] = sum_q p(c | q) sigmoid(mask_q)``. Returned as
    ``log(score / sum_c score)``, so that a softmax (what :class:`Pipeline`
    applies) gives the scores normalised over classes and the argmax is the
    reference's. (B, C, h, w) at the masks' resolution (a quarter of the
    input for Mask2Former); Pipeline upsamples these log-scores, transformers
    the scores, so labels may differ at a few boundary pixels.

    Parameters
    ----------
    output : Mapping or object
        With ``class_queries_logits`` (B, Q, C + 1) and
        ``masks_queries_logits`` (B, Q, h, w).

    Returns
    -------
    (B, C, h, w) float32 torch.Tensor

    Examples
    --------
    >>> import torch
    >>> from segpost import Pipeline, mask_queries_to_logits
    >>> out = {"class_queries_logits": torch.randn(1, 5, 4), "masks_queries_logits": torch.randn(1, 5, 8, 8)}
    >>> mask_queries_to_logits(out).shape
    torch.Size([1, 3, 8, 8])
    >>> # pipe = Pipeline(mask2former_model, output=mask_queries_to_logits)
    """
    import torch

    def field(name):
        return output[name] if isinstance(output, Mapping) else getattr(output, name)

    class_logits, mask_logits = field("class_queries_logits"), field("masks_queries_logits")
    class_probs = class_logits.float().softmax(-1)[..., :-1]
    scores = torch.einsum("bqc,bqhw->bchw", class_probs, mask_logits.float().sigmoid())
    tiny = torch.finfo(scores.dtype).tiny
    return scores.clamp_min(tiny).log() - scores.sum(1, keepdim=True).clamp_min(tiny).log()


@contextlib.contextmanager
def _eval_mode(model):
    """Every submodule of ``model`` in eval mode inside, each restored to its own mode afterwards."""
    import torch

    if not isinstance(model, torch.nn.Module):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _image_to_unit_range(t):
    """A (C, H, W) tensor as float32 in [0, 1], by segpost's one intensity rule (``intensity_scale``)."""
    values, scale = tensor_intensity_scale(t)
    return values * (scale / 255)


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
        output stride: a tensor, a dict with ``"out"`` (torchvision), a
        ModelOutput or dict with ``"logits"`` (transformers), or a tuple
        (first item); ``output=`` picks anything else. One channel (a sigmoid
        model) means two classes: logits z become [0, z], whose softmax is
        [1 - sigmoid(z), sigmoid(z)].
    output : str or callable, keyword-only, optional
        The key (or attribute) of the model's output holding the logits, or a
        function from the output to a (B, C, h, w) tensor (for mask
        classification models: :func:`mask_queries_to_logits`).
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
        Pad each view and each window (bottom/right) to a multiple of this (a
        model's output stride); the padding is cropped from the logits.
    crf : CRFParams, "deeplab", "pydensecrf" or dict, keyword-only, optional
        Refine the merged probabilities with :func:`segpost.crf_refine`.
    device : str or torch.device, keyword-only, optional
        Where to run the model; by default the device of its parameters.
    batch_size : int, keyword-only, default 1
        Inputs per forward pass: views of one size (an image and its flip, a
        scale of several images in ``predict_batch``) and windows are stacked
        up to this many.

    Notes
    -----
    Every view records its scale, flip, padding and the original size and is
    restored exactly, in this order: upsample the logits to the padded input
    size, crop the padding, unflip, resize to the original size, softmax,
    merge, CRF, argmax.

    On every call a ``torch.nn.Module`` runs in eval mode under
    ``torch.inference_mode``, each submodule put back in its own mode
    afterwards (so a validation call inside a training loop neither updates
    BatchNorm statistics nor leaves the model in eval mode). A plain callable
    (``lambda x: model(x).logits``) is called as it is: its model's mode is
    the caller's responsibility; prefer ``Pipeline(model, output="logits")``.
    Inputs are cast to the dtype of the model's first floating-point
    parameter (half and bfloat16 models); outputs are read as float32.

    Images follow segpost's one intensity rule: integers hold 0..255 whatever
    their dtype, floats [0, 1].

    Examples
    --------
    >>> import torch
    >>> from skimage import data
    >>> from segpost import Pipeline
    >>> model = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)
    >>> pipe = Pipeline(model, scales=(0.5, 1.0), flip=True, batch_size=2)
    >>> out = pipe(data.astronaut()[:64, :96], return_probs=True)
    >>> out.labels.shape, out.probs.shape
    ((64, 96), (4, 64, 96))
    """

    def __init__(self, model, *, output=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, scales=(1.0,), flip=False,
                 window=None, overlap=1 / 3, blend="gaussian", merge="probs", align_corners=False, size_divisor=None,
                 crf=None, device=None, batch_size=1):
        import torch

        from .crf import CRFParams

        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
        if output is not None and not callable(output) and not isinstance(output, str):
            raise TypeError(f"output must be a key (str) or a callable, got {type(output).__name__}")
        self.model = model
        self.output = output
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
            model.to(self.device)

    # ----------------------------------------------------------------- public

    def __call__(self, image, *, return_probs=False) -> PipelineOutput:
        """Predict one image: numpy (H, W, 3) or torch (3, H, W); integers 0..255 or floats in [0, 1].

        A torch image whose first axis is not 3 but whose last is, as a
        DataLoader collates numpy images, is read as (H, W, 3).
        """
        return self.predict_batch([image], return_probs=return_probs)[0]

    def predict_batch(self, images, *, return_probs=False):
        """Predict several images: a list, a (B, H, W, 3) array or a (B, 3, H, W) tensor.

        Views of the same size across the images (each scale of equal-sized
        images, and their flips) share forward passes of up to ``batch_size``.
        Returns a list of PipelineOutput, one per image.
        """
        import torch

        if (isinstance(images, np.ndarray) or is_torch_tensor(images)) and images.ndim != 4:
            raise ValueError(f"a batch of images must be 4-D, got shape {tuple(images.shape)}")
        with torch.inference_mode(), _eval_mode(self.model):
            prepared = [self._to_tensor(image) for image in images]
            merged = self._predict([tensor for tensor, _ in prepared])
            return [self._finish(probs, original, return_probs) for probs, (_, original) in zip(merged, prepared)]

    # --------------------------------------------------------------- internals

    def _to_tensor(self, image):
        """(C, H, W) float32 in [0, 1] on the device, and the image as (H, W, C) uint8 if the CRF needs it."""
        import torch

        if is_torch_tensor(image):
            t = image.detach()
            if t.ndim != 3:
                raise ValueError(f"a torch image must be (C, H, W), got shape {tuple(t.shape)}")
            channels = self.mean.numel()
            if t.shape[0] != channels and t.shape[-1] == channels:
                # (H, W, C): what a DataLoader's collate makes of numpy images
                t = t.permute(2, 0, 1)
        else:
            arr = np.asarray(image)
            if arr.ndim != 3 or arr.dtype.kind not in "buif":
                raise ValueError(f"a numpy image must be (H, W, C) numeric, got shape {arr.shape} and dtype {arr.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        c, h, w = t.shape
        if c != self.mean.numel():
            raise ValueError(f"the image has {c} channels but mean/std have {self.mean.numel()}")
        if h == 0 or w == 0:
            raise ValueError(f"the image is empty: {h}x{w}")
        t = _image_to_unit_range(t)
        original = None
        t = t.to(self.device)
        if self.crf is not None:  # the image the CRF sees, where it runs: a (C, H, W) tensor on a GPU
            original = (t.clamp(0, 1) * 255).round().to(torch.uint8)
            if self.device.type == "cpu":
                original = original.permute(1, 2, 0).numpy()
        return t, original

    def _view_size(self, h, w, scale):
        if scale == 1.0:
            return h, w
        if self.align_corners:
            return deeplab_size(h, scale), deeplab_size(w, scale)
        return max(1, int(round(h * scale))), max(1, int(round(w * scale)))

    def _views(self, images):
        """Every (image index, scale, flip) view, grouped by the size it is run at (stable order within a size)."""
        views = {}
        for index, image in enumerate(images):
            _, h, w = image.shape
            for scale in self.scales:
                size = self._view_size(h, w, scale)
                key = size if self.window is None else ("window", index, scale)  # views stack by exact size
                for flipped in ((False, True) if self.flip else (False,)):
                    views.setdefault(key, []).append((index, size, flipped))
        return list(views.values())

    def _scaled_view(self, image, size):
        """A [0, 1] (C, H, W) image normalised and resized to ``size`` (a view before any flip)."""
        import torch.nn.functional as F

        normalised = (image - self.mean.to(image.device)) / self.std.to(image.device)
        if size != tuple(image.shape[-2:]):
            normalised = F.interpolate(normalised[None], size=size, mode="bilinear",
                                       align_corners=self.align_corners)[0]
        return normalised

    def _predict(self, images):
        """Merged (C, H, W) probabilities of each image over all its views."""
        import torch
        import torch.nn.functional as F

        totals, counts = [None] * len(images), [0] * len(images)
        step = self.batch_size if self.window is None else 1  # windows batch inside _windowed_view
        for group in self._views(images):
            scaled = None  # (index, view): an image's flip follows it in its group, and reuses its scaled view
            for start in range(0, len(group), step):
                chunk = group[start: start + step]
                inputs = []
                for index, size, flipped in chunk:
                    if scaled is None or scaled[0] != index:
                        scaled = (index, self._scaled_view(images[index], size))
                    inputs.append(scaled[1].flip(-1) if flipped else scaled[1])
                if self.window is None:
                    outputs = self._whole_views(inputs)
                else:
                    outputs = [self._windowed_view(view) for view in inputs]
                for (index, size, flipped), logits in zip(chunk, outputs):
                    if flipped:
                        logits = logits.flip(-1)
                    h, w = images[index].shape[-2:]
                    if logits.shape[-2:] != (h, w):
                        logits = F.interpolate(logits[None], size=(h, w), mode="bilinear",
                                               align_corners=self.align_corners)[0]
                    if totals[index] is not None and logits.shape[0] != totals[index].shape[0]:
                        raise ValueError(f"the model returned {logits.shape[0]} classes for one view and "
                                         f"{totals[index].shape[0]} for another")
                    contribution = logits if self.merge == "logits" else torch.softmax(logits, dim=0)
                    totals[index] = contribution if totals[index] is None else totals[index] + contribution
                    counts[index] += 1
        merged = [total / count for total, count in zip(totals, counts)]
        return [torch.softmax(m, dim=0) if self.merge == "logits" else m for m in merged]

    def _model_dtype(self):
        import torch

        if isinstance(self.model, torch.nn.Module):
            for param in self.model.parameters():
                if param.is_floating_point():
                    return param.dtype
        return torch.float32

    def _forward(self, batch):
        """(B, C, h', w') float32 logits of a (B, 3, h, w) batch; one channel becomes two classes."""
        import torch

        out = _model_logits(self.model(batch.to(self._model_dtype())), self.output)
        if out.ndim != 4 or out.shape[0] != batch.shape[0]:
            raise ValueError(f"the model must return (B, C, h, w) logits, got shape {tuple(out.shape)}")
        out = out.float()
        if not bool(torch.isfinite(out).all()):
            raise ValueError("the model returned NaN or infinite logits")
        if out.shape[1] == 1:
            out = two_class_scores(out.transpose(0, 1), probabilities=False).transpose(0, 1)
        return out

    def _restore(self, logits, padded_size, valid_size):
        """Upsample a view's logits to its padded input size, then crop the padding."""
        import torch.nn.functional as F

        if logits.shape[-2:] != padded_size:
            logits = F.interpolate(logits[None], size=padded_size, mode="bilinear", align_corners=self.align_corners)[0]
        return logits[:, : valid_size[0], : valid_size[1]]

    def _run_padded(self, batch):
        """Logits of a (B, 3, h, w) batch padded to ``size_divisor``, restored to (h, w)."""
        h, w = batch.shape[-2:]
        padded, _ = pad_to_multiple(batch, self.size_divisor or 1)
        out = self._forward(padded)
        return [self._restore(logits, tuple(padded.shape[-2:]), (h, w)) for logits in out]

    def _whole_views(self, views):
        """Each view's (C, h, w) logits; the views share one size and one forward pass."""
        import torch

        return self._run_padded(torch.stack(views))

    def _windowed_view(self, view):
        """(C, h, w) logits of one view by sliding windows, batched ``batch_size`` at a time."""
        import torch
        import torch.nn.functional as F

        _, h, w = view.shape
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
            out = self._run_padded(torch.stack([padded[:, y: y + wh, x: x + ww] for y, x in chunk]))
            for (y, x), logits in zip(chunk, out):
                if acc is None:
                    acc = torch.zeros((logits.shape[0], ph, pw), device=view.device, dtype=torch.float32)
                elif logits.shape[0] != acc.shape[0]:
                    raise ValueError(f"the model returned {logits.shape[0]} classes for one window and {acc.shape[0]} for another")
                acc[:, y: y + wh, x: x + ww] += logits * weights
                norm[y: y + wh, x: x + ww] += weights
        return (acc / norm)[:, :h, :w]

    def _finish(self, probs, original, return_probs):
        from .crf import crf_refine

        if self.crf is not None and probs.device.type != "cpu":  # the CRF on the GPU too (crf_refine's device path)
            labels, refined = crf_refine(original, probs=probs.float(), params=self.crf, return_probs=True)
            return PipelineOutput(labels.cpu().numpy(), refined.cpu().numpy() if return_probs else None)
        probs_np = probs.float().cpu().numpy()
        if self.crf is not None:
            labels, refined = crf_refine(original, probs=np.ascontiguousarray(probs_np), params=self.crf, return_probs=True)
            return PipelineOutput(labels, refined if return_probs else None)
        labels = probs_np.argmax(axis=0).astype(np.int64)
        return PipelineOutput(labels, probs_np if return_probs else None)
