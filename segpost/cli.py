"""The ``segpost`` command line."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


class UserError(Exception):
    """A mistake on the command line: reported as one sentence, exit code 2."""


def _demo(args) -> int:
    import numpy as np
    from skimage import data, io

    from . import bilateral_filter, get_num_threads

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = data.astronaut()
    rng = np.random.default_rng(0)
    noisy = np.clip(image + rng.normal(scale=20.0, size=image.shape), 0, 255).astype(np.uint8)
    print(f"bilateral filter of a {image.shape[1]}x{image.shape[0]} photo (skimage astronaut) "
          f"on {get_num_threads()} threads ...", flush=True)
    start = time.perf_counter()
    smooth = bilateral_filter(noisy, sigma_spatial=args.sigma_spatial, sigma_color=args.sigma_color)
    elapsed = time.perf_counter() - start
    result = np.clip(np.rint(smooth), 0, 255).astype(np.uint8)
    side_by_side = np.concatenate([noisy, result], axis=1)
    path = out_dir / "bilateral_astronaut.png"
    io.imsave(path, side_by_side, check_contrast=False)

    def psnr(x):
        mse = np.mean((x.astype(np.float64) - image) ** 2)
        return 10 * np.log10(255.0**2 / mse)

    print(f"  time       {elapsed * 1000:8.1f} ms")
    print(f"  PSNR noisy {psnr(noisy):8.2f} dB")
    print(f"  PSNR out   {psnr(result):8.2f} dB")
    print(f"wrote {path} (left: noisy input, right: filtered)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpost",
        description="Dense CRF refinement, metrics and pipelines for semantic segmentation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the demo on an embedded default photo and write pictures")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--sigma-spatial", type=float, default=8.0, help="spatial bandwidth in pixels")
    demo.add_argument("--sigma-color", type=float, default=30.0, help="colour bandwidth (0..255 units)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (UserError, ValueError, TypeError, OSError) as exc:
        print(f"segpost {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
