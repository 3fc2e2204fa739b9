"""Every `segpost` subcommand through the real entry point, including user mistakes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data, io

from segpost.viz import voc_palette


def segpost_cmd():
    script = Path(sys.executable).with_name("segpost")
    return [str(script)] if script.exists() else [sys.executable, "-m", "segpost"]


def run(*args, cwd=None):
    env = dict(os.environ, SEGPOST_NUM_THREADS="2")
    return subprocess.run(segpost_cmd() + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def assert_user_error(result, fragment):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_is_complete():
    result = run("--help")
    assert result.returncode == 0
    for command in ("demo", "refine", "eval", "bench"):
        assert command in result.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0 and "usage:" in sub.stdout
    assert "--save-probs" in run("refine", "--help").stdout
    assert "--ignore-index" in run("eval", "--help").stdout


def test_demo_writes_pictures_and_shows_a_gain(tmp_path):
    result = run("demo", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for name in ("demo.png", "input.png", "ground_truth.png", "coarse.png", "refined.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("coarse", "CRF-refined"))}
    coarse_miou = float(lines["coarse"].split()[2].rstrip("%"))
    refined_miou = float(lines["CRF-refined"].split()[1].rstrip("%"))
    assert refined_miou > coarse_miou + 1


@pytest.fixture
def image_and_logits(tmp_path):
    image = data.coffee()[:96, :128]
    io.imsave(tmp_path / "img.png", image, check_contrast=False)
    logits = np.random.default_rng(0).normal(size=(4, 12, 16)).astype(np.float32)
    np.save(tmp_path / "logits.npy", logits)
    np.savez(tmp_path / "logits.npz", logits=logits)
    import torch

    torch.save(torch.from_numpy(logits), tmp_path / "logits.pt")
    probs = np.exp(logits) / np.exp(logits).sum(0)
    np.save(tmp_path / "probs.npy", probs.astype(np.float32))
    return tmp_path, image, logits


def test_refine_all_formats_and_outputs(image_and_logits):
    tmp, image, logits = image_and_logits
    import segpost

    expected = segpost.crf_refine(image, logits)
    for source in ("logits.npy", "logits.npz", "logits.pt"):
        out = tmp / f"out_{source}.png"
        result = run("refine", tmp / "img.png", tmp / source, "-o", out)
        assert result.returncode == 0, result.stderr
        with Image.open(out) as im:
            assert im.mode == "P" and im.getpalette()[:6] == voc_palette()[:2].reshape(-1).tolist()
            np.testing.assert_array_equal(np.asarray(im), expected)
    result = run("refine", tmp / "img.png", tmp / "probs.npy", "--probs", "-o", tmp / "p.png", "--preset", "pydensecrf",
                 "--params", '{"bi_weight": 5}', "--iterations", "3", "--overlay", tmp / "overlay.png",
                 "--save-probs", tmp / "refined.npy")
    assert result.returncode == 0, result.stderr
    assert io.imread(tmp / "overlay.png").shape == (96, 128, 3)
    saved = np.load(tmp / "refined.npy")
    assert saved.shape == (4, 96, 128) and np.allclose(saved.sum(0), 1, rtol=1e-5)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["missing.png", "logits.npy", "-o", "o.png"], "image file not found"),
        (["img.png", "missing.npy", "-o", "o.png"], "scores file not found"),
        (["logits.npy", "logits.npy", "-o", "o.png"], "cannot read"),
        (["img.png", "img.png", "-o", "o.png"], "unsupported scores format"),
        (["img.png", "bad_shape.npy", "-o", "o.png"], "(C, h, w)"),
        (["img.png", "logits.npy", "-o", "o.png", "--params", "{bi_weight: 5"], "not valid JSON"),
        (["img.png", "logits.npy", "-o", "o.png", "--params", '{"sxy": 5}'], "unknown CRF parameter"),
        (["img.png", "logits.npy", "-o", "o.png", "--probs"], "sum to 1"),
        (["img.png", "big.npy", "-o", "o.png"], "larger than the image"),
    ],
)
def test_refine_user_mistakes(image_and_logits, args, fragment):
    tmp, _, _ = image_and_logits
    np.save(tmp / "bad_shape.npy", np.zeros((4, 5), np.float32))
    np.save(tmp / "big.npy", np.zeros((4, 200, 300), np.float32))
    assert_user_error(run("refine", *args, cwd=tmp), fragment)


def _write_label_png(path, labels, kind):
    if kind == "palette":
        img = Image.fromarray(labels.astype(np.uint8), mode="P")
        img.putpalette(voc_palette().reshape(-1).tolist())
        img.save(path)
    elif kind == "8bit":
        Image.fromarray(labels.astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray(labels.astype(np.uint16)).save(path)


def test_eval_reads_palette_8_and_16_bit_pngs(tmp_path):
    import segpost

    rng = np.random.default_rng(0)
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    expected = segpost.SegMetrics(3, ignore_index=255)
    for i, kind in enumerate(["palette", "8bit", "16bit"]):
        gt = rng.integers(0, 3, size=(20, 30))
        gt[:2] = 255
        pred = np.where(rng.random(gt.shape) < 0.2, rng.integers(0, 3, size=gt.shape), gt) % 256
        pred[:2] = 0
        _write_label_png(tmp_path / "pred" / f"img{i}.png", pred, kind)
        _write_label_png(tmp_path / "gt" / f"img{i}.png", gt, "palette" if kind == "palette" else kind)
        expected.update(pred, gt)
    _write_label_png(tmp_path / "gt" / "extra.png", np.zeros((20, 30), int), "8bit")
    _write_label_png(tmp_path / "pred" / "orphan.png", np.zeros((20, 30), int), "8bit")
    _write_label_png(tmp_path / "pred" / "small.png", np.zeros((10, 30), int), "8bit")
    _write_label_png(tmp_path / "gt" / "small.png", np.zeros((20, 30), int), "8bit")
    (tmp_path / "names.txt").write_text("sky\nroad\ncar\n")
    result = run("eval", tmp_path / "pred", tmp_path / "gt", "--num-classes", "3", "--ignore-index", "255",
                 "--class-names", tmp_path / "names.txt", "--json", tmp_path / "r.json", "--plot", tmp_path / "cm.png",
                 "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "road" in result.stdout and "3 image pairs evaluated" in result.stdout
    assert "no prediction" in result.stderr and "no ground truth" in result.stderr and "different sizes" in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["confusion"] == expected.confusion.tolist()
    assert (tmp_path / "cm.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["nope", "gt", "--num-classes", "3"], "PRED_DIR is not a folder"),
        (["pred", "gt", "--num-classes", "3"], "no prediction/ground-truth pairs"),
        (["pred", "gt", "--num-classes", "3", "--class-names", "missing.txt"], "class names file not found"),
    ],
)
def test_eval_user_mistakes(tmp_path, args, fragment):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    assert_user_error(run("eval", *args, cwd=tmp_path), fragment)


def test_eval_unreadable_image(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred" / "a.png").write_bytes(b"not a png")
    _write_label_png(tmp_path / "gt" / "a.png", np.zeros((4, 4), int), "8bit")
    assert_user_error(run("eval", "pred", "gt", "--num-classes", "2", cwd=tmp_path), "no pair could be evaluated")
    # Next to a good pair the bad one is listed and skipped, not fatal.
    for name in ("b", "c"):
        _write_label_png(tmp_path / "pred" / f"{name}.png", np.zeros((4, 4), int), "8bit")
        _write_label_png(tmp_path / "gt" / f"{name}.png", np.zeros((4, 4), int), "8bit")
    rgb = np.zeros((4, 4, 3), np.uint8)
    from PIL import Image

    Image.fromarray(rgb).save(tmp_path / "pred" / "c.png")  # colour-coded: not a label map
    result = run("eval", "pred", "gt", "--num-classes", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 image pairs evaluated" in result.stdout and "skipped 2 unreadable" in result.stderr


def test_eval_labels_beyond_num_classes_are_an_error_unless_dropped(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    labels = np.arange(16).reshape(4, 4) % 5
    _write_label_png(tmp_path / "pred" / "a.png", labels, "8bit")
    _write_label_png(tmp_path / "gt" / "a.png", labels, "8bit")
    assert_user_error(run("eval", "pred", "gt", "--num-classes", "3", cwd=tmp_path), "--num-classes right")
    result = run("eval", "pred", "gt", "--num-classes", "3", "--drop-invalid", "--boundary", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "were not counted" in result.stderr and "BIoU" in result.stdout


@pytest.mark.parametrize("option, value, fragment", [
    ("-o", "labels.jpg", "must end in .png"),
    ("-o", "missing_folder/labels.png", "does not exist"),
    ("--save-probs", "p.txt", "must end in .npy"),
])
def test_refine_checks_outputs_before_any_work(tmp_path, option, value, fragment):
    args = ["refine", "image.png", "scores.npy", "-o", "labels.png"]
    if option == "-o":
        args[-1] = value
    else:
        args += [option, value]
    assert_user_error(run(*args, cwd=tmp_path), fragment)  # the inputs do not even exist: no work was done


def test_bench_runs():
    result = run("bench", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    assert "Mpx/s" in result.stdout and "512x512" in result.stdout


def test_no_command_prints_help():
    result = run()
    assert result.returncode == 2 and "usage:" in result.stdout
