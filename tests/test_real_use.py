"""What a user's real model and eval loop hand segpost: each case once gave a silently wrong answer."""
import warnings

import numpy as np
import pytest
import torch
from skimage import data
from torch.utils.data import DataLoader

import segpost
from segpost import Pipeline, SegMetrics, crf_refine, evaluate, mask_queries_to_logits
from segpost.nn import DenseCRF


def image(h=48, w=64):
    return data.astronaut()[100:100 + h, 150:150 + w]


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


# ------------------------------------------------------------------ Pipeline


def test_pipeline_runs_in_eval_mode_and_restores_each_modules_mode():
    model = BatchNormNet()
    model.train()
    model.body[1].eval()  # a user's frozen BatchNorm inside a training model
    stats = model.body[1].running_mean.clone()
    pipe = Pipeline(model)
    first = pipe(image(), return_probs=True).probs
    second = pipe(image(), return_probs=True).probs
    np.testing.assert_array_equal(first, second)  # no dropout, no statistics update
    assert torch.equal(model.body[1].running_mean, stats)
    assert model.training and model.body[3].training and not model.body[1].training
    model.eval()
    np.testing.assert_allclose(Pipeline(model)(image(), return_probs=True).probs, first, atol=1e-6)


def test_views_and_images_batched_equal_one_by_one():
    model = CountingModel()
    one = Pipeline(model, scales=(0.5, 1.0), flip=True)
    many = Pipeline(model, scales=(0.5, 1.0), flip=True, batch_size=4)
    images = [image(), image()[::-1].copy(), image(40, 50)]
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
    expected = Pipeline(model)(image(), return_probs=True).probs
    out = Pipeline(CountingModel().to(dtype))(image(), return_probs=True)
    assert out.probs.dtype == np.float32
    np.testing.assert_allclose(out.probs, expected, atol=0.02 if dtype != torch.float64 else 1e-6)


def test_one_channel_logits_are_two_classes_background_and_sigmoid():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 1)
    img = image()
    out = Pipeline(model)(img, return_probs=True)
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(segpost.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(segpost.IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        z = model(((x - mean) / std)[None])[0, 0].numpy()
    assert out.probs.shape == (2, *img.shape[:2])
    np.testing.assert_allclose(out.probs[1], 1 / (1 + np.exp(-z)), atol=1e-6)
    np.testing.assert_array_equal(out.labels, (z > 0).astype(np.int64))
    # crf_refine: one channel of logits z is [0, z]; one channel of probabilities p is [1 - p, p]
    z_small = z[::4, ::4][None].astype(np.float32)
    np.testing.assert_array_equal(crf_refine(img, z_small), crf_refine(img, np.concatenate([0 * z_small, z_small])))
    p = 1 / (1 + np.exp(-z_small))
    np.testing.assert_array_equal(crf_refine(img, probs=p), crf_refine(img, probs=np.concatenate([1 - p, p])))


def test_one_channel_scores_in_metrics_raise_with_the_fix():
    target = np.zeros((2, 8, 8), np.int64)
    with pytest.raises(ValueError, match=r"\(pred > 0\)"):
        SegMetrics(2).update(np.zeros((2, 1, 8, 8), np.float32), target)
    with pytest.raises(ValueError, match=r"\(pred > 0\)"):
        segpost.confusion_matrix(torch.zeros(1, 8, 8), torch.zeros(8, 8, dtype=torch.long), 2)


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
    expected = Pipeline(base)(image()).labels
    np.testing.assert_array_equal(Pipeline(lambda x: {"seg": base(x)}, output="seg")(image()).labels, expected)
    np.testing.assert_array_equal(Pipeline(lambda x: [base(x) * 2], output=lambda o: o[0] / 2)(image()).labels,
                                  expected)
    np.testing.assert_array_equal(Pipeline(lambda x: {"logits": base(x)})(image()).labels, expected)


# ---------------------------------------------------------------- intensities


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.int32])
def test_integer_images_hold_0_to_255_whatever_their_dtype(dtype):
    img = image()
    logits = np.random.default_rng(0).normal(size=(3, 12, 16)).astype(np.float32)
    expected = crf_refine(img, logits)
    np.testing.assert_array_equal(crf_refine(img.astype(dtype), logits), expected)
    np.testing.assert_array_equal(crf_refine(img.astype(np.float32) / 255, logits), expected)
    model = CountingModel()
    np.testing.assert_allclose(Pipeline(model)(img.astype(dtype), return_probs=True).probs,
                               Pipeline(model)(img, return_probs=True).probs, atol=1e-6)


