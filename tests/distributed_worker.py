"""One rank of the two-process torch.distributed test (gloo on loopback)."""
import json
import os
import sys

import numpy as np


def rank_data(rank):
    rng = np.random.default_rng(100 + rank)
    target = rng.integers(0, 5, size=(2, 16, 16)).astype(np.uint8)
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 5, size=target.shape).astype(np.uint8)
    return pred, target


def rank_volumes(rank):
    """Two (pred, target) volumes per rank for the surface metrics: organs, shifted and missed, one class empty."""
    rng = np.random.default_rng(200 + rank)
    target = np.zeros((2, 6, 12, 10), np.uint8)
    target[:, 1:5, 2:9, 2:7] = 1
    target[:, 2:4, 8:11, 6:9] = 2
    pred = np.roll(target, rank + 1, axis=3)
    pred[rng.random(pred.shape) < 0.02] = 1
    pred[1][pred[1] == 2] = 0
    return pred, target


SURFACE_SPACING = (2.5, 0.7, 0.9)


def evaluation_dataset():
    """Five (image, target) samples; odd world sizes leave ranks with different counts."""
    rng = np.random.default_rng(7)
    return [(rng.integers(0, 5, size=(12, 10)), rng.integers(0, 5, size=(12, 10))) for _ in range(5)]


def torch_tensor(array):
    import torch

    return torch.from_numpy(array.astype(np.int64))


def main(out_path, mode):
    import torch.distributed as dist

    from segpost import SegMetrics, evaluate

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    try:
        if mode == "evaluate":
            # The "pipeline" returns the image itself as labels; each rank takes its own shard.
            result = evaluate(lambda image: image, evaluation_dataset(), num_classes=5, progress=False, per_image=True)
        elif mode in ("evaluate_sampler", "evaluate_loader"):
            # Batched DataLoaders: with a DistributedSampler (5 samples on 2 ranks: one padding repeat to skip),
            # and a plain one that every rank iterates whole.
            import torch
            from torch.utils.data import DataLoader, DistributedSampler

            data = [(torch.from_numpy(image), torch.from_numpy(target)) for image, target in evaluation_dataset()]
            sampler = DistributedSampler(data, shuffle=True, seed=3) if mode == "evaluate_sampler" else None
            loader = DataLoader(data, batch_size=2, sampler=sampler)
            result = evaluate(lambda image: image, loader, num_classes=5, progress=False, per_image=True)
        elif mode == "sync_twice":
            metrics = SegMetrics(5, ignore_index=255, per_image=True)
            metrics.update(*rank_data(rank))
            first = metrics.sync().compute().to_dict()
            second = metrics.sync().compute().to_dict()  # the local counts summed again, not the sums
            try:
                metrics.update(*rank_data(rank))
                update_while_synced = "accepted"
            except RuntimeError:
                update_while_synced = "raised"
            local = metrics.unsync().compute().to_dict()
            metrics.update(*rank_data(rank))  # allowed again after unsync
            result = {"first": first, "second": second, "local": local, "update_while_synced": update_while_synced,
                      "after_unsync_images": metrics.num_images}
        elif mode == "surface":
            metrics = SegMetrics(4, surface=True, spacing=SURFACE_SPACING, tolerance=1.5, exclude_classes=[0])
            metrics.update(*rank_volumes(rank))
            result = metrics.sync().compute()
        elif mode == "lightning":
            # torchmetrics imports torchvision: the tests' way of importing it next to the CPU torch.
            # (PYTHONSAFEPATH=1 leaves this script's folder off sys.path: conftest is found by its path.)
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from conftest import _import_torchvision_without_its_c_ops

            _import_torchvision_without_its_c_ops()
            from segpost.metrics import lightning

            result = {}
            for name in ("MeanIoU", "Dice", "PixelAccuracy", "BoundaryIoU"):
                metric = getattr(lightning, name)(5, ignore_index=255)
                batch = metric(*(torch_tensor(x) for x in rank_data(rank)))  # this rank's batch alone
                result[name] = {"batch": float(batch), "synced": float(metric.compute())}
        else:
            metrics = SegMetrics(5, ignore_index=255, per_image=True, boundary=True)
            metrics.update(*rank_data(rank))
            result = metrics.sync().compute()
        with open(out_path, "w") as f:
            json.dump(result if isinstance(result, dict) else result.to_dict(), f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "metrics")
    if len(sys.argv) > 2 and sys.argv[2] == "lightning":
        # The result is written and the group destroyed. Seen in some runs (never alone): a C++ thread of an
        # imported library (torchmetrics/lightning pull in many) aborts the interpreter's teardown with
        # "terminate called without an active exception"; skip the teardown, which has nothing left to do.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
