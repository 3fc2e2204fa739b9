"""`segpost eval` on folders of NIfTI volumes: spacing from the headers, per-case tables, end to end."""
import csv
import json
import math
import os

import numpy as np
import pytest

from test_cli import assert_user_error, run

from segpost.metrics import case_metrics


def need_nibabel():
    try:
        import nibabel
    except ImportError:
        if os.environ.get("CI"):
            raise  # CI installs the test extras: a missing library must fail, not skip
        pytest.skip("nibabel is not installed (pip install 'segpost[medical]')")
    return nibabel


def write_volume(path, labels, spacing, dtype=np.uint8):
    nibabel = need_nibabel()
    image = nibabel.Nifti1Image(labels.astype(dtype), np.diag([*spacing, 1.0]))
    image.header.set_zooms(spacing)
    nibabel.save(image, str(path))


def organ_volumes(seed):
    rng = np.random.default_rng(seed)
    target = np.zeros((10, 14, 8), np.uint8)
    target[2:8, 3:11, 2:6] = 1
    target[4:7, 9:13, 3:7] = 2
    pred = np.roll(target, int(rng.integers(1, 3)), axis=0)
    pred[rng.random(pred.shape) < 0.01] = 1
    return pred, target


SPACINGS = {"case_a": (0.8, 0.8, 2.5), "case_b": (1.0, 0.7, 3.0), "case_c": (0.5, 0.5, 1.0)}


@pytest.fixture
def volume_folders(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    cases = {}
    for seed, (name, spacing) in enumerate(SPACINGS.items()):
        pred, target = organ_volumes(seed)
        if name == "case_c":
            pred[pred == 2] = 0  # class 2 missed in one case
        suffix = ".nii" if name == "case_b" else ".nii.gz"
        write_volume(pred_dir / f"{name}{suffix}", pred, spacing)
        write_volume(gt_dir / f"{name}.nii.gz", target, spacing, dtype=np.float32 if name == "case_a" else np.int16)
        cases[name] = (pred, target, tuple(float(np.float32(s)) for s in spacing))  # headers hold float32
    return tmp_path, cases


def test_eval_scores_nifti_volumes_with_their_headers_spacing(volume_folders):
    tmp_path, cases = volume_folders
    out_csv, out_json, summary = tmp_path / "cases.csv", tmp_path / "cases.json", tmp_path / "summary.json"
    result = run("eval", tmp_path / "pred", tmp_path / "gt", "--num-classes", 3, "--exclude-class", 0,
                 "--tolerance", 1.5, "--per-case", out_csv, "--json", summary, "-q")
    assert result.returncode == 0, result.stderr
    assert "HD95" in result.stdout and "3 image pairs evaluated" in result.stdout
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["case"], r["class"]) for r in rows] == [(c, k) for c in SPACINGS for k in ("0", "1", "2")]
    for name, (pred, target, spacing) in cases.items():
        expected = case_metrics(pred, target, 3, spacing=spacing, tolerance=1.5, exclude_classes=(0,))
        for row in (r for r in rows if r["case"] == name):
            c = int(row["class"])
            for column, values in (("dice", expected.dice), ("hd95", expected.hd), ("assd", expected.assd),
                                   ("nsd", expected.nsd)):
                value = values[c]
                if math.isnan(value):
                    assert row[column] == ""
                else:
                    assert float(row[column]) == pytest.approx(value, rel=1e-12), (name, c, column)
    assert rows[-1]["hd95"] == "inf"  # case_c missed class 2
    means = json.loads(summary.read_text())
    assert means["num_cases"] == 3 and means["hd95"][2] == "inf"
    hd1 = [case_metrics(p, t, 3, spacing=s, exclude_classes=(0,)).hd[1] for p, t, s in cases.values()]
    assert means["hd95"][1] == pytest.approx(np.mean(hd1), rel=1e-12)
    # The same table as JSON, with the spacing of each case.
    result = run("eval", tmp_path / "pred", tmp_path / "gt", "--num-classes", 3, "--per-case", out_json,
                 "--workers", 2, "-q")
    assert result.returncode == 0, result.stderr
    table = json.loads(out_json.read_text())
    assert len(table["metric_per_case"]) == 9
    assert table["metric_per_case"][3]["spacing"] == pytest.approx(list(SPACINGS["case_b"]))
    assert set(table["mean"]["1"]) == {"dice", "iou", "hd95", "assd", "nsd"}


def test_eval_refuses_volumes_whose_spacings_differ(volume_folders):
    tmp_path, cases = volume_folders
    pred, _, _ = cases["case_a"]
    write_volume(tmp_path / "pred" / "case_a.nii.gz", pred, (0.8, 0.8, 5.0))
    assert_user_error(run("eval", tmp_path / "pred", tmp_path / "gt", "--num-classes", 3, "-q"),
                      "case_a: the prediction's voxel spacing")


def test_eval_refuses_mixed_volumes_and_images_and_per_case_without_surface(tmp_path, volume_folders):
    from PIL import Image

    folders, _ = volume_folders
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folders / "pred" / "case_a.png")
    (folders / "pred" / "case_a.nii.gz").unlink()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folders / "gt" / "case_a.png")
    (folders / "gt" / "case_a.nii.gz").unlink()
    assert_user_error(run("eval", folders / "pred", folders / "gt", "--num-classes", 3, "-q"),
                      "mix NIfTI volumes and images")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(images / "x.png")
    assert_user_error(run("eval", images, images, "--num-classes", 3, "--per-case", tmp_path / "c.csv", "-q"),
                      "add --surface")
    assert_user_error(run("eval", images, images, "--num-classes", 3, "--surface", "--tolerance", -1, "-q"),
                      "--tolerance")


def test_eval_surface_on_png_label_maps(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
    target = np.zeros((20, 24), np.uint8)
    target[5:15, 4:18] = 1
    pred = np.roll(target, 2, axis=1)
    pred[rng.random(pred.shape) < 0.02] = 1
    Image.fromarray(pred).save(tmp_path / "pred" / "x.png")
    Image.fromarray(target).save(tmp_path / "gt" / "x.png")
    result = run("eval", tmp_path / "pred", tmp_path / "gt", "--num-classes", 2, "--surface", "--per-case",
                 tmp_path / "c.csv", "-q")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert float(rows[1]["hd95"]) == pytest.approx(case_metrics(pred, target, 2).hd[1], rel=1e-12)


def test_read_volume_reads_labels_and_spacing(tmp_path):
    from segpost._datasets import UserError, list_files, read_volume

    labels = np.arange(24).reshape(2, 3, 4) % 3
    write_volume(tmp_path / "v.nii.gz", labels, (0.5, 1.5, 2.0), dtype=np.float32)
    volume, spacing = read_volume(tmp_path / "v.nii.gz")
    assert volume.dtype == np.uint8 and np.array_equal(volume, labels) and spacing == (0.5, 1.5, 2.0)
    write_volume(tmp_path / "f.nii", labels + 0.5, (1.0, 1.0, 1.0), dtype=np.float32)
    with pytest.raises(UserError, match="non-integer"):
        read_volume(tmp_path / "f.nii")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(UserError, match="cannot read"):
        read_volume(tmp_path / "bad.nii.gz")
    assert list(list_files(tmp_path, extensions=(".nii.gz", ".nii"))) == ["bad", "f", "v"]
