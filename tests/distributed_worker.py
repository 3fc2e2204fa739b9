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


def main(out_path):
    import torch.distributed as dist

    from segpost import SegMetrics

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    try:
        metrics = SegMetrics(5, ignore_index=255, per_image=True)
        metrics.update(*rank_data(rank))
        result = metrics.sync().compute()
        with open(out_path, "w") as f:
            json.dump(result.to_dict(), f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
