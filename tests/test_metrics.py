"""Metrics against np.bincount, scikit-learn and torchmetrics, plus edge cases."""
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import segpost
from segpost.metrics import SegMetrics, confusion_matrix, dice, iou, micro_iou, pixel_accuracy, precision, recall

INT_DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64]


def bincount_oracle(pred, target, k, ignore=()):
    """Reference confusion matrix with masks and np.bincount; returns (cm, number of invalid pixels)."""
    t = np.asarray(target).astype(np.int64).ravel()
    p = np.asarray(pred).astype(np.int64).ravel()
    keep = ~np.isin(t, list(ignore)) if ignore else np.ones(t.shape, bool)
    valid = keep & (t >= 0) & (t < k) & (p >= 0) & (p < k)
    cm = np.bincount(t[valid] * k + p[valid], minlength=k * k).reshape(k, k)
    return cm, int((keep & ~valid).sum())


@st.composite
def label_maps(draw, allow_invalid=True):
    k = draw(st.integers(1, 40))
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    dtype_t = draw(st.sampled_from(INT_DTYPES))
    dtype_p = draw(st.sampled_from([dtype_t, dtype_t, *INT_DTYPES]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    hi = min(k + (3 if allow_invalid else 0), 127)
    target = rng.integers(0, hi, size=shape)
    pred = rng.integers(0, hi, size=shape)
    ignore = draw(st.sampled_from([None, 255, 0, (0, 255), (k - 1, 200)]))
    if ignore is not None:
        values = [ignore] if isinstance(ignore, int) else list(ignore)
        mask = rng.random(shape) < 0.2
        target = np.where(mask, rng.choice(values, size=shape), target)
    if allow_invalid and draw(st.booleans()) and np.issubdtype(dtype_t, np.signedinteger):
        target = np.where(rng.random(shape) < 0.05, -1, target)
    return pred.astype(dtype_p), target.astype(dtype_t), k, ignore


@given(label_maps())
def test_confusion_matches_bincount_on_any_dtype_and_shape(case):
    pred, target, k, ignore = case
    ignore_values = () if ignore is None else ((ignore,) if isinstance(ignore, int) else ignore)
    expected, invalid = bincount_oracle(pred, target, k, ignore_values)
    cm = confusion_matrix(pred, target, k, ignore_index=ignore, on_invalid="ignore")
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64 and cm.num_invalid == invalid
    if invalid:
        with pytest.raises(ValueError, match=f"{invalid} pixel"):
            confusion_matrix(pred, target, k, ignore_index=ignore)
    else:
        np.testing.assert_array_equal(confusion_matrix(pred, target, k, ignore_index=ignore), expected)


@given(label_maps())
def test_lookup_path_equals_the_compare_path(case):
    # 8- and 16-bit labels take confusion._counts_by_lookup; the per-pixel compare path is its reference.
    from segpost.metrics import confusion

    pred, target, k, ignore = case
    pred, target = confusion._common_dtype(pred.ravel(), target.ravel())
    if target.dtype.itemsize > 2:  # the values fit in [-1, 255]
        pred, target = pred.astype(np.int16), target.astype(np.int16)
    ignore_values = confusion._normalise_ignore(ignore)
    assert confusion._uses_lookup(target.dtype, k)
    fast = confusion._counts_by_lookup(pred, target, k, ignore_values)
    plain = confusion._counts_by_compare(pred, target, k, ignore_values)
    np.testing.assert_array_equal(fast[0], plain[0])
    assert fast[1] == plain[1]


def test_lookup_path_at_its_largest_k_and_beyond():
    # K = 254 is the largest the uint16 tables address; K = 255 takes the compare path.
    rng = np.random.default_rng(1)
    for k in (254, 255):
        target = rng.integers(0, 256, size=5000).astype(np.uint8)
        pred = rng.integers(0, 256, size=5000).astype(np.uint8)
        expected, invalid = bincount_oracle(pred, target, k, (0, 255))
        cm = confusion_matrix(pred, target, k, ignore_index=(0, 255), on_invalid="ignore")
        np.testing.assert_array_equal(cm, expected)
        assert cm.num_invalid == invalid


@pytest.mark.filterwarnings("ignore:A single label was found")
@given(label_maps(allow_invalid=False))
def test_confusion_matches_sklearn(case):
    from sklearn.metrics import confusion_matrix as sk_confusion

    pred, target, k, ignore = case
    ignore_values = () if ignore is None else ((ignore,) if isinstance(ignore, int) else ignore)
    t, p = target.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
    keep = ~np.isin(t, list(ignore_values)) & (t >= 0) & (t < k) & (p >= 0) & (p < k)
    cm = confusion_matrix(pred, target, k, ignore_index=ignore, on_invalid="ignore")
    if keep.any():
        np.testing.assert_array_equal(cm, sk_confusion(t[keep], p[keep], labels=np.arange(k)))
    else:
        assert cm.sum() == 0


@given(st.integers(2, 30), st.integers(0, 2**32 - 1))
def test_confusion_and_scores_match_torchmetrics(k, seed):
    torch = pytest.importorskip("torch")
    from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

    rng = np.random.default_rng(seed)
    target = rng.integers(0, k, size=(2, 17, 23))
    pred = rng.integers(0, k, size=(2, 17, 23))
    target[rng.random(target.shape) < 0.1] = 255
    tm = MulticlassConfusionMatrix(num_classes=k, ignore_index=255)
    expected = tm(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), k, ignore_index=255)
    np.testing.assert_array_equal(cm.numpy(), expected)
    jaccard = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average=None)
    tm_iou = jaccard(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    ours = iou(cm, absent=0)  # torchmetrics scores absent classes 0
    np.testing.assert_allclose(ours, tm_iou, rtol=1e-6)


@given(label_maps(allow_invalid=False))
def test_scores_match_sklearn(case):
    from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

    pred, target, k, ignore = case
    t, p = target.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
    ignore_values = () if ignore is None else ((ignore,) if isinstance(ignore, int) else ignore)
    keep = ~np.isin(t, list(ignore_values)) & (t >= 0) & (t < k) & (p >= 0) & (p < k)
    if not keep.any():
        return
    cm = confusion_matrix(pred, target, k, ignore_index=ignore, on_invalid="ignore")
    labels = np.arange(k)
    present = (cm.sum(0) + cm.sum(1)) > 0
    for ours, theirs in (
        (iou(cm), jaccard_score(t[keep], p[keep], labels=labels, average=None, zero_division=0)),
        (dice(cm), f1_score(t[keep], p[keep], labels=labels, average=None, zero_division=0)),
        (precision(cm), precision_score(t[keep], p[keep], labels=labels, average=None, zero_division=0)),
        (recall(cm), recall_score(t[keep], p[keep], labels=labels, average=None, zero_division=0)),
    ):
        np.testing.assert_allclose(ours[present], theirs[present], rtol=1e-12)
        assert np.isnan(ours[~present]).all()
    acc = pixel_accuracy(cm)
    assert acc == pytest.approx((t[keep] == p[keep]).mean())
    assert micro_iou(cm) == pytest.approx(acc / (2 - acc))


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=5), st.integers(2, 12))
def test_streaming_over_batches_equals_one_call(seeds, k):
    batches = []
    metrics = SegMetrics(k, ignore_index=255)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        target = rng.integers(0, k, size=(rng.integers(1, 3), 9, 7)).astype(np.uint8)
        target[rng.random(target.shape) < 0.1] = 255
        pred = rng.integers(0, k, size=target.shape).astype(np.uint8)
        metrics.update(pred, target)
        batches.append((pred.reshape(-1), target.reshape(-1)))
    whole = confusion_matrix(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]), k,
                             ignore_index=255)
    np.testing.assert_array_equal(metrics.compute().confusion, whole)


