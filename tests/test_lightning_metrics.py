"""segpost.metrics.lightning: torchmetrics Metrics equal to SegMetrics, synced over gloo, logged by Lightning.

torchmetrics and lightning are test extras: under CI=1 a missing one fails these tests instead of skipping them.
"""
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from segpost import SegMetrics
from oracles import need



SCORES = {"MeanIoU": "miou", "Dice": "mdice", "PixelAccuracy": "pixel_accuracy", "BoundaryIoU": "mboundary_iou"}


def _metric(name, num_classes, **options):
    lightning = need("segpost.metrics.lightning", "lightning")
    return getattr(lightning, name)(num_classes, **options)


@st.composite
def batches(draw):
    k = draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draw(st.integers(1, 3))):
        b = draw(st.integers(1, 3))
        target = rng.integers(0, k, (b, h, w))
        target[rng.random(target.shape) < 0.1] = 255
        if k >= 2 and draw(st.booleans()):
            pred = rng.normal(size=(b, k, h, w)).astype(np.float32)  # scores are argmaxed
        else:
            pred = np.where(rng.random(target.shape) < 0.6, np.clip(target, 0, k - 1), rng.integers(0, k, target.shape))
        out.append((torch.from_numpy(pred), torch.from_numpy(target)))
    return k, out, draw(st.sampled_from(["nan", 0, 1])), draw(st.sampled_from([(), (0,)]))


@pytest.mark.parametrize("name", sorted(SCORES))
@given(data=batches())
def test_lightning_metrics_equal_segmetrics(name, data):
    k, batches_, absent, exclude = data
    options = dict(ignore_index=255, exclude_classes=exclude)
    if name != "BoundaryIoU":
        options["absent"] = absent
    metric = _metric(name, k, **options)
    reference = SegMetrics(k, ignore_index=255, exclude_classes=exclude, boundary=True,
                           **({"absent": absent} if name != "BoundaryIoU" else {}))
    for pred, target in batches_:
        one_batch = SegMetrics(k, ignore_index=255, exclude_classes=exclude, boundary=True,
                               **({"absent": absent} if name != "BoundaryIoU" else {}))
        one_batch.update(pred, target)
        batch_value = metric(pred, target)  # forward: the batch's value, and the batch is counted
        np.testing.assert_equal(float(batch_value), getattr(one_batch.compute(), SCORES[name]))
        reference.update(pred, target)
    value = metric.compute()
    assert value.ndim == 0 and value.dtype == torch.float64
    np.testing.assert_equal(float(value), getattr(reference.compute(), SCORES[name]))
    metric.reset()
    state = metric.metric_state
    assert all(not v.any() for v in state.values())


def test_lightning_metric_states_are_sums_of_counts():
    for name in SCORES:
        metric = _metric(name, 4)
        assert type(metric).full_state_update is False
        assert set(metric._reductions) == ({"confusion"} if name != "BoundaryIoU" else {"intersection", "union"})
        for state in metric.metric_state.values():
            assert state.dtype == torch.int64
        from torchmetrics.utilities.data import dim_zero_sum

        assert all(fn is dim_zero_sum for fn in metric._reductions.values())


def test_lightning_metrics_validate_like_segmetrics():
    with pytest.raises(ValueError, match="exclude_classes"):
        _metric("MeanIoU", 3, exclude_classes=(5,))
    with pytest.raises(ValueError, match="num_classes"):  # SegMetrics' rule for it
        _metric("Dice", 0)
    with pytest.raises(ValueError, match="boundary_dilation_ratio"):
        _metric("BoundaryIoU", 3, dilation_ratio=0.0)
    metric = _metric("MeanIoU", 3)
    with pytest.raises(ValueError):
        metric.update(torch.tensor([[0, 7]]), torch.tensor([[0, 1]]))  # a label beyond the classes
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))


def test_importing_segpost_does_not_import_torchmetrics_and_a_missing_one_says_how_to_install():
    code = ("import sys, segpost, segpost.metrics, segpost.nn\n"
            "print('torchmetrics' in sys.modules)\n"
            "sys.modules['torchmetrics'] = None\n"
            "try:\n"
            "    import segpost.metrics.lightning\n"
            "except ImportError as exc:\n"
            "    print('pip install segpost[lightning]' in str(exc))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_lightning_metrics_sum_over_two_gloo_processes(tmp_path):
    need("torchmetrics", "lightning")
    from distributed_worker import rank_data
    from test_metrics import _run_two_ranks

    results = _run_two_ranks(tmp_path, "lightning")
    both = SegMetrics(5, ignore_index=255, boundary=True)
    for r in (0, 1):
        both.update(*rank_data(r))
    for rank, result in enumerate(results):
        own = SegMetrics(5, ignore_index=255, boundary=True)
        own.update(*rank_data(rank))
        for name, score in SCORES.items():
            assert result[name]["batch"] == pytest.approx(getattr(own.compute(), score), abs=1e-12)
            assert result[name]["synced"] == pytest.approx(getattr(both.compute(), score), abs=1e-12)


def test_lightning_trainer_validate_logs_the_segmetrics_values():
    pl = need("lightning.pytorch", "lightning")
    lightning_metrics = need("segpost.metrics.lightning", "lightning")
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    images = torch.rand(6, 3, 16, 16)
    targets = torch.randint(0, 3, (6, 16, 16))
    targets[:, :2] = 255

    class TinySegmenter(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.metrics = torch.nn.ModuleDict({name: getattr(lightning_metrics, name)(3, ignore_index=255)
                                                for name in SCORES})

        def validation_step(self, batch, batch_idx):
            image, target = batch
            logits = self.head(image)
            for name, metric in self.metrics.items():
                metric.update(logits, target)
                self.log(f"val/{name}", metric, on_epoch=True)

    model = TinySegmenter()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(model, DataLoader(TensorDataset(images, targets), batch_size=4), verbose=False)[0]
    reference = SegMetrics(3, ignore_index=255, boundary=True)
    with torch.no_grad():
        reference.update(model.head(images), targets)
    result = reference.compute()
    for name, score in SCORES.items():
        assert logged[f"val/{name}"] == pytest.approx(getattr(result, score), rel=1e-6)
