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
        (["loop.png", "logits.npy", "-o", "o.png"], "image file loop.png is a symbolic link that leads nowhere"),
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
    (tmp / "loop.png").symlink_to(tmp / "loop.png")
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
    assert_user_error(run("eval", "pred", "gt", "--num-classes", "3", cwd=tmp_path),
                      "(first bad value: 3): is --num-classes right? (--ignore-index 3 for")
    _write_label_png(tmp_path / "pred" / "b.png", labels, "8bit")
    _write_label_png(tmp_path / "gt" / "b.png", labels, "8bit")
    result = run("eval", "pred", "gt", "--num-classes", "3", "--drop-invalid", "--boundary", "--json", "e.json",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "were not counted" in result.stderr and "BIoU" in result.stdout
    assert json.loads((tmp_path / "e.json").read_text())["num_images"] == 2


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


# ------------------------------------------------------------------------- datasets: pairing and sharding

from hypothesis import given, strategies as st  # noqa: E402


def _oracle_keys(files, suffix, extensions, recursive):
    """Brute force: every (relative path, key) a side offers, straight from the definition."""
    keys = {}
    for relative in files:
        name = relative.split("/")[-1]
        if (not recursive and "/" in relative) or name.startswith("."):
            continue
        if suffix is not None:
            if name.endswith(suffix) and len(name) > len(suffix):
                keys[relative[: len(relative) - len(suffix)]] = relative
        else:
            stem, dot, ext = name.rpartition(".")
            if dot and stem and "." + ext.lower() in extensions:
                keys[relative[: len(relative) - len(ext) - 1]] = relative
    return keys


_names = st.sampled_from(["a", "b", "a_x", "b.x", ".hid"])
_dirs = st.lists(st.sampled_from(["c1", "c2"]), max_size=2).map("/".join)
_left_ends = st.sampled_from(["_img.png", ".png", ".JPG", "_img.npy", ".txt"])
_right_ends = st.sampled_from(["_gt.png", ".png", ".npy", "_gt.tif"])


@given(left=st.lists(st.tuples(_dirs, _names, _left_ends), max_size=8, unique=True),
       right=st.lists(st.tuples(_dirs, _names, _right_ends), max_size=8, unique=True),
       left_suffix=st.sampled_from([None, "_img.png", ".png"]), right_suffix=st.sampled_from([None, "_gt.png"]),
       recursive=st.booleans())
def test_pairing_by_suffix_and_recursion_matches_brute_force(left, right, left_suffix, right_suffix, recursive):
    import tempfile

    from segpost._datasets import IMAGE_SUFFIXES, UserError, list_files, pair_files

    with tempfile.TemporaryDirectory() as tmp:
        sides = []
        for side, entries, suffix in (("L", left, left_suffix), ("R", right, right_suffix)):
            relatives = sorted({f"{d}/{n}{e}" if d else f"{n}{e}" for d, n, e in entries})
            for relative in relatives:
                path = Path(tmp, side, relative)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
            Path(tmp, side).mkdir(exist_ok=True)
            oracle = {}
            duplicate = False
            for relative in relatives:
                for key, rel in _oracle_keys([relative], suffix, IMAGE_SUFFIXES, recursive).items():
                    duplicate |= key in oracle
                    oracle[key] = rel
            try:
                found = list_files(Path(tmp, side), suffix=suffix, recursive=recursive)
            except UserError as exc:
                assert duplicate and "both pair as" in str(exc)
                return
            assert not duplicate
            assert {k: p.relative_to(Path(tmp, side)).as_posix() for k, p in found.items()} == oracle
            sides.append(found)
        pairs, only_left, only_right = pair_files(*sides)
        assert [key for key, _, _ in pairs] == sorted(set(sides[0]) & set(sides[1]))
        assert set(only_left) | {k for k, _, _ in pairs} == set(sides[0])
        assert set(only_right) | {k for k, _, _ in pairs} == set(sides[1])


@given(n=st.integers(0, 30), world=st.integers(1, 6))
def test_shards_partition_the_pairs(n, world):
    from segpost._datasets import shard, shard_spec

    items = list(range(n))
    shares = []
    for rank in range(world):
        assert shard_spec(f"{rank}/{world}") == (rank, world, "shard")
        env = {"RANK": str(rank), "WORLD_SIZE": str(world)}
        assert shard_spec(None, env) == ((rank, world, "torchrun") if world > 1 else (0, 1, None))
        shares += shard(items, rank, world)
    assert sorted(shares) == items  # every item exactly once


@pytest.mark.parametrize("text", ["2/2", "-1/3", "1/0", "1", "a/b", "1/2/3"])
def test_bad_shards_are_user_errors(text):
    from segpost._datasets import UserError, shard_spec

    with pytest.raises(UserError, match="--shard"):
        shard_spec(text)


# ------------------------------------------------------------------------------ refine over a folder

def _photo(i, h=48, w=64):
    photos = (data.astronaut(), data.coffee(), data.chelsea())
    photo = photos[i % 3]
    y, x = (7 * i) % (photo.shape[0] - h), (13 * i) % (photo.shape[1] - w)
    return np.ascontiguousarray(photo[y:y + h, x:x + w])


@pytest.fixture
def image_folder(tmp_path):
    """Six photos (two in a subfolder) and their logits, one scores file without an image."""
    rng = np.random.default_rng(3)
    expected = {}
    for i in range(6):
        key = f"sub/p{i}" if i >= 4 else f"p{i}"
        (tmp_path / "images" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "scores" / key).parent.mkdir(parents=True, exist_ok=True)
        image = _photo(i)
        logits = rng.normal(size=(3, 6, 8)).astype(np.float32)
        io.imsave(tmp_path / "images" / f"{key}_img.png", image, check_contrast=False)
        np.save(tmp_path / "scores" / f"{key}.npy", logits)
        import segpost

        expected[key] = segpost.crf_refine(image, logits)
    np.save(tmp_path / "scores" / "orphan.npy", np.zeros((3, 6, 8), np.float32))
    return tmp_path, expected


def _labels(path):
    with Image.open(path) as im:
        assert im.mode == "P"
        return np.asarray(im)


def test_refine_a_folder_with_two_workers_and_resume_it(image_folder):
    tmp, expected = image_folder
    args = ["refine", tmp / "images", tmp / "scores", "-o", tmp / "out", "-r", "--image-suffix", "_img.png"]
    result = run(*args, "--workers", "2", "--save-probs")
    assert result.returncode == 0, result.stderr
    assert "refined 6, skipped 0" in result.stdout
    threads = int(result.stdout.split("2 worker(s) x ")[1].split()[0])  # N x threads <= cores
    assert 1 <= threads and 2 * threads <= max(2, len(os.sched_getaffinity(0)))
    assert "1 score file(s) have no image" in result.stderr
    for key, labels in expected.items():
        np.testing.assert_array_equal(_labels(tmp / "out" / f"{key}.png"), labels)
        probs = np.load(tmp / "out" / f"{key}_probs.npy")
        assert probs.shape == (3, 48, 64) and np.array_equal(probs.argmax(0), labels)
    # Resume: only the missing output and the new image are refined; a broken scores file is listed, not fatal.
    stamps = {key: (tmp / "out" / f"{key}.png").stat().st_mtime_ns for key in expected}
    (tmp / "out" / "p1.png").unlink()
    np.save(tmp / "scores" / "p1.npy", np.zeros((3, 6, 8), np.float32))
    (tmp / "scores" / "sub" / "p5.npy").write_bytes(b"broken")
    (tmp / "out" / "sub" / "p5.png").unlink()
    result = run(*args, "--workers", "2", "--save-probs")
    assert result.returncode == 1, result.stderr
    assert "refined 1, skipped 4 (output exists" in result.stdout and "failed 1" in result.stdout
    assert "failed: sub/p5: cannot read scores" in result.stderr and "Traceback" not in result.stderr
    for key in ("p0", "p2", "p3", "sub/p4"):
        assert (tmp / "out" / f"{key}.png").stat().st_mtime_ns == stamps[key]
    np.testing.assert_array_equal(_labels(tmp / "out" / "p1.png"), 0)  # the new, all-zero scores
    # Without --save-probs the label maps are enough; --overwrite redoes everything.
    result = run(*args, "--overwrite", "--quiet")
    assert "refined 5, skipped 0" in result.stdout and "failed 1" in result.stdout
    assert not list((tmp / "out").rglob(".*"))  # no partial files left behind


def test_refine_a_list_file(image_folder):
    tmp, expected = image_folder
    (tmp / "images" / "val.txt").write_text("# two of them\np0_img.png\n\nsub/p4_img.png\n")
    result = run("refine", tmp / "images" / "val.txt", tmp / "scores", "-o", tmp / "out", "-r",
                 "--image-suffix", "_img.png")
    assert result.returncode == 0, result.stderr
    assert "refined 2" in result.stdout
    for key in ("p0", "sub/p4"):
        np.testing.assert_array_equal(_labels(tmp / "out" / f"{key}.png"), expected[key])


def test_refine_folder_warns_once_per_kind_and_saves_probs_by_default_name(image_folder):
    tmp, _ = image_folder
    rng = np.random.default_rng(4)
    for key in ("p0", "p1", "p2"):  # unevenly scaled scores (24x40 for 48x64): warned once, with the count
        np.save(tmp / "scores" / f"{key}.npy", rng.normal(size=(3, 24, 40)).astype(np.float32))
    result = run("refine", tmp / "images", tmp / "scores", "-o", tmp / "out", "--image-suffix", "_img.png")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "crop_to" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 3 image(s):"), result.stderr
    single = run("refine", tmp / "images" / "p3_img.png", tmp / "scores" / "p3.npy", "-o", tmp / "one.png",
                 "--save-probs")
    assert single.returncode == 0, single.stderr
    assert np.load(tmp / "one_probs.npy").shape == (3, 48, 64)


def test_list_file_paths_outside_its_folder_are_keyed_by_name(tmp_path):
    # Outputs are named by key under OUT: a key with .. or a leading / would write outside it.
    from segpost._datasets import UserError, list_files

    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.txt").write_text(f"a/b.png\n./c.png\n../elsewhere/d.png\n{tmp_path}/e.jpg\n")
    found = list_files(tmp_path / "lists" / "val.txt")
    assert found == {"a/b": tmp_path / "lists" / "a" / "b.png", "c": tmp_path / "lists" / "c.png",
                     "d": tmp_path / "elsewhere" / "d.png", "e": tmp_path / "e.jpg"}
    (tmp_path / "lists" / "bad.txt").write_text("a/b.npy\n")
    with pytest.raises(UserError, match="does not end in"):
        list_files(tmp_path / "lists" / "bad.txt")


@pytest.mark.parametrize("extra, fragment", [
    (["-o", "out.png"], "is a folder"),
    (["-o", "missing/out"], "does not exist"),
    (["-o", "out", "--overlay", "o.png"], "--overlay writes one picture"),
    (["-o", "out", "--save-probs", "p.npy"], "takes no file name"),
    (["-o", "out", "--workers", "0"], "--workers must be at least 1"),
    (["-o", "out", "--shard", "2/2"], "--shard"),
    (["-o", "out", "--iterations", "-1"], "--iterations"),
    (["-o", "images"], "would replace the images"),
    (["-o", "out", "--image-suffix", "_nothing.png"], "no image in"),
])
def test_refine_folder_mistakes_before_any_work(image_folder, extra, fragment):
    tmp, _ = image_folder
    assert_user_error(run("refine", "images", "scores", *extra, cwd=tmp), fragment)
    assert not (tmp / "out").exists() or not list((tmp / "out").iterdir())


def _bytes_of(folder):
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("args", [
    ["refine", "img.png", "logits.npy", "-o", "img.png"],
    ["refine", "img.png", "logits.npy", "-o", "./sub/../img.png"],
    ["refine", "img.png", "logits.npy", "-o", "link.png"],          # a symbolic link to the image
    ["refine", "img.png", "logits.npy", "-o", "hard.png"],          # a hard link to the image
    ["refine", "img.png", "logits.npy", "-o", "o.png", "--save-probs", "logits.npy"],
    ["refine", "img.png", "probs.npy", "--probs", "-o", "o.png", "--save-probs", "probs.npy"],
    ["refine", "img.png", "logits.npy", "-o", "o.png", "--overlay", "img.png"],
    ["refine", "img.png", "logits.npy", "-o", "o.png", "--overlay", "o.png"],   # two outputs, one file
    ["refine", "folder/list.txt", "scores", "-o", "folder", "--overwrite"],    # a list inside the image folder
    ["refine", "folder/list.txt", "scores", "-o", "folder"],                   # (not skipped as "done" either)
    ["refine", "folder/list.txt", "scores", "-o", "folder", "--save-probs"],
    ["eval", "preds", "gts", "--num-classes", "3", "--plot", "preds/a.png"],
    ["eval", "preds", "gts", "--num-classes", "3", "--plot", "gts/a.png"],
    ["eval", "preds", "gts", "--num-classes", "3", "--json", "names.json", "--class-names", "names.json"],
])
def test_outputs_never_write_over_inputs(image_and_logits, args):
    """Every output path, in every mode, is checked against every input before any work: not a byte changes."""
    tmp, image, logits = image_and_logits
    (tmp / "sub").mkdir()
    (tmp / "link.png").symlink_to(tmp / "img.png")
    os.link(tmp / "img.png", tmp / "hard.png")
    (tmp / "folder").mkdir()
    (tmp / "scores").mkdir()
    for name in ("a", "b"):
        io.imsave(tmp / "folder" / f"{name}.png", image, check_contrast=False)
        np.save(tmp / "scores" / f"{name}.npy", logits)
    (tmp / "folder" / "list.txt").write_text("a.png\nb.png\n")
    for folder in ("preds", "gts"):
        (tmp / folder).mkdir()
        _write_label_png(tmp / folder / "a.png", np.zeros((4, 4), np.uint8), "palette")
    (tmp / "names.json").write_text("x\ny\nz\n")
    before = _bytes_of(tmp)
    result = run(*args, cwd=tmp)
    assert_user_error(result, "choose another output path")
    assert _bytes_of(tmp) == before


def test_progress_without_a_terminal_prints_lines(image_folder, monkeypatch, capsys):
    """Logs and CI have no terminal: a run longer than a few seconds reports as plain lines."""
    from segpost import cli

    tmp, _ = image_folder
    monkeypatch.setattr(cli._Progress, "SILENT_FOR_S", 0.0)  # as if every run were long
    assert cli.main(["refine", str(tmp / "images"), str(tmp / "scores"), "-o", str(tmp / "out"), "-r",
                     "--image-suffix", "_img.png"]) == 0
    assert "refine: 6/6 (100%)" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp / "out"), str(tmp / "out"), "--num-classes", "21", "-r"]) == 0
    assert "eval: 6/6 (100%)" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp / "out"), str(tmp / "out"), "--num-classes", "21", "-r", "-q"]) == 0
    assert "(100%)" not in capsys.readouterr().err
    monkeypatch.setattr(cli._Progress, "SILENT_FOR_S", 5.0)  # a quick run: its summary alone
    assert cli.main(["eval", str(tmp / "out"), str(tmp / "out"), "--num-classes", "21", "-r"]) == 0
    assert "(100%)" not in capsys.readouterr().err