def test_parallel_path_matches_serial_on_large_maps(monkeypatch):
    from segpost.metrics import confusion

    monkeypatch.setattr(confusion, "PARALLEL_THRESHOLD", 1 << 16)  # split even this map into 3 chunks
    rng = np.random.default_rng(0)
    target = rng.integers(0, 19, size=(1024, 1100)).astype(np.uint8)
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 19, size=target.shape).astype(np.uint8)
    expected, _ = bincount_oracle(pred, target, 19, (255,))
    previous = segpost.get_num_threads()
    try:
        for threads in (1, 2, 3):
            segpost.set_num_threads(threads)
            np.testing.assert_array_equal(confusion_matrix(pred, target, 19, ignore_index=255), expected)
    finally:
        segpost.set_num_threads(previous)


def test_scores_axis_conventions():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(6, 5))
    scores_single = rng.normal(size=(4, 6, 5)).astype(np.float32)
    np.testing.assert_array_equal(confusion_matrix(scores_single, target, 4),
                                  confusion_matrix(scores_single.argmax(0), target, 4))
    batch_target = rng.integers(0, 4, size=(2, 6, 5))
    scores_batch = rng.normal(size=(2, 4, 6, 5))
    np.testing.assert_array_equal(confusion_matrix(scores_batch, batch_target, 4),
                                  confusion_matrix(scores_batch.argmax(1), batch_target, 4))


