"""Pipeline, evaluate, tune_crf and linear_to_conv1x1 with small real torch models (no downloads)."""
import numpy as np
import pytest
import torch
from skimage import data
from torch.utils.data import DataLoader

import segpost
from segpost import Pipeline, SegMetrics, evaluate, mask_queries_to_logits, tune_crf
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


# --- what a user's real model and eval loop hand a Pipeline (each once gave a wrong answer) -----------------

class BatchNormNet(torch.nn.Module):
    """Conv, BatchNorm, Dropout: train mode changes the answer and the running statistics."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU(), torch.nn.Dropout2d(0.5))
        self.head = torch.nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return self.head(self.body(x))


class CountingModel(torch.nn.Module):
    """A 1x1 conv that records the batch size of every forward pass."""

    def __init__(self, classes=4, multiple=1):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, classes, 1)
        self.batches, self.multiple = [], multiple

    def forward(self, x):
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise RuntimeError(f"input {tuple(x.shape)} is not a multiple of {self.multiple}")
        self.batches.append(x.shape[0])
        return self.conv(x)


def test_pipeline_runs_in_eval_mode_and_restores_each_modules_mode():
    model = BatchNormNet()
    model.train()
    model.body[1].eval()  # a user's frozen BatchNorm inside a training model
    stats = model.body[1].running_mean.clone()
    pipe = Pipeline(model)
    first = pipe(image(48, 64), return_probs=True).probs
    second = pipe(image(48, 64), return_probs=True).probs
    np.testing.assert_array_equal(first, second)  # no dropout, no statistics update
    assert torch.equal(model.body[1].running_mean, stats)
    assert model.training and model.body[3].training and not model.body[1].training
    model.eval()
    np.testing.assert_allclose(Pipeline(model)(image(48, 64), return_probs=True).probs, first, atol=1e-6)


def test_views_and_images_batched_equal_one_by_one():
    model = CountingModel()
    one = Pipeline(model, scales=(0.5, 1.0), flip=True)
    many = Pipeline(model, scales=(0.5, 1.0), flip=True, batch_size=4)
    images = [image(48, 64), image(48, 64)[::-1].copy(), image(40, 50)]
    model.batches.clear()
    expected = [one(im, return_probs=True).probs for im in images]
    assert model.batches == [1] * 12
    model.batches.clear()
    got = many.predict_batch(images, return_probs=True)
    # scale 0.5 of the two 48x64 images and their flips: one pass of 4; the same at scale 1; the 40x50 image
    # makes two passes of 2 (an image and its flip at each scale)
    assert sorted(model.batches) == [2, 2, 4, 4]
    for out, want in zip(got, expected):
        np.testing.assert_allclose(out.probs, want, atol=1e-6)
    stacked = torch.from_numpy(np.stack(images[:2])).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
    for out, want in zip(many.predict_batch(stacked, return_probs=True), expected):
        np.testing.assert_allclose(out.probs, want, atol=1e-6)


def test_images_of_sizes_that_pad_alike_batch_apart():
    # 45x61 and 47x63 both pad to 48x64 with size_divisor=16: their views have different sizes and must
    # not be stacked into one batch.
    model = CountingModel(multiple=16)
    images = [image(45, 61), image(47, 63)]
    one = [Pipeline(model, size_divisor=16)(im, return_probs=True).probs for im in images]
    got = Pipeline(model, size_divisor=16, batch_size=4, flip=True).predict_batch(images, return_probs=True)
    flipped = [Pipeline(model, size_divisor=16, flip=True)(im, return_probs=True).probs for im in images]
    for out, want in zip(got, flipped):
        np.testing.assert_allclose(out.probs, want, atol=1e-6)
    assert one[0].shape == (4, 45, 61)


def test_size_divisor_pads_sliding_windows_too():
    model = CountingModel(multiple=8)
    img = image(45, 61)
    whole = Pipeline(model, size_divisor=8)(img, return_probs=True).probs
    windowed = Pipeline(model, window=(20, 28), size_divisor=8, batch_size=3)(img, return_probs=True).probs
    np.testing.assert_allclose(windowed, whole, atol=1e-5)  # a pointwise model: windows change nothing
    with pytest.raises(RuntimeError, match="multiple of 8"):
        Pipeline(model, window=(20, 28))(img)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_model_dtype_inputs_are_cast(dtype):
    model = CountingModel()
    expected = Pipeline(model)(image(48, 64), return_probs=True).probs
    out = Pipeline(CountingModel().to(dtype))(image(48, 64), return_probs=True)
    assert out.probs.dtype == np.float32
    np.testing.assert_allclose(out.probs, expected, atol=0.02 if dtype != torch.float64 else 1e-6)


def test_mask_queries_to_logits_gives_transformers_semantic_argmax():
    # transformers' post_process_semantic_segmentation (Mask2Former), transcribed: softmax over classes
    # dropping the last ("no object"), sigmoid masks, einsum over queries, argmax over classes.
    rng = torch.Generator().manual_seed(0)
    class_logits, mask_logits = torch.randn(2, 7, 5, generator=rng), torch.randn(2, 7, 12, 16, generator=rng)
    reference = torch.einsum("bqc,bqhw->bchw", class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid())
    out = {"class_queries_logits": class_logits, "masks_queries_logits": mask_logits}
    logits = mask_queries_to_logits(out)
    assert logits.shape == (2, 4, 12, 16)
    assert torch.equal(logits.argmax(1), reference.argmax(1))
    torch.testing.assert_close(logits.softmax(1), reference / reference.sum(1, keepdim=True))

    class Mask2FormerLike(torch.nn.Module):
        def forward(self, x):
            n = x.shape[0]
            return {"class_queries_logits": class_logits[:1].expand(n, -1, -1),
                    "masks_queries_logits": mask_logits[:1].expand(n, -1, -1, -1)}

    labels = Pipeline(Mask2FormerLike(), output=mask_queries_to_logits)(image(12, 16)).labels
    np.testing.assert_array_equal(labels, reference[0].argmax(0).numpy())


def test_output_option_takes_a_key_or_a_callable():
    base = CountingModel()
    expected = Pipeline(base)(image(48, 64)).labels
    np.testing.assert_array_equal(Pipeline(lambda x: {"seg": base(x)}, output="seg")(image(48, 64)).labels, expected)
    np.testing.assert_array_equal(Pipeline(lambda x: [base(x) * 2], output=lambda o: o[0] / 2)(image(48, 64)).labels,
                                  expected)
    np.testing.assert_array_equal(Pipeline(lambda x: {"logits": base(x)})(image(48, 64)).labels, expected)


# --- evaluate over a user's DataLoader ----------------------------------------------------------------------

class Samples(torch.utils.data.Dataset):
    """(3, H, W) float images in [0, 1] with (H, W) targets, as torchvision-style datasets give them."""

    def __init__(self, n=7, as_dict=False):
        rng = np.random.default_rng(0)
        self.items = [(torch.from_numpy(image(24, 32).copy()).permute(2, 0, 1).float() / 255,
                       torch.from_numpy(rng.integers(0, 3, size=(24, 32)))) for _ in range(n)]
        self.as_dict = as_dict

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        img, target = self.items[i]
        return {"pixel_values": img, "labels": target} if self.as_dict else (img, target)


def test_evaluate_over_a_batched_dataloader_with_workers_counts_each_sample_once():
    pipe = Pipeline(CountingModel(classes=3), flip=True, batch_size=4)
    dataset = Samples()
    expected = SegMetrics(3)
    for img, target in dataset:
        expected.update(pipe(img).labels, target)
    for batch_size, workers in ((3, 2), (1, 0), (None, 0)):
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
        result = evaluate(pipe, loader, num_classes=3, progress=False, per_image=True)
        np.testing.assert_array_equal(result.confusion, expected.confusion)
        assert result.num_images == 7
    dict_loader = DataLoader(Samples(as_dict=True), batch_size=4)
    result = evaluate(pipe, dict_loader, num_classes=3, image_key="pixel_values", target_key="labels", progress=False)
    np.testing.assert_array_equal(result.confusion, expected.confusion)
    with pytest.raises(ValueError, match="image_key="):
        evaluate(pipe, dict_loader, num_classes=3, progress=False)
    numpy_images = [(image(24, 32), t.numpy()) for _, t in dataset.items]  # collated into (B, H, W, 3) tensors
    result = evaluate(pipe, DataLoader(numpy_images, batch_size=3), num_classes=3, progress=False)
    np.testing.assert_array_equal(result.confusion, expected.confusion)
