"""crf_refine over a batch (batch=True): equal to one call per image, on every path."""
import numpy as np
import pytest
import torch

import segpost
from segpost.crf import mean_field
from segpost.crf.refine import _crf_refine
from segpost.lattice.cuda import CudaLattice
from test_device_path import FakeCudaExtension, photo

PARAMS = segpost.CRFParams.deeplab().replace(iterations=3)


def _batch(b=3, h=24, w=32, classes=4, stride=4, seed=0):
    rng = np.random.default_rng(seed)
    images = np.stack([photo(h, w, 20 * i) for i in range(b)])
    logits = (rng.normal(size=(b, classes, -(-h // stride), -(-w // stride))) * 3).astype(np.float32)
    return images, logits


def _singles(images, logits, **kwargs):
    results = [segpost.crf_refine(image, scores, params=PARAMS, return_probs=True, **kwargs)
               for image, scores in zip(images, logits)]
    return np.stack([r[0] for r in results]), np.stack([r[1] for r in results])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_batch_equals_one_call_per_image_on_the_cpu(as_tensor):
    images, logits = _batch()
    want_labels, want_probs = _singles(images, logits)
    if as_tensor:
        labels, probs = segpost.crf_refine(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(logits),
                                           params=PARAMS, return_probs=True, batch=True)
        assert isinstance(labels, torch.Tensor) and isinstance(probs, torch.Tensor)
        labels, probs = labels.numpy(), probs.numpy()
    else:
        labels, probs = segpost.crf_refine(images, logits, params=PARAMS, return_probs=True, batch=True)
    assert labels.shape == (3, 24, 32) and probs.shape == (3, 4, 24, 32)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_array_equal(probs, want_probs)
    np.testing.assert_array_equal(segpost.crf_refine(images, logits, params=PARAMS, batch=True), want_labels)


def test_batch_on_the_device_path_is_one_mean_field_equal_to_single_images(monkeypatch):
    # The device path on the CPU, its lattice the CUDA interface (emulated): one lattice per kernel for the
    # whole batch, as the CUDA build makes it, gives each image's single result.
    images, logits = _batch(b=3)
    tensor_images, tensor_logits = torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(logits)
    cpu = torch.device("cpu")
    singles = [_crf_refine(image, scores, None, PARAMS, 3, False, True, False, device=cpu)
               for image, scores in zip(tensor_images, tensor_logits)]
    extension = FakeCudaExtension()
    monkeypatch.setattr(mean_field, "lattice_for", lambda features, compiled=True, images=1: CudaLattice(
        features, extension, images=images))
    labels, probs = _crf_refine(tensor_images, tensor_logits, None, PARAMS, 3, False, True, False, device=cpu,
                                batch=True)
    assert extension.builds == [(3 * 24 * 32, 24 * 32)] * 2  # one build per kernel, for the batch
    for b, (want_labels, want_probs) in enumerate(singles):
        assert (labels[b] == want_labels).float().mean() >= 0.995
        torch.testing.assert_close(probs[b], want_probs, atol=2e-3, rtol=0)


def test_batch_of_volumes():
    rng = np.random.default_rng(3)
    scans = rng.normal(40, 15, size=(2, 4, 16, 16)).astype(np.float32)
    logits = rng.normal(size=(2, 3, 4, 8, 8)).astype(np.float32)
    labels = segpost.crf_refine(scans, logits, params="ct", spacing=(3, 1, 1), batch=True)
    assert labels.shape == (2, 4, 16, 16)
    for b in range(2):
        np.testing.assert_array_equal(labels[b], segpost.crf_refine(scans[b], logits[b], params="ct",
                                                                    spacing=(3, 1, 1)))


def test_empty_batch_and_bad_batches():
    images, logits = _batch()
    labels, probs = segpost.crf_refine(images[:0], logits[:0], return_probs=True, batch=True)
    assert labels.shape == (0, 24, 32) and probs.shape == (0, 4, 24, 32)
    empty = segpost.crf_refine(torch.from_numpy(images[:0]).permute(0, 3, 1, 2), torch.from_numpy(logits[:0]),
                               batch=True)
    assert isinstance(empty, torch.Tensor) and empty.shape == (0, 24, 32)
    with pytest.raises(ValueError, match="one image per"):
        segpost.crf_refine(images[:2], logits, batch=True)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        segpost.crf_refine(images, logits[0], batch=True)
    # Without batch=True, 4-D scores are a volume's: the error says what to pass.
    with pytest.raises(ValueError, match="batch=True"):
        segpost.crf_refine(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(logits))
    # Each image is checked as alone (here: one is ImageNet-normalised).
    bad = images.astype(np.float32) / 255
    bad[1] -= 0.5
    with pytest.raises(ValueError, match="ImageNet-normalised"):
        segpost.crf_refine(bad, logits, batch=True)