@pytest.mark.parametrize(
    "pred, target, kwargs, error, match",
    [
        (np.zeros((3, 4), np.uint8), np.zeros((3, 5), np.uint8), {}, ValueError, "same shape"),
        (np.zeros((3, 4), np.float32), np.zeros((3, 4), np.uint8), {}, TypeError, "class"),
        (np.zeros((3, 4), np.uint8), np.zeros((3, 4), np.float32), {}, TypeError, "integer labels"),
        (np.array([0, 1, 7]), np.array([0, 9, 1]), {}, ValueError, r"2 pixel\(s\).*first bad value: 9"),
        (np.zeros(3, int), np.zeros(3, int), {"ignore_index": 1.5}, TypeError, "ignore_index"),
        (np.zeros(3, int), np.zeros(3, int), {"on_invalid": "skip"}, ValueError, "on_invalid"),
    ],
)
def test_bad_input(pred, target, kwargs, error, match):
    with pytest.raises(error, match=match):
        confusion_matrix(pred, target, 3, **kwargs)


@pytest.mark.parametrize("k", [0, -1, 1.5, True, 70000])
def test_bad_num_classes(k):
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(np.zeros(3, int), np.zeros(3, int), k)


def test_edge_cases():
    # empty inputs and all pixels ignored: a zero matrix, undefined scores
    empty = confusion_matrix(np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8), 3)
    assert empty.shape == (3, 3) and empty.sum() == 0
    all_ignored = confusion_matrix(np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8), 3, ignore_index=255)
    assert all_ignored.sum() == 0
    result = SegMetrics(3).compute()
    assert math.isnan(result.miou) and result.num_valid_classes == 0
    # absent and predicted-only classes
    cm = confusion_matrix(np.array([0, 0, 2, 2]), np.array([0, 0, 0, 0]), 4)
    values = iou(cm)
    assert values[0] == 0.5 and values[2] == 0.0 and np.isnan(values[1]) and np.isnan(values[3])
    res = SegMetrics(4)
    res.update(np.array([0, 0, 2, 2]), np.array([0, 0, 0, 0]))
    r = res.compute()
    assert r.miou == pytest.approx(0.25) and r.num_valid_classes == 2  # the predicted-only class counts
    assert SegMetrics(4, absent=0).update(np.array([0, 0, 2, 2]), np.array([0, 0, 0, 0])) is None
    # uint8 with many classes, K = 1, K = 1000
    rng = np.random.default_rng(0)
    t = rng.integers(0, 200, size=5000).astype(np.uint8)
    np.testing.assert_array_equal(confusion_matrix(t, t, 200), np.diag(np.bincount(t, minlength=200)))
    assert confusion_matrix(np.zeros(10, np.uint8), np.zeros(10, np.uint8), 1).tolist() == [[10]]
    big = rng.integers(0, 1000, size=20000)
    cm = confusion_matrix(big, big[::-1].copy(), 1000)
    np.testing.assert_array_equal(cm, bincount_oracle(big, big[::-1], 1000)[0])
    # ignore values inside [0, K)
    cm = confusion_matrix(np.array([0, 1, 2]), np.array([0, 1, 2]), 3, ignore_index=[1])
    assert cm.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_counts_beyond_two_to_the_32_via_merge():
    a, b = SegMetrics(2), SegMetrics(2)
    a.load_state_dict({**a.state_dict(), "confusion": np.array([[2**32 - 1, 0], [0, 5]])})
    b.load_state_dict({**b.state_dict(), "confusion": np.array([[2**32 - 1, 3], [0, 5]])})
    a.merge(b)
    assert a.confusion[0, 0] == 2 * (2**32 - 1) and a.confusion.dtype == np.int64
    assert a.compute().pixel_accuracy == pytest.approx((2 * (2**32 - 1) + 10) / (2 * (2**32 - 1) + 13))