def test_ctrl_c_in_a_folder_run_says_what_was_written_and_how_to_resume(image_folder, monkeypatch, capsys):
    from segpost import cli

    tmp, _ = image_folder
    real, calls = cli._refine_task, []

    def interrupted_on_the_third(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(cli, "_refine_task", interrupted_on_the_third)
    code = cli.main(["refine", str(tmp / "images"), str(tmp / "scores"), "-o", str(tmp / "out"), "-r", "-q",
                     "--image-suffix", "_img.png"])
    err = capsys.readouterr().err
    assert code == 130
    assert "interrupted: 2 of 6 label maps written" in err and "run the same command again to resume" in err
    assert len(list((tmp / "out").rglob("*.png"))) == 2


def _run_ranks(args, world=2, cwd=None):
    """The command as torchrun starts it: world processes with RANK, WORLD_SIZE and a loopback master."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, SEGPOST_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    procs = [subprocess.Popen(segpost_cmd() + [str(a) for a in args], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
             for r in range(world)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def test_refine_sharded_over_two_ranks_refines_every_pair_once(image_folder):
    tmp, expected = image_folder
    ranks = _run_ranks(["refine", tmp / "images", tmp / "scores", "-o", tmp / "out", "-r", "--image-suffix",
                        "_img.png"])
    keys = sorted(expected)
    for rank, result in enumerate(ranks):
        assert result.returncode == 0, result.stderr
        # rank r takes pairs r, r + 2, ...: 3 each, and between them all 6 (the counts add up to the pairs).
        assert f"shard {rank}/2: refined 3, skipped 0" in result.stdout, result.stdout
    assert ("no image" in ranks[0].stderr) and ("no image" not in ranks[1].stderr)  # said once
    for key in keys:
        np.testing.assert_array_equal(_labels(tmp / "out" / f"{key}.png"), expected[key])
    # --shard without torchrun splits the same way: shard 1/2 now finds its three pairs done.
    result = run("refine", tmp / "images", tmp / "scores", "-o", tmp / "out", "-r", "--image-suffix", "_img.png",
                 "--shard", "1/2")
    assert "shard 1/2: refined 0, skipped 3" in result.stdout, result.stdout


# ------------------------------------------------------------------------------- eval of real layouts

def _blocky_labels(rng, h, w, k):
    """A label map of rectangles (like a real scene) rather than noise."""
    labels = np.zeros((h, w), np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        labels[y:y + rng.integers(4, h), x:x + rng.integers(4, w)] = rng.integers(0, k)
    return labels


def test_eval_a_cityscapes_tree_end_to_end(tmp_path):
    import segpost

    rng = np.random.default_rng(5)
    expected = segpost.SegMetrics(19, ignore_index=255)
    names = []
    for city in ("frankfurt", "lindau"):
        for i in range(2):
            name = f"{city}_{i:06d}_000019"
            names.append(f"{city}/{name}")
            for folder in ("leftImg8bit/val", "gtFine/val", "scores"):
                (tmp_path / folder / city).mkdir(parents=True, exist_ok=True)
            io.imsave(tmp_path / "leftImg8bit/val" / city / f"{name}_leftImg8bit.png", _photo(i, 32, 64),
                      check_contrast=False)
            train_ids = _blocky_labels(rng, 32, 64, 19)
            train_ids[:3] = 255  # void
            gt = tmp_path / "gtFine/val" / city
            Image.fromarray(train_ids, mode="L").save(gt / f"{name}_gtFine_labelTrainIds.png")
            # What else gtFine holds, which the suffix leaves out: labelIds (0..33), colours, instances, polygons.
            Image.fromarray(np.full((32, 64), 33, np.uint8), mode="L").save(gt / f"{name}_gtFine_labelIds.png")
            Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(gt / f"{name}_gtFine_color.png")
            Image.fromarray(np.zeros((32, 64), np.uint16)).save(gt / f"{name}_gtFine_instanceIds.png")
            (gt / f"{name}_gtFine_polygons.json").write_text("{}")
            # The model's trainId scores, peaked on the ground truth at stride 8.
            logits = 4.0 * np.eye(19, dtype=np.float32)[np.where(train_ids == 255, 0, train_ids)[::8, ::8]]
            np.save(tmp_path / "scores" / city / f"{name}.npy", np.moveaxis(logits, -1, 0))
    result = run("refine", tmp_path / "leftImg8bit/val", tmp_path / "scores", "-o", tmp_path / "refined", "-r",
                 "--image-suffix", "_leftImg8bit.png", "--workers", "2")
    assert result.returncode == 0, result.stderr
    for name in names:
        gt_path = tmp_path / "gtFine/val" / f"{name}_gtFine_labelTrainIds.png"
        expected.update(_labels(tmp_path / "refined" / f"{name}.png"), np.asarray(Image.open(gt_path)))
    result = run("eval", tmp_path / "refined", tmp_path / "gtFine/val", "-r", "--gt-suffix",
                 "_gtFine_labelTrainIds.png", "--num-classes", "19", "--ignore-index", "255", "--json",
                 tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert "4 image pairs evaluated" in result.stdout and result.stderr == ""
    assert json.loads((tmp_path / "r.json").read_text())["confusion"] == expected.confusion.tolist()
    # Without -r the city folders are not searched; with the labelIds suffix the classes are out of range.
    assert_user_error(run("eval", tmp_path / "refined", tmp_path / "gtFine/val", "--num-classes", "19"),
                      "no prediction/ground-truth pairs")
    assert_user_error(run("eval", tmp_path / "refined", tmp_path / "gtFine/val", "-r", "--gt-suffix",
                          "_gtFine_labelIds.png", "--num-classes", "19"), "--num-classes right")


def _voc_palette_png(path, labels):
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    img.save(path)


def test_eval_a_voc_tree_with_palette_and_colour_coded_ground_truths(tmp_path):
    import segpost

    rng = np.random.default_rng(6)
    voc = tmp_path / "VOC2012"
    for folder in ("SegmentationClass", "rgb_gt", "pred"):
        (voc / folder).mkdir(parents=True)
    expected = segpost.SegMetrics(21, ignore_index=255)
    for i in range(3):
        gt = _blocky_labels(rng, 40, 50, 21)
        gt[10:12] = 255  # VOC's object borders
        pred = np.where(rng.random(gt.shape) < 0.1, rng.integers(0, 21, gt.shape), np.where(gt == 255, 0, gt))
        _voc_palette_png(voc / "SegmentationClass" / f"2007_00{i}.png", gt)
        Image.fromarray(voc_palette()[gt]).save(voc / "rgb_gt" / f"2007_00{i}.png")  # the same, as RGB colours
        _voc_palette_png(voc / "pred" / f"2007_00{i}.png", pred)
        expected.update(pred, gt)
    common = ["--num-classes", "21", "--ignore-index", "255", "--json"]
    result = run("eval", voc / "pred", voc / "SegmentationClass", *common, tmp_path / "a.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "a.json").read_text())["confusion"] == expected.confusion.tolist()
    # RGB ground truths are refused without a palette, and read through VOC's or a colour map file.
    assert_user_error(run("eval", voc / "pred", voc / "rgb_gt", *common, tmp_path / "b.json"),
                      "no pair could be evaluated")
    result = run("eval", voc / "pred", voc / "rgb_gt", "--gt-palette", "voc", *common, tmp_path / "b.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "b.json").read_text())["confusion"] == expected.confusion.tolist()
    colours = "\n".join(",".join(map(str, c)) for c in voc_palette()[:21]) + "\n224,224,192,255\n"
    (tmp_path / "colours.txt").write_text(colours)
    # A colour outside the map: that file is listed and skipped.
    Image.fromarray(np.full((40, 50, 3), 7, np.uint8)).save(voc / "rgb_gt" / "2007_009.png")
    _voc_palette_png(voc / "pred" / "2007_009.png", np.zeros((40, 50)))
    # A JPEG prediction is read, and warned about.
    Image.fromarray(np.zeros((40, 50), np.uint8), mode="L").save(voc / "pred" / "2008_000.jpg", quality=100)
    _voc_palette_png(voc / "rgb_gt" / "2008_000.png", np.zeros((40, 50)))
    result = run("eval", voc / "pred", voc / "rgb_gt", "--gt-palette", tmp_path / "colours.txt", *common,
                 tmp_path / "c.json")
    assert result.returncode == 0, result.stderr
    assert "4 image pairs evaluated" in result.stdout
    assert "skipped 1 unreadable" in result.stderr and "(7, 7, 7)" in result.stderr and "lossy" in result.stderr
    (tmp_path / "bad.txt").write_text("1,2\n")
    assert_user_error(run("eval", voc / "pred", voc / "rgb_gt", "--gt-palette", tmp_path / "bad.txt", "--num-classes",
                          "21"), "line 1")


def test_eval_sharded_over_two_gloo_ranks_prints_one_table(tmp_path):
    rng = np.random.default_rng(8)
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    for i in range(5):
        gt = _blocky_labels(rng, 24, 32, 4)
        _write_label_png(tmp_path / "gt" / f"{i}.png", gt, "8bit")
        _write_label_png(tmp_path / "pred" / f"{i}.png", np.where(rng.random(gt.shape) < 0.2, 1, gt), "8bit")
    _write_label_png(tmp_path / "pred" / "5.png", np.zeros((8, 8)), "8bit")  # rank 1's pair of different sizes
    _write_label_png(tmp_path / "gt" / "5.png", np.zeros((9, 8)), "8bit")
    args = ["eval", tmp_path / "pred", tmp_path / "gt", "--num-classes", "4", "--boundary"]
    whole = run(*args, "--json", tmp_path / "whole.json")
    assert whole.returncode == 0, whole.stderr
    ranks = _run_ranks(args + ["--json", tmp_path / "ranks.json"])
    assert all(r.returncode == 0 for r in ranks), [r.stderr for r in ranks]
    assert "5 image pairs evaluated on 2 ranks" in ranks[0].stdout and ranks[1].stdout == ""
    assert "skipped 1 pair(s) of different sizes" in ranks[0].stderr  # found by rank 1, reported by rank 0
    assert json.loads((tmp_path / "ranks.json").read_text()) == json.loads((tmp_path / "whole.json").read_text())
    assert ranks[0].stdout.split("\n")[:-3] == whole.stdout.split("\n")[:-3]  # the same table
    # --shard alone: two partial tables whose matrices add up to the whole one.
    confusion = 0
    for rank in range(2):
        result = run(*args, "--shard", f"{rank}/2", "--json", tmp_path / f"s{rank}.json")
        assert result.returncode == 0 and f"shard {rank}/2" in result.stdout, result.stderr
        confusion = confusion + np.array(json.loads((tmp_path / f"s{rank}.json").read_text())["confusion"])
    assert confusion.tolist() == json.loads((tmp_path / "whole.json").read_text())["confusion"]


def test_under_the_real_torchrun(image_folder):
    # The launcher users have, not an imitation of its variables: torchrun --standalone on loopback.
    tmp, expected = image_folder
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "segpost"]
    env = dict(os.environ, SEGPOST_NUM_THREADS="1")
    refine = subprocess.run(torchrun + ["refine", str(tmp / "images"), str(tmp / "scores"), "-o", str(tmp / "out"),
                                        "-r", "--image-suffix", "_img.png"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert refine.returncode == 0, refine.stderr
    assert "shard 0/2: refined 3" in refine.stdout and "shard 1/2: refined 3" in refine.stdout
    for key, labels in expected.items():
        np.testing.assert_array_equal(_labels(tmp / "out" / f"{key}.png"), labels)
    # Score the refined labels against themselves: one table, from rank 0, over all 6 pairs.
    ev = subprocess.run(torchrun + ["eval", str(tmp / "out"), str(tmp / "out"), "-r", "--num-classes", "3"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert ev.stdout.count("mIoU 100.00") == 1 and "6 image pairs evaluated on 2 ranks" in ev.stdout


# --- scores that are probabilities --------------------------------------------------------------------------

def test_probabilities_given_as_logits_are_refused_naming_the_cli_option(tmp_path, capsys):
    from segpost.cli import main

    scores = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "p.npy", scores / scores.sum(0))
    io.imsave(tmp_path / "i.png", data.astronaut()[100:132, 150:182], check_contrast=False)
    assert main(["refine", str(tmp_path / "i.png"), str(tmp_path / "p.npy"), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "pass them as --probs" in err and "probs=" not in err
    assert not (tmp_path / "o.png").exists()
