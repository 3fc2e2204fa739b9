"""One rule per concept across the API, each tested over every function it covers."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from skimage import data

import segpost

IMAGE = np.ascontiguousarray(data.astronaut()[:32, :40])  # numpy: (H, W, C)
TENSOR = torch.from_numpy(IMAGE).permute(2, 0, 1)  # torch: (C, H, W)
LOGITS = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)


def _as_numpy(x):
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _add_bilateral(image):
    crf = segpost.DenseCRF(np.zeros((2, 32, 40), np.float32))
    crf.add_bilateral(image, 10, 10)
    return crf.inference(2)


LAYOUT_USERS = {
    "crf_refine": lambda image: segpost.crf_refine(image, LOGITS),
    "bilateral_filter": lambda image: np.moveaxis(_as_numpy(segpost.bilateral_filter(image, 3, 20)), 0, -1)
    if isinstance(image, torch.Tensor) else segpost.bilateral_filter(image, 3, 20),
    "DenseCRF.add_bilateral": _add_bilateral,
    "joint_bilateral_upsample": lambda image: segpost.joint_bilateral_upsample(LOGITS, image, sigma_spatial=8,
                                                                               sigma_color=20),
    "Pipeline": lambda image: segpost.Pipeline(torch.nn.Conv2d(3, 2, 1))(image).labels,
}


@pytest.mark.parametrize("name", sorted(LAYOUT_USERS))
def test_one_image_layout_rule_numpy_channels_last_torch_channels_first(name):
    fn = LAYOUT_USERS[name]
    torch.manual_seed(0)
    from_numpy = _as_numpy(fn(IMAGE))
    torch.manual_seed(0)
    np.testing.assert_allclose(_as_numpy(fn(TENSOR)), from_numpy, atol=1e-6)


# (name, call, values below the parameter's minimum)
WRONG_TYPE_OR_VALUE = [
    ("set_num_threads", lambda v: segpost.set_num_threads(v), (0, -3)),
    ("crf_refine iterations", lambda v: segpost.crf_refine(IMAGE, LOGITS, iterations=v), (-1, -3)),
    ("pad_to_multiple", lambda v: segpost.pad_to_multiple(np.zeros((4, 4)), v), (0, -3)),
    ("deeplab_size", lambda v: segpost.deeplab_size(v, 2), (0, -3)),
    ("Pipeline batch_size", lambda v: segpost.Pipeline(torch.nn.Conv2d(3, 2, 1), batch_size=v), (0, -3)),
    ("nn.DenseCRF num_classes", lambda v: segpost.nn.DenseCRF(v), (0, -3)),
    ("nn.DenseCRF iterations", lambda v: segpost.nn.DenseCRF(2, iterations=v), (-1,)),
    ("nn.BilinearUpsample2d factor", lambda v: segpost.nn.BilinearUpsample2d(2, v), (0, -3)),
    ("nn.BilinearUpsample2d channels", lambda v: segpost.nn.BilinearUpsample2d(v, 2), (0, -3)),
]


@pytest.mark.parametrize("name, call, too_small", WRONG_TYPE_OR_VALUE, ids=[c[0] for c in WRONG_TYPE_OR_VALUE])
def test_a_wrong_type_is_a_type_error_and_a_wrong_value_a_value_error(name, call, too_small):
    for wrong_type in ("2", 2.5, True):
        with pytest.raises(TypeError):
            call(wrong_type)
    for wrong_value in too_small:
        with pytest.raises(ValueError):
            call(wrong_value)


def test_bad_environment_variables_warn_and_are_ignored():
    code = ("import warnings, segpost; from segpost._memory import memory_limit_bytes\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); limit = memory_limit_bytes()\n"
            "print(limit > 0, any('SEGPOST_MAX_MEMORY_GB' in str(x.message) for x in w))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, SEGPOST_MAX_MEMORY_GB="lots"))
    assert out.stdout.split() == ["True", "True"]


def test_subpackages_are_attributes_imported_on_first_use():
    code = ("import sys, segpost\n"
            "eager = [m for m in ('segpost.nn', 'segpost.viz', 'segpost.compat') if m in sys.modules]\n"
            "print(eager, segpost.nn.DenseCRF.__name__, segpost.viz.colorize.__name__,"
            " segpost.compat.pydensecrf.__name__, 'nn' in dir(segpost))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "DenseCRF", "colorize", "segpost.compat.pydensecrf", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        segpost.nothing  # noqa: B018


ARRAY_IN_ARRAY_OUT = {
    "crf_refine": lambda x: segpost.crf_refine(IMAGE, x),
    "resize_logits": lambda x: segpost.resize_logits(x, (8, 10)),
    "upsample_argmax": lambda x: segpost.upsample_argmax(x, (8, 10)),
    "joint_bilateral_upsample": lambda x: segpost.joint_bilateral_upsample(x, IMAGE, sigma_spatial=8, sigma_color=20),
    "confusion_matrix": lambda x: segpost.confusion_matrix(x.argmax(0), x.argmax(0), 3),
    "PermutohedralLattice.filter": lambda x: segpost.PermutohedralLattice(
        np.random.default_rng(0).uniform(0, 3, (20, 2))).filter(x.reshape(3, -1).T),
    "bilateral_filter": lambda x: segpost.bilateral_filter(x, 3, 0.5),
}


@pytest.mark.parametrize("name", sorted(ARRAY_IN_ARRAY_OUT))
def test_numpy_in_numpy_out_torch_in_torch_out(name):
    fn = ARRAY_IN_ARRAY_OUT[name]
    assert isinstance(fn(LOGITS), np.ndarray)
    assert isinstance(fn(torch.from_numpy(LOGITS)), torch.Tensor)


def test_the_three_dense_crf_classes_tell_each_other_apart():
    from segpost.compat.pydensecrf import densecrf

    classes = {"segpost.DenseCRF": segpost.DenseCRF, "segpost.nn.DenseCRF": segpost.nn.DenseCRF,
               "pydensecrf.densecrf.DenseCRF": densecrf.DenseCRF}
    for name, cls in classes.items():
        others = [other.split(".")[-2] for other in classes if other != name]
        assert all(f".{o}.DenseCRF" in cls.__doc__ or f"{o}.DenseCRF" in cls.__doc__ for o in others), name


def test_nn_dense_crf_defaults_are_the_pydensecrf_preset_crf_refine_deeplabs():
    import inspect

    preset = segpost.CRFParams.pydensecrf()
    defaults = {k: v.default for k, v in inspect.signature(segpost.nn.DenseCRF).parameters.items()}
    assert (defaults["pos_xy"], defaults["pos_weight"], defaults["bi_xy"], defaults["bi_rgb"], defaults["bi_weight"],
            defaults["iterations"]) == (preset.pos_xy, preset.pos_weight, preset.bi_xy, preset.bi_rgb,
                                        preset.bi_weight, preset.iterations)
    assert segpost.CRFParams() == segpost.CRFParams.deeplab()


# --- the intensity rule and one-channel scores, in crf_refine, Pipeline and nn.DenseCRF ---------------------

def _photo(h=48, w=64):
    return data.astronaut()[100:100 + h, 150:150 + w]


def _pointwise_model(classes=4):
    """A 1x1 conv, seeded."""
    torch.manual_seed(1)
    return torch.nn.Conv2d(3, classes, 1)


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.int32])
def test_integer_images_hold_0_to_255_whatever_their_dtype(dtype):
    img = _photo()
    logits = np.random.default_rng(0).normal(size=(3, 12, 16)).astype(np.float32)
    expected = segpost.crf_refine(img, logits)
    np.testing.assert_array_equal(segpost.crf_refine(img.astype(dtype), logits), expected)
    np.testing.assert_array_equal(segpost.crf_refine(img.astype(np.float32) / 255, logits), expected)
    model = _pointwise_model()
    np.testing.assert_allclose(segpost.Pipeline(model)(img.astype(dtype), return_probs=True).probs,
                               segpost.Pipeline(model)(img, return_probs=True).probs, atol=1e-6)


def test_images_outside_the_rule_raise_or_warn():
    logits = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="0..255"):
        segpost.crf_refine(np.full((32, 32, 3), 1000, np.uint16), logits)
    with pytest.raises(ValueError, match="ImageNet-normalised"):
        segpost.crf_refine(np.full((32, 32, 3), -1.5, np.float32), logits)
    with pytest.warns(UserWarning, match="under 1%"):
        segpost.crf_refine(np.ones((32, 32, 3), np.int64), logits)
    with pytest.warns(UserWarning, match="under 1%"):
        segpost.Pipeline(_pointwise_model())(np.ones((32, 32, 3), np.uint8))
    normalised = (torch.rand(1, 3, 8, 8) - torch.tensor(segpost.IMAGENET_MEAN).view(1, 3, 1, 1)) / 0.229
    with pytest.raises(ValueError, match="ImageNet-normalised"):
        segpost.nn.DenseCRF(2)(torch.randn(1, 2, 8, 8), normalised)


def test_one_channel_logits_are_two_classes_background_and_sigmoid():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 1)
    img = _photo()
    out = segpost.Pipeline(model)(img, return_probs=True)
    x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(segpost.IMAGENET_MEAN).view(3, 1, 1), torch.tensor(segpost.IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        z = model(((x - mean) / std)[None])[0, 0].numpy()
    assert out.probs.shape == (2, *img.shape[:2])
    np.testing.assert_allclose(out.probs[1], 1 / (1 + np.exp(-z)), atol=1e-6)
    np.testing.assert_array_equal(out.labels, (z > 0).astype(np.int64))
    # crf_refine: one channel of logits z is [0, z]; one channel of probabilities p is [1 - p, p]
    z_small = z[::4, ::4][None].astype(np.float32)
    np.testing.assert_array_equal(segpost.crf_refine(img, z_small),
                                  segpost.crf_refine(img, np.concatenate([0 * z_small, z_small])))
    p = 1 / (1 + np.exp(-z_small))
    np.testing.assert_array_equal(segpost.crf_refine(img, probs=p),
                                  segpost.crf_refine(img, probs=np.concatenate([1 - p, p])))