def test_result_object_table_dict_and_state():
    metrics = SegMetrics(3, ignore_index=255, class_names=["sky", "road", "car"], per_image=True, exclude_classes=[0])
    metrics.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 1]]))
    metrics.update(np.array([[1, 1], [1, 1]]), np.array([[1, 1], [1, 255]]))
    result = metrics.compute()
    text = result.table()
    assert "sky" in text and "(excluded)" in text and "per-image mIoU" in text
    d = result.to_dict()
    json.dumps(d)
    assert d["class_names"] == ["sky", "road", "car"] and d["num_images"] == 2
    # per-image and dataset-level mIoU are different numbers under different names
    assert result.per_image_miou != pytest.approx(result.miou)
    restored = SegMetrics(3, ignore_index=255, per_image=True, exclude_classes=[0]).load_state_dict(metrics.state_dict())
    assert restored.compute().miou == result.miou
    metrics.reset()
    assert metrics.confusion.sum() == 0


def _saved_state():
    metrics = SegMetrics(3, per_image=True, boundary=True)
    target = np.zeros((2, 8, 8), np.int64)
    target[:, 2:6, 2:6] = 1
    metrics.update(target, target)
    return metrics, metrics.state_dict()


@pytest.mark.parametrize("key, value, fragment", [
    ("confusion", np.full((3, 3), np.nan), "NaN"),
    ("confusion", np.full((3, 3), -1), "negative"),
    ("confusion", np.full((3, 3), 0.5), "fractional"),
    ("confusion", np.full((3, 3), 1e30), "out-of-range"),
    ("confusion", np.zeros((2, 2), np.int64), "shape"),
    ("confusion", "abc", "integer counts"),
    ("boundary_union", np.zeros(2, np.int64), "shape"),   # after confusion: nothing may be half-loaded
    ("boundary_intersection", np.full(3, -5), "negative"),
    ("num_images", -1, "negative"),
    ("num_images", 2.5, "fractional"),
    ("num_invalid", float("nan"), "NaN"),
    ("per_image_sum", float("nan"), "finite"),
    ("per_image_sum", -1.0, "finite"),
    ("per_image_sum", 100.0, "exceeds"),
    ("confusion", None, "no 'confusion'"),
    ("boundary_union", None, "no 'boundary_union'"),
    ("per_image_sum", None, "no 'per_image_sum'"),
])
def test_a_corrupted_state_never_loads(key, value, fragment):
    """The whole state is checked before anything is assigned: a ValueError naming the key, the object intact."""
    import torch

    target_metrics, _ = _saved_state()
    before = target_metrics.state_dict()
    _, state = _saved_state()
    if value is None:
        del state[key]
    else:
        state[key] = torch.from_numpy(value) if isinstance(value, np.ndarray) and value.dtype != object else value
    with pytest.raises(ValueError, match=f"{key}") as info:
        target_metrics.load_state_dict(state)
    assert fragment in str(info.value)
    after = target_metrics.state_dict()
    assert all(np.array_equal(np.asarray(after[k]), np.asarray(before[k])) for k in before)