def test_images_outside_the_rule_raise_or_warn():
    logits = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="0..255"):
        crf_refine(np.full((32, 32, 3), 1000, np.uint16), logits)
    with pytest.raises(ValueError, match="ImageNet-normalised"):
        crf_refine(np.full((32, 32, 3), -1.5, np.float32), logits)
    with pytest.warns(UserWarning, match="under 1%"):
        crf_refine(np.ones((32, 32, 3), np.int64), logits)
    with pytest.warns(UserWarning, match="under 1%"):
        Pipeline(CountingModel())(np.ones((32, 32, 3), np.uint8))
    normalised = (torch.rand(1, 3, 8, 8) - torch.tensor(segpost.IMAGENET_MEAN).view(1, 3, 1, 1)) / 0.229
    with pytest.raises(ValueError, match="ImageNet-normalised"):
        DenseCRF(2)(torch.randn(1, 2, 8, 8), normalised)


def test_probabilities_given_as_logits_are_refused_naming_probs():
    rng = np.random.default_rng(0)
    scores = rng.random((3, 8, 8)).astype(np.float32)
    probs = scores / scores.sum(0)
    with pytest.raises(ValueError, match="softmax probabilities; pass them as probs="):
        crf_refine(image(32, 32), probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crf_refine(image(32, 32), np.log(probs))  # real logits: no warning
        crf_refine(image(32, 32), probs=probs)


def test_probabilities_given_as_logits_are_refused_naming_the_cli_option(tmp_path, capsys):
    from segpost.cli import main

    scores = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "p.npy", scores / scores.sum(0))
    from skimage import io

    io.imsave(tmp_path / "i.png", image(32, 32), check_contrast=False)
    assert main(["refine", str(tmp_path / "i.png"), str(tmp_path / "p.npy"), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "pass them as --probs" in err and "probs=" not in err
    assert not (tmp_path / "o.png").exists()


def test_an_rgba_image_warns_naming_the_fix():
    rgba = np.dstack([image(32, 32), np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))])
    logits = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"RGBA picture\? .* pass image\[\.\.\., :3\]"):
        crf_refine(rgba, logits)
    rgba[..., 3] = 255  # a constant alpha separates no two pixels: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crf_refine(rgba, logits)


def test_scores_that_fit_in_two_layouts_warn():
    """(h, w, C) logits with C equal to h on a square image read as (C, h, w): said, with the fix."""
    logits = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    with pytest.warns(UserWarning, match="np.moveaxis"):
        crf_refine(image(128, 128), logits, iterations=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crf_refine(image(128, 128), logits[:5], iterations=1)  # (5, 16, 16): one reading only


@pytest.mark.parametrize("shape, size, warned", [
    ((64, 64), (500, 512), True),     # a 512x512 input's logits stretched over the 500x512 image (12 px off)
    ((63, 64), (500, 512), False),    # cropped to the image's part: one cell of rounding
    ((65, 65), (513, 513), False),    # DeepLab's (n - 1) * 8 + 1
    ((60, 64), (480, 512), False),
])
def test_scores_scaled_unevenly_warn_naming_the_crop(shape, size, warned):
    logits = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crf_refine(np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8), logits, iterations=1)
    messages = [str(w.message) for w in caught]
    assert any("crop the logits" in m for m in messages) == warned, messages


def test_bfloat16_logits_are_converted():
    logits = torch.randn(3, 12, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    got = crf_refine(image(), logits)
    assert torch.equal(got, crf_refine(image(), logits.float()))


# ------------------------------------------------------------------ metrics


def test_a_result_keeps_its_confusion_after_later_updates():
    metrics = SegMetrics(3)
    target = np.arange(16).reshape(4, 4) % 3
    metrics.update(target, target)
    first = metrics.compute()
    metrics.update(np.zeros_like(target), target)
    assert first.confusion.sum() == 16 and np.trace(first.confusion) == 16 and first.miou == 1.0


def test_state_dict_loads_weights_only_and_records_its_settings(tmp_path):
    metrics = SegMetrics(3, ignore_index=255, per_image=True, boundary=True)
    target = np.arange(64).reshape(8, 8) % 3
    metrics.update(target, np.where(target == 0, 255, target))
    torch.save(metrics.state_dict(), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert state["num_classes"] == 3 and state["ignore_index"] == [255] and state["per_image"] is True
    restored = SegMetrics(3, ignore_index=255, per_image=True, boundary=True).load_state_dict(state)
    assert restored.compute().to_dict() == metrics.compute().to_dict()
    for other in (SegMetrics(3, ignore_index=0, per_image=True, boundary=True),
                  SegMetrics(3, ignore_index=255, boundary=True), SegMetrics(4, ignore_index=255, per_image=True)):
        with pytest.raises(ValueError, match="different settings"):
            other.load_state_dict(state)
        with pytest.raises(ValueError, match="different settings"):
            other.merge(metrics)


# ------------------------------------------------------------------ evaluate


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
