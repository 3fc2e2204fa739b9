"""Real architectures from torchvision, transformers and segmentation_models_pytorch, randomly initialised.

Pipeline (TTA, sliding windows, CRF), crf_refine on each model's own logits,
and evaluate() over a batched DataLoader. The libraries are test extras
(`make test` installs them): CI fails when one is missing; elsewhere these
tests skip. torchvision imports next to the CPU torch through conftest's
``_import_torchvision_without_its_c_ops``.
"""

import numpy as np
import pytest
import torch
from skimage import data
from torch.utils.data import DataLoader

from segpost import Pipeline, SegMetrics, crf_refine, evaluate
from oracles import need

NUM_CLASSES = 4



def torchvision_deeplabv3():
    seg = need("torchvision.models.segmentation")
    return seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)


def torchvision_lraspp():
    seg = need("torchvision.models.segmentation")
    return seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)


def transformers_segformer():
    transformers = need("transformers")
    config = transformers.SegformerConfig(num_labels=NUM_CLASSES, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                          num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=32)
    return transformers.SegformerForSemanticSegmentation(config)


def smp_unet():
    smp = need("segmentation_models_pytorch")
    return smp.Unet("resnet18", encoder_weights=None, classes=NUM_CLASSES)


# (name, factory, Pipeline options the architecture needs): smp's U-Net takes multiples of 32.
MODELS = [
    ("torchvision DeepLabV3", torchvision_deeplabv3, {}),
    ("torchvision LRASPP", torchvision_lraspp, {}),
    ("transformers SegFormer", transformers_segformer, {}),
    ("smp Unet", smp_unet, {"size_divisor": 32}),
]


def image(h=72, w=88):
    return data.astronaut()[80:80 + h, 140:140 + w]


def plain_logits(model, img):
    """The model's logits for one image with ImageNet normalisation, at the model's resolution."""
    from segpost import IMAGENET_MEAN, IMAGENET_STD
    from segpost.pipeline import _model_logits
    from segpost.upsample import pad_to_multiple

    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    padded, _ = pad_to_multiple(x, 32)
    model.eval()
    with torch.no_grad():
        return _model_logits(model(padded[None]))[0], padded.shape[-2:]


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def model_case(request):
    name, factory, options = request.param
    torch.manual_seed(0)
    model = factory()
    model.train()  # as a training loop leaves it
    return name, model, options


def test_pipeline_with_tta_windows_and_crf(model_case):
    _, model, options = model_case
    img = image()
    plain = Pipeline(model, **options)(img, return_probs=True)
    assert plain.labels.shape == img.shape[:2] and plain.probs.shape == (NUM_CLASSES, *img.shape[:2])
    np.testing.assert_allclose(plain.probs.sum(0), 1, atol=1e-5)
    assert model.training  # each call restored the training mode
    again = Pipeline(model, **options)(img, return_probs=True)
    np.testing.assert_array_equal(plain.probs, again.probs)  # eval mode: no dropout, no BatchNorm update
    tta = Pipeline(model, scales=(0.75, 1.0), flip=True, batch_size=2, crf="deeplab", **options)(img)
    assert tta.labels.shape == img.shape[:2] and 0 <= tta.labels.min() and tta.labels.max() < NUM_CLASSES
    windows = Pipeline(model, window=64, overlap=0.5, batch_size=4, **options)(img, return_probs=True)
    assert windows.probs.shape == plain.probs.shape


def test_pipeline_output_is_the_models_logits_upsampled(model_case):
    _, model, options = model_case
    img = image(64, 96)  # multiples of 32: no padding to crop
    logits, _ = plain_logits(model, img)
    upsampled = torch.nn.functional.interpolate(logits[None], size=img.shape[:2], mode="bilinear",
                                                align_corners=False)[0]
    out = Pipeline(model, **options)(img, return_probs=True)
    np.testing.assert_allclose(out.probs, torch.softmax(upsampled, 0).numpy(), atol=1e-5)


def test_crf_refine_on_the_models_own_logits(model_case):
    _, model, _ = model_case
    img = image(64, 96)
    logits, _ = plain_logits(model, img)
    labels, probs = crf_refine(img, logits, return_probs=True)
    assert labels.shape == img.shape[:2] and probs.shape == (NUM_CLASSES, *img.shape[:2])
    assert isinstance(labels, torch.Tensor)  # torch scores give torch results


def test_evaluate_over_a_batched_dataloader(model_case):
    _, model, options = model_case
    rng = np.random.default_rng(0)
    samples = [(torch.from_numpy(image(64, 64).copy()).permute(2, 0, 1).float() / 255,
                torch.from_numpy(rng.integers(0, NUM_CLASSES, size=(64, 64)))) for _ in range(5)]
    pipe = Pipeline(model, flip=True, batch_size=2, **options)
    expected = SegMetrics(NUM_CLASSES)
    for img, target in samples:
        expected.update(pipe(img).labels, target)
    result = evaluate(pipe, DataLoader(samples, batch_size=2), num_classes=NUM_CLASSES, progress=False)
    np.testing.assert_array_equal(result.confusion, expected.confusion)
    assert result.confusion.sum() == 5 * 64 * 64