def test_states_load_from_floats_that_hold_counts_and_from_before_scored_images_were_counted():
    metrics, state = _saved_state()
    state = {**state, "confusion": state["confusion"].double()}
    del state["num_scored_images"]
    restored = SegMetrics(3, per_image=True, boundary=True).load_state_dict(state)
    assert restored.compute().miou == metrics.compute().miou
    assert restored.num_scored_images == restored.num_images == 2


@pytest.mark.parametrize("dtype, bad", [(np.uint64, 2**64 - 1), (np.uint64, 2**63), (np.int64, -(2**63)),
                                        (np.uint8, 255), (np.int16, -3)])
def test_the_first_bad_value_reads_as_the_label_does(dtype, bad):
    target = np.array([0, 1, bad, 1], dtype)
    with pytest.raises(ValueError, match=f"first bad value: {bad}\\)"):
        confusion_matrix(target, target, 2)
    assert confusion_matrix(target, target, 2, on_invalid="ignore").first_invalid == bad


def test_num_images_counts_every_image_with_or_without_per_image():
    metrics = SegMetrics(2)
    for _ in range(3):
        metrics.update(np.zeros((2, 4, 4), np.int64), np.zeros((2, 4, 4), np.int64))
    metrics.update(np.zeros((4, 4), np.int64), np.zeros((4, 4), np.int64))
    assert metrics.compute().to_dict()["num_images"] == 7


def test_torch_inputs_and_numpy_agree():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(3, 8, 8)).astype(np.uint8)
    pred = rng.integers(0, 5, size=(3, 8, 8)).astype(np.uint8)
    cm_t = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 5)
    assert isinstance(cm_t, torch.Tensor) and cm_t.dtype == torch.int64
    np.testing.assert_array_equal(cm_t.numpy(), confusion_matrix(pred, target, 5))
    # The device (torch-ops) path, exercised on the CPU.
    from segpost.metrics.confusion import _torch_confusion

    cm_dev, invalid, _ = _torch_confusion(torch.from_numpy(pred), torch.from_numpy(target), 5, (255,))
    np.testing.assert_array_equal(cm_dev.numpy(), confusion_matrix(pred, target, 5))
    assert invalid == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(tmp_path, mode):
    worker = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, worker, str(tmp_path / f"rank{r}.json"), mode],
                              env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("mode", ["evaluate", "evaluate_sampler", "evaluate_loader"])
def test_distributed_evaluate_counts_every_sample_once(tmp_path, mode):
    # 5 samples on 2 ranks: a list, a DataLoader with batches of 2, and one with a DistributedSampler (which
    # repeats one sample to even the ranks out).
    results = _run_two_ranks(tmp_path, mode)
    from distributed_worker import evaluation_dataset

    whole = SegMetrics(5, per_image=True)
    for image, target in evaluation_dataset():
        whole.update(image, target)
    for res in results:
        assert res["confusion"] == whole.confusion.tolist()
        assert res["num_images"] == 5


def _ranks_counted(*ranks, boundary=False):
    """One process's SegMetrics over the given ranks' data (the workers' metrics mode)."""
    from distributed_worker import rank_data

    metrics = SegMetrics(5, ignore_index=255, per_image=True, boundary=boundary)
    for r in ranks:
        metrics.update(*rank_data(r))
    return metrics


