"""Pipeline, evaluate, tune_crf and linear_to_conv1x1 with small real torch models (no downloads)."""
import numpy as np
import pytest
import torch
from skimage import data

import segpost
from segpost import Pipeline, evaluate, tune_crf
from segpost.nn import linear_to_conv1x1


class ColourNet(torch.nn.Module):
    """A small real segmentation net: two strided convs (output stride 4), then a 1x1 classifier."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        )
        self.head = torch.nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return {"out": self.head(self.body(x)), "aux": None}


def pointwise_model(classes=4):
    """A 1x1 conv: translation- and flip-equivariant, so windows and flips must change nothing."""
    torch.manual_seed(1)
    return torch.nn.Conv2d(3, classes, 1)


def image(h=96, w=128):
    return data.astronaut()[100:100 + h, 150:150 + w]


def plain_probs(model, img):
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(segpost.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(segpost.IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        logits = model(((x - mean) / std)[None])
    logits = logits["out"] if isinstance(logits, dict) else logits
    logits = torch.nn.functional.interpolate(logits, size=img.shape[:2], mode="bilinear", align_corners=False)
    return torch.softmax(logits[0], 0).numpy()


def test_plain_forward_equals_single_scale_without_flip():
    model, img = ColourNet(), image()
    out = Pipeline(model)(img, return_probs=True)
    np.testing.assert_allclose(out.probs, plain_probs(model, img), atol=1e-6)
    np.testing.assert_array_equal(out.labels, out.probs.argmax(0))


def test_window_covering_the_whole_image_equals_whole_image_inference():
    model, img = ColourNet(), image()
    whole = Pipeline(model)(img, return_probs=True)
    windowed = Pipeline(model, window=img.shape[:2])(img, return_probs=True)
    np.testing.assert_allclose(windowed.probs, whole.probs, atol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("window", [32, (40, 56), 200])
def test_sliding_windows_agree_with_whole_image_for_an_equivariant_model(blend, window):
    model, img = pointwise_model(), image()
    whole = Pipeline(model)(img, return_probs=True)
    windowed = Pipeline(model, window=window, blend=blend, overlap=0.25, batch_size=3)(img, return_probs=True)
    np.testing.assert_allclose(windowed.probs, whole.probs, atol=1e-5)
    np.testing.assert_array_equal(windowed.labels, whole.labels)


def test_flip_tta_on_a_flip_equivariant_model_changes_nothing():
    model, img = pointwise_model(), image()
    plain = Pipeline(model)(img, return_probs=True)
    flipped = Pipeline(model, flip=True)(img, return_probs=True)
    np.testing.assert_allclose(flipped.probs, plain.probs, atol=1e-6)


def test_multiscale_flip_windows_and_crf_run_on_a_photo():
    model, img = ColourNet(), image(150, 201)
    pipe = Pipeline(model, scales=(0.5, 0.75, 1.0, 1.25), flip=True, window=96, overlap=1 / 3, crf="deeplab",
                    size_divisor=4, batch_size=4)
    out = pipe(img, return_probs=True)
    assert out.labels.shape == (150, 201) and out.labels.dtype == np.int64
    assert out.probs.shape == (3, 150, 201)
    np.testing.assert_allclose(out.probs.sum(0), 1, rtol=1e-5)
    merged_logits = Pipeline(model, scales=(0.5, 1.0), merge="logits", align_corners=True)(img, return_probs=True)
    assert merged_logits.probs.shape == (3, 150, 201)


def test_odd_sizes_come_back_exactly():
    model = ColourNet()
    for h, w in ((1, 1), (7, 9), (33, 17)):
        img = (np.random.default_rng(h).random((h, w, 3)) * 255).astype(np.uint8)
        assert Pipeline(model, scales=(0.5, 1.5), flip=True)(img).labels.shape == (h, w)
        assert Pipeline(model, window=8)(img).labels.shape == (h, w)


def test_model_output_kinds_and_torch_images():
    base, img = pointwise_model(), image(32, 48)
    expected = Pipeline(base)(img).labels

    class TupleModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = base

        def forward(self, x):
            return self.inner(x), torch.zeros(1)

    assert (Pipeline(TupleModel())(img).labels == expected).all()
    assert (Pipeline(lambda x: {"out": base(x)})(img).labels == expected).all()
    tensor_img = torch.from_numpy(img).permute(2, 0, 1)
    assert (Pipeline(base)(tensor_img).labels == expected).all()
    assert (Pipeline(base)(tensor_img.float() / 255).labels == expected).all()
    outs = Pipeline(base).predict_batch([img, img])
    assert len(outs) == 2 and (outs[1].labels == expected).all()


def test_linear_to_conv1x1_gives_identical_logits_everywhere():
    torch.manual_seed(0)
    fc = torch.nn.Linear(16, 5)
    conv = linear_to_conv1x1(fc)
    feats = torch.randn(3, 16, 7, 9)
    with torch.no_grad():
        expected = fc(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert torch.allclose(conv(feats), expected, atol=1e-6)
    with pytest.raises(TypeError):
        linear_to_conv1x1(torch.nn.Conv2d(1, 1, 1))


def test_evaluate_end_to_end():
    model = ColourNet()
    rng = np.random.default_rng(0)
    dataset = [(image(40, 60), rng.integers(0, 3, size=(40, 60))) for _ in range(3)]
    pipe = Pipeline(model)
    result = evaluate(pipe, dataset, num_classes=3, progress=False, per_image=True)
    expected = segpost.SegMetrics(3)
    for img, target in dataset:
        expected.update(pipe(img).labels, target)
    np.testing.assert_array_equal(result.confusion, expected.confusion)
    assert result.num_images == 3


def test_tune_crf_end_to_end():
    image_ = data.astronaut()[:64, :64]
    truth = (image_.mean(axis=2) > 100).astype(np.int64)
    coarse = np.stack([1 - truth, truth]).astype(np.float32).reshape(2, 8, 8, 8, 8).mean(axis=(2, 4))
    probs = np.clip(coarse, 0.05, 0.95)
    probs = (probs / probs.sum(0)).astype(np.float32)
    best, table = tune_crf([image_], [probs], [truth], grid={"bi_weight": (0, 5), "bi_rgb": (3, 13)}, progress=False)
    assert len(table) == 4 and table[0]["score"] >= table[-1]["score"]
    assert isinstance(best, segpost.CRFParams) and best.bi_weight == table[0]["bi_weight"]
    with pytest.raises(ValueError, match="unknown"):
        tune_crf([image_], [probs], [truth], grid={"sxy": (1,)})


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Pipeline(pointwise_model())(np.zeros((8, 8, 4), np.uint8)), "channels"),
        (lambda: Pipeline(pointwise_model())(np.zeros((0, 8, 3), np.uint8)), "empty"),
        (lambda: Pipeline(pointwise_model())(np.zeros((8, 8), np.uint8)), r"\(H, W, C\)"),
        (lambda: Pipeline(pointwise_model())(np.full((8, 8, 3), 3.0)), r"\[0, 1\]"),
        (lambda: Pipeline(pointwise_model(), window=0), "window"),
        (lambda: Pipeline(pointwise_model(), window=(8, -1)), "window"),
        (lambda: Pipeline(pointwise_model(), overlap=1.0), "overlap"),
        (lambda: Pipeline(pointwise_model(), scales=()), "scales"),
        (lambda: Pipeline(pointwise_model(), merge="mean"), "merge"),
        (lambda: Pipeline(pointwise_model(), crf="strong"), "preset"),
        (lambda: Pipeline(lambda x: torch.zeros(x.shape[0], 2 + x.shape[-1] % 2, 4, 4), scales=(1.0, 0.5))(
            np.zeros((16, 15, 3), np.uint8)), "classes"),
        (lambda: Pipeline(lambda x: {"scores": x})(np.zeros((8, 8, 3), np.uint8)), r"keys \['scores'\].*output="),
        (lambda: Pipeline(lambda x: {"scores": x}, output="probabilities")(np.zeros((8, 8, 3), np.uint8)),
         "no 'probabilities'"),
        (lambda: Pipeline(lambda x: {"class_queries_logits": x, "masks_queries_logits": x})(
            np.zeros((8, 8, 3), np.uint8)), "mask_queries_to_logits"),
        (lambda: Pipeline(pointwise_model(), output=3), "output must be"),
        (lambda: Pipeline(pointwise_model())(np.full((8, 8, 3), 300, np.int64)), "0..255"),
        (lambda: Pipeline(pointwise_model())(np.full((8, 8, 3), -0.5, np.float32)), "ImageNet-normalised"),
        (lambda: Pipeline(pointwise_model()).predict_batch(np.zeros((8, 8, 3), np.uint8)), "4-D"),
        (lambda: Pipeline(lambda x: x[:, 0])(np.zeros((8, 8, 3), np.uint8)), r"\(B, C, h, w\)"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