def test_distributed_sync_with_two_gloo_processes(tmp_path):
    pytest.importorskip("torch")
    results = _run_two_ranks(tmp_path, "metrics")
    # Both ranks hold the sum; it equals one process counting everything.
    expected = _ranks_counted(0, 1, boundary=True).compute()
    for res in results:
        assert np.array_equal(res["confusion"], expected.confusion.tolist())
        assert res["miou"] == pytest.approx(expected.miou)
        assert res["per_image_miou"] == pytest.approx(expected.per_image_miou)
        assert res["boundary_iou"] == pytest.approx(expected.boundary_iou.tolist())  # band counts synced too
        assert res["mboundary_iou"] == pytest.approx(expected.mboundary_iou)


def test_distributed_sync_twice_never_double_counts(tmp_path):
    pytest.importorskip("torch")
    results = _run_two_ranks(tmp_path, "sync_twice")
    whole = _ranks_counted(0, 1)
    for rank, res in enumerate(results):
        own = _ranks_counted(rank)
        for synced in (res["first"], res["second"]):
            assert synced["confusion"] == whole.confusion.tolist()
            assert synced["num_images"] == whole.num_images == 4
            assert synced["per_image_miou"] == pytest.approx(whole.compute().per_image_miou)
        assert res["update_while_synced"] == "raised"
        assert res["local"]["confusion"] == own.confusion.tolist()
        assert res["after_unsync_images"] == 4  # own 2 images, then 2 more


def test_unsync_without_sync_is_a_no_op_and_sync_without_a_group_changes_nothing():
    metrics = SegMetrics(3, per_image=True)
    target = np.arange(12).reshape(3, 4) % 3
    metrics.update(target, target)
    before = metrics.state_dict()
    metrics.sync().unsync()
    metrics.update(target, target)  # still allowed: nothing was synced
    assert metrics.num_images == 2 and int(metrics.confusion.sum()) == 2 * int(before["confusion"].sum())


# --- inputs once mishandled ---------------------------------------------------------------------------------

RNG = np.random.default_rng(0)


def test_big_endian_label_maps():
    pred = RNG.integers(0, 4, (16, 16)).astype(">u2")
    target = RNG.integers(0, 4, (16, 16)).astype(">i4")
    expected = segpost.confusion_matrix(pred.astype(np.int64), target.astype(np.int64), 4)
    np.testing.assert_array_equal(segpost.confusion_matrix(pred, target, 4), expected)
    metrics = segpost.SegMetrics(4)
    metrics.update(pred, target)
    np.testing.assert_array_equal(metrics.confusion, expected)


def test_ignore_index_beyond_int64_is_harmless():
    pred = np.array([0, 1, 2, 1])
    for ignore in (2**63, 2**64, -(2**63) - 1):
        np.testing.assert_array_equal(segpost.confusion_matrix(pred, pred, 3, ignore_index=ignore),
                                      np.diag([1, 2, 1]))


# --- what a user's eval loop hands SegMetrics (each once gave a wrong answer) -------------------------------

def test_one_channel_scores_in_metrics_raise_with_the_fix():
    torch = pytest.importorskip("torch")
    target = np.zeros((2, 8, 8), np.int64)
    with pytest.raises(ValueError, match=r"\(pred > 0\)"):
        SegMetrics(2).update(np.zeros((2, 1, 8, 8), np.float32), target)
    with pytest.raises(ValueError, match=r"\(pred > 0\)"):
        segpost.confusion_matrix(torch.zeros(1, 8, 8), torch.zeros(8, 8, dtype=torch.long), 2)


def test_a_result_keeps_its_confusion_after_later_updates():
    metrics = SegMetrics(3)
    target = np.arange(16).reshape(4, 4) % 3
    metrics.update(target, target)
    first = metrics.compute()
    metrics.update(np.zeros_like(target), target)
    assert first.confusion.sum() == 16 and np.trace(first.confusion) == 16 and first.miou == 1.0


def test_state_dict_loads_weights_only_and_records_its_settings(tmp_path):
    torch = pytest.importorskip("torch")
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
