"""The ``segpost`` command line: demo, refine, eval, bench.

A user mistake (missing file, unreadable image, wrong shapes, bad JSON) is
reported as one sentence on stderr with exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from ._datasets import (IMAGE_SUFFIXES, LOSSY_SUFFIXES, SCORE_SUFFIXES, VOLUME_SUFFIXES, UserError, is_volume,
                        list_files, pair_files, read_ahead, read_image, read_label_map, read_palette, read_scores,
                        read_volume, refuse_outputs_over_inputs, save_npy, shard, shard_spec, write_palette_png)


# ------------------------------------------------------------------------------ demo

def _demo(args) -> int:
    from .demo import run_demo

    rows, elapsed, out = run_demo(args.out, params=args.preset)
    print()
    print(f"{'':<20} {'mIoU':>8} {'boundary F':>11} {'trimap acc':>11}")
    for name, r in rows.items():
        print(f"{name:<20} {100 * r['miou']:>7.2f}% {100 * r['boundary_f']:>10.2f}% {100 * r['trimap_acc']:>10.2f}%")
    gain = rows["CRF-refined"]["miou"] - rows["coarse (upsampled)"]["miou"]
    print(f"CRF: {elapsed * 1000:.0f} ms, mIoU {100 * gain:+.2f} points")
    print(f"pictures: {out / 'demo.png'} (side by side), input.png, ground_truth.png, coarse.png, refined.png")
    return 0


# -------------------------------------------------------------------------- progress

class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a dataset run: the message says what was done and how to go on."""


class _Progress:
    """A tqdm bar on a terminal; elsewhere (logs, CI, nohup) a line every 10% of the work or every 30 s, once the
    run has lasted SILENT_FOR_S (a quick run prints its summary alone)."""

    LINE_EVERY_S = 30.0
    SILENT_FOR_S = 5.0

    def __init__(self, total, desc, *, quiet=False):
        import time

        self.total, self.desc, self.done = total, desc, 0
        self.bar = None
        self.lines = not quiet and not sys.stderr.isatty() and total > 0
        if not quiet and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img")
        self._clock = time.monotonic
        self.start = self.last_time = self._clock()
        self.last_done = 0

    def update(self, n=1):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines:
            now = self._clock()
            if now - self.start < self.SILENT_FOR_S:
                return
            if (self.done == self.total or 10 * (self.done - self.last_done) >= self.total
                    or now - self.last_time >= self.LINE_EVERY_S):
                rate = self.done / max(now - self.start, 1e-9)
                print(f"{self.desc}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), "
                      f"{rate:.1f} img/s", file=sys.stderr, flush=True)
                self.last_time, self.last_done = now, self.done

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------- refine

def _check_output(path, suffixes, option):
    """Refuse an output path before any work: a wrong extension or a folder that cannot be written."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise UserError(f"{option} must end in {' or '.join(suffixes)}, got {path}")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"cannot write {path}: the folder {folder} is not writable")


def _crf_params(args):
    """The preset with ``--params`` applied, and ``--iterations`` checked, before any image is read."""
    from .crf import CRFParams

    params = CRFParams.coerce(args.preset)
    if args.params:
        try:
            changes = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise UserError(f"--params is not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(changes, dict):
            raise UserError("--params must be a JSON object such as '{\"bi_weight\": 5}'")
        params = CRFParams.coerce({**{f: getattr(params, f) for f in params.__dataclass_fields__}, **changes})
    if args.iterations is not None and args.iterations < 0:
        raise UserError(f"--iterations must be at least 0, got {args.iterations}")
    return params


def _refine_arrays(image, scores, *, probs, params, iterations):
    """crf_refine as the command line runs it: labels and probabilities; probabilities given as logits are refused
    naming --probs."""
    from ._validation import refuse_probabilities_as_logits
    from .crf import crf_refine

    if not probs:  # crf_refine's own check, naming the command line's option instead of the API's
        refuse_probabilities_as_logits(scores, fix="--probs")
    kwargs = {"probs": scores} if probs else {"logits": scores}
    return crf_refine(image, iterations=iterations, params=params, return_probs=True, **kwargs)


def _one_line(exc):
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _refine_image(args) -> int:
    """One IMAGE and its LOGITS to one label PNG (and optionally an overlay and the probabilities)."""
    import numpy as np

    _check_output(args.output, (".png",), "-o/--output (a palette PNG of labels)")
    if args.overlay:
        _check_output(args.overlay, (".png", ".jpg", ".jpeg"), "--overlay")
    probs_path = args.save_probs
    if probs_path is True:  # --save-probs without a name: beside the labels, as in folder mode
        probs_path = str(Path(args.output).with_name(Path(args.output).stem + "_probs.npy"))
    if probs_path:
        _check_output(probs_path, (".npy",), "--save-probs")
    outputs = [("-o/--output", args.output), ("--overlay", args.overlay), ("--save-probs", probs_path)]
    refuse_outputs_over_inputs([(option, path) for option, path in outputs if path], [args.image, args.logits])
    params = _crf_params(args)
    image = read_image(args.image)
    scores = read_scores(args.logits)
    labels, probs = _refine_arrays(image, scores, probs=args.probs, params=params, iterations=args.iterations)
    write_palette_png(args.output, labels)
    print(f"wrote {args.output} ({labels.shape[1]}x{labels.shape[0]}, {scores.shape[0]} classes)")
    if args.overlay:
        from skimage import io

        from .viz import overlay

        io.imsave(args.overlay, overlay(image, labels), check_contrast=False)
        print(f"wrote {args.overlay}")
    if probs_path:
        np.save(probs_path, probs)
        print(f"wrote {probs_path} (float32 {probs.shape})")
    return 0


def _refine_task(task):
    """Refine one pair (in a worker process or in this one).

    Returns
    -------
    status : {"done", "failed"}
    key, message : str
        ``message``: why it failed (one sentence), else "".
    warnings : list of str
        The distinct warnings it raised (the parent reports each once, with a count).
    """
    key, image_path, scores_path, out, probs_out, settings = task
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            labels, probs = _refine_arrays(read_image(image_path), read_scores(scores_path), **settings)
            out.parent.mkdir(parents=True, exist_ok=True)
            if probs_out is not None:  # the labels last: resuming looks for them
                save_npy(probs_out, probs)
            write_palette_png(out, labels)
            status, message = "done", ""
        except (UserError, ValueError, TypeError, OSError, MemoryError) as exc:  # listed in the summary, not fatal
            status, message = "failed", _one_line(exc)
    return status, key, message, sorted({_one_line(w.message) for w in caught})


def _init_worker(threads):
    import signal

    from ._threads import set_num_threads

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops handing out work
    set_num_threads(threads)


def _threads_per_worker(workers):
    """The kernels' threads in each of ``workers`` processes: workers x threads <= this machine's cores.

    Under torchrun the ranks on one machine (``LOCAL_WORLD_SIZE``) share its cores too;
    ``SEGPOST_NUM_THREADS``, where set, caps the result.
    """
    from ._threads import get_num_threads

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    local = int(local) if local.isdigit() and int(local) > 0 else 1
    threads = max(1, cores // (workers * local))
    return min(threads, get_num_threads()) if os.environ.get("SEGPOST_NUM_THREADS") else threads


def _check_output_folder(out_dir, images):
    """Refuse -o for a folder of images before any work: a file name, an unwritable place, the images' folder."""
    if out_dir.suffix.lower() in IMAGE_SUFFIXES + SCORE_SUFFIXES:
        raise UserError(f"with a folder of images -o/--output is a folder, got {out_dir}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"-o/--output {out_dir} exists and is not a folder")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not out_dir.exists() and not parent.is_dir():
        raise UserError(f"cannot create {out_dir}: the folder {parent} does not exist")
    if not os.access(out_dir if out_dir.exists() else parent, os.W_OK):
        raise UserError(f"cannot write into {out_dir}: not writable")
    if images.is_dir() and out_dir.exists() and out_dir.resolve() == images.resolve():
        raise UserError("-o/--output is the IMAGES folder: the labels would replace the images")


def _run_tasks(tasks, workers, threads, desc, quiet, results):
    """``_refine_task`` over ``tasks``: in this process for one worker, else in a pool; results appended to
    ``results`` as they finish (so that an interrupted run still knows what it wrote)."""
    with _Progress(len(tasks), desc, quiet=quiet) as bar:
        if workers == 1:
            from ._threads import set_num_threads

            set_num_threads(threads)
            for task in tasks:
                results.append(_refine_task(task))
                bar.update()
            return results
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn, not fork: a fresh interpreter per worker whatever threads this process has started.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads,)) as pool:
            futures = [pool.submit(_refine_task, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    results.append(future.result())
                    bar.update()
            except KeyboardInterrupt:
                pool.shutdown(cancel_futures=True)
                raise
    return results


def _refine_dataset(args) -> int:
    """A folder (or list) of images and one of scores to a folder of label PNGs, resumable and sharded."""
    if args.overlay:
        raise UserError("--overlay writes one picture: use it with one IMAGE, not a folder or a list")
    if args.save_probs not in (None, True):
        raise UserError("with a folder of images --save-probs takes no file name: it writes NAME_probs.npy beside "
                        "each NAME.png")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    out_dir = Path(args.output)
    _check_output_folder(out_dir, Path(args.image))
    params = _crf_params(args)
    rank, world, _ = shard_spec(args.shard)
    images = list_files(args.image, suffix=args.image_suffix, recursive=args.recursive, name="IMAGES")
    scores = list_files(args.logits, suffix=args.logits_suffix, extensions=SCORE_SUFFIXES, recursive=args.recursive,
                        name="LOGITS")
    pairs, no_scores, no_image = pair_files(images, scores)
    if not pairs:
        raise UserError(f"no image in {args.image} has scores of the same name in {args.logits} "
                        f"({len(images)} images, {len(scores)} score files; see --image-suffix, --logits-suffix, -r)")
    if rank == 0:  # every rank pairs the same files: one of them says what was left out
        if no_scores:
            print(f"warning: {len(no_scores)} image(s) have no scores, e.g. {no_scores[:3]}", file=sys.stderr)
        if no_image:
            print(f"warning: {len(no_image)} score file(s) have no image, e.g. {no_image[:3]}", file=sys.stderr)
    mine = shard(pairs, rank, world)
    outputs = {key: (out_dir / f"{key}.png", out_dir / f"{key}_probs.npy" if args.save_probs else None)
               for key, _, _ in mine}
    # Every output against every file read (an image of another pair too, the lists themselves), before any
    # work: an output that is an input must not pass for a finished output either.
    refuse_outputs_over_inputs(
        [(option, path) for out, probs_out in outputs.values()
         for option, path in (("-o/--output", out), ("--save-probs", probs_out)) if path is not None],
        [*images.values(), *scores.values(), *(Path(s) for s in (args.image, args.logits) if Path(s).is_file())])
    out_dir.mkdir(exist_ok=True)
    tasks, existing = [], []
    settings = {"probs": args.probs, "params": params, "iterations": args.iterations}
    for key, image_path, scores_path in mine:
        out, probs_out = outputs[key]
        if not args.overwrite and out.is_file() and (probs_out is None or probs_out.is_file()):
            existing.append(key)
        else:
            tasks.append((key, image_path, scores_path, out, probs_out, settings))
    where = f"shard {rank}/{world}: " if world > 1 else ""
    workers = min(args.workers, max(1, len(tasks)))
    threads = _threads_per_worker(workers)
    results = []
    try:
        _run_tasks(tasks, workers, threads, f"refine {where}".strip(": "), args.quiet, results)
    except KeyboardInterrupt:
        written = sum(status == "done" for status, *_ in results)
        raise Interrupted(f"interrupted: {written} of {len(tasks)} label maps written to {out_dir} "
                          f"({len(existing)} were there before); run the same command again to resume (finished "
                          f"outputs are skipped)") from None
    warned = {}  # message -> the images that raised it: each kind reported once
    for _, key, _, messages in sorted(results):
        for message in messages:
            warned.setdefault(message, []).append(key)
    for message, keys in warned.items():
        print(f"warning: {len(keys)} image(s): {message} (e.g. {keys[0]})", file=sys.stderr)
    failed = sorted((key, message) for status, key, message, _ in results if status == "failed")
    for key, message in failed[:10]:
        print(f"failed: {key}: {message}", file=sys.stderr)
    if len(failed) > 10:
        print(f"failed: ... and {len(failed) - 10} more", file=sys.stderr)
    print(f"{where}refined {len(results) - len(failed)}, skipped {len(existing)} (output exists; --overwrite "
          f"redoes them), failed {len(failed)}; {len(mine)} of {len(pairs)} pairs, {workers} worker(s) x "
          f"{threads} thread(s); labels in {out_dir}")
    return 1 if failed else 0  # the run went on past failures; a script still learns of them


def _refine(args) -> int:
    source = Path(args.image)
    folder_mode = source.is_dir() or source.suffix.lower() == ".txt"
    return _refine_dataset(args) if folder_mode else _refine_image(args)


# ------------------------------------------------------------------------------ eval

def _init_distributed():
    """Join torchrun's process group (gloo: the matrices are small and on the CPU)."""
    import torch.distributed as dist

    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch has no torch.distributed: pass --shard I/N instead")
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise UserError("WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are not set: launch with torchrun, or pass "
                        "--shard I/N")
    dist.init_process_group("gloo")
    return dist


def _read_class_names(args):
    """``--class-names``: one name per line, as many as ``--num-classes``; None without the option."""
    if not args.class_names:
        return None
    path = Path(args.class_names)
    if not path.is_file():
        raise UserError(f"class names file not found: {path}")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != args.num_classes:
        raise UserError(f"{path} has {len(names)} names but --num-classes is {args.num_classes}")
    return names


def _pair_eval_files(args):
    """Predictions paired with ground truths by name; no output may name one of the files read.

    Returns
    -------
    pairs : list of (key, prediction path, ground-truth path)
    unmatched, missing : list of str
        The predictions without a ground truth, the ground truths without a prediction.
    """
    extensions = IMAGE_SUFFIXES + VOLUME_SUFFIXES
    preds = list_files(args.pred_dir, suffix=args.pred_suffix, recursive=args.recursive, name="PRED_DIR",
                       extensions=extensions)
    gts = list_files(args.gt_dir, suffix=args.gt_suffix, recursive=args.recursive, name="GT_DIR",
                     extensions=extensions)
    pairs, unmatched, missing = pair_files(preds, gts)
    refuse_outputs_over_inputs(
        [(option, path) for option, path in (("--json", args.json), ("--plot", args.plot), ("--per-case", args.per_case)) if path],
        [*preds.values(), *gts.values(),
         *(Path(s) for s in (args.pred_dir, args.gt_dir, args.class_names, args.gt_palette) if s and Path(s).is_file())])
    return pairs, unmatched, missing


def _check_volume_pairs(pairs):
    """Whether the pairs are NIfTI volumes (all of them) rather than images (none of them)."""
    kinds = {(is_volume(pred), is_volume(gt)) for _, pred, gt in pairs}
    if kinds <= {(False, False)}:
        return False
    if kinds == {(True, True)}:
        return True
    example = next(f"{p} and {g}" for _, p, g in pairs if is_volume(p) != is_volume(g)) if any(
        a != b for a, b in kinds) else next(f"{p}" for _, p, g in pairs if not is_volume(p))
    raise UserError(f"the pairs mix NIfTI volumes and images (e.g. {example}): compare volumes with volumes")


def _check_surface_options(args, surface):
    """``--per-case`` (which needs the surface metrics) and ``--tolerance``, once the pairs say what they are."""
    if args.per_case:
        _check_output(args.per_case, (".csv", ".json"), "--per-case")
        if not surface:
            raise UserError("--per-case lists the surface metrics per case: add --surface (on by itself for NIfTI)")
    if not (args.tolerance >= 0 and args.tolerance < float("inf")):
        raise UserError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")


def _warn_unpaired(pairs, unmatched, missing):
    """What pairing left out, and predictions saved in a lossy format."""
    if missing:
        print(f"warning: {len(missing)} ground-truth file(s) have no prediction, e.g. {missing[:3]}",
              file=sys.stderr)
    if unmatched:
        print(f"warning: {len(unmatched)} prediction(s) have no ground truth, e.g. {unmatched[:3]}",
              file=sys.stderr)
    lossy = [str(p) for _, p, _ in pairs if p.suffix.lower() in LOSSY_SUFFIXES]
    if lossy:
        print(f"warning: {len(lossy)} prediction(s) are lossy (JPEG/WebP), e.g. {lossy[0]}: compression changes "
              f"labels along edges; save label maps as PNG", file=sys.stderr)


def _check_same_spacing(key, pred_spacing, gt_spacing):
    """A prediction's header must give its ground truth's voxel size: the distances are in those units."""
    if len(pred_spacing) != len(gt_spacing) or not all(
            abs(a - b) <= 1e-5 * max(abs(a), abs(b)) for a, b in zip(pred_spacing, gt_spacing)):
        raise UserError(f"{key}: the prediction's voxel spacing {pred_spacing} differs from the ground truth's "
                        f"{gt_spacing} (resample the prediction onto the ground truth's grid)")


def _surface_options(args, surface, volumes):
    """SegMetrics' surface options for eval: per-case HD95, ASSD and NSD, volumes taking each header's spacing."""
    if not surface:
        return {}
    return {"surface": True, "tolerance": args.tolerance, "exclude_classes": args.exclude_class or (),
            "spacing": (1.0, 1.0, 1.0) if volumes else None}


class _Tally:
    """What eval counted besides the confusion matrix: the pairs scored, those skipped and why, per-case rows."""

    def __init__(self):
        self.evaluated, self.unreadable, self.mismatched, self.case_rows = 0, [], [], []


def _label_reader(volumes, palette):
    """``read(pair) -> (key, prediction, ground truth)``; a file that cannot be read gives ``(key, error, None)``.

    Volumes come as ``(labels, spacing)``.
    """
    def read(pair):
        key, pred_path, gt_path = pair
        try:
            if volumes:
                return key, read_volume(pred_path), read_volume(gt_path)
            return key, read_label_map(pred_path), read_label_map(gt_path, palette)
        except UserError as exc:  # one bad file is listed and skipped, not fatal
            return key, exc, None

    return read


def _count_pair(metrics, tally, key, pred, gt, *, volumes, surface):
    """One pair into ``metrics`` (and its per-case rows into ``tally``), or listed in ``tally`` as skipped."""
    spacing = None
    if gt is not None and volumes:
        (pred, pred_spacing), (gt, spacing) = pred, gt
        _check_same_spacing(key, pred_spacing, spacing)
    if gt is None:
        tally.unreadable.append(str(pred))
    elif pred.shape != gt.shape:
        tally.mismatched.append(f"{key} {pred.shape} vs {gt.shape}")
    else:
        cases = metrics.update(pred, gt, spacing=spacing) if surface else metrics.update(pred, gt)
        if cases:
            tally.case_rows += [dict(row, spacing=list(case.spacing)) for case in cases
                                for row in case.rows(key, metrics.class_names)]
        tally.evaluated += 1


def _gather(dist, world, metrics, tally):
    """One table from torchrun's ranks: the counts summed, the skipped files and the per-case rows gathered."""
    metrics.sync()
    gathered = [None] * world
    dist.all_gather_object(gathered, (tally.evaluated, tally.unreadable, tally.mismatched, tally.case_rows,
                                      metrics.first_invalid))
    tally.evaluated = sum(count for count, *_ in gathered)
    tally.unreadable = [item for _, items, *_ in gathered for item in items]
    tally.mismatched = [item for _, _, items, *_ in gathered for item in items]
    tally.case_rows = sorted((row for _, _, _, rows, _ in gathered for row in rows), key=lambda row: row["case"])
    metrics.first_invalid = next((first for *_, first in gathered if first is not None), None)


def _count_pairs(args, metrics, pairs, *, rank, world, launcher, lead, volumes, palette, surface):
    """This rank's share of ``pairs`` read ahead on threads and counted into ``metrics``; under torchrun the
    ranks' counts summed. Returns the :class:`_Tally`."""
    tally = _Tally()
    read = _label_reader(volumes, palette)
    dist = _init_distributed() if launcher == "torchrun" else None
    mine = shard(pairs, rank, world)
    progress = _Progress(len(mine), "eval", quiet=args.quiet or not lead)
    try:
        for key, pred, gt in read_ahead(read, mine, max(1, args.workers)):
            progress.update()
            _count_pair(metrics, tally, key, pred, gt, volumes=volumes, surface=surface)
        if dist is not None:
            _gather(dist, world, metrics, tally)
    finally:
        progress.close()
        if dist is not None:
            dist.destroy_process_group()
    return tally


def _check_counts(args, metrics, tally):
    """Refuse a run that scored nothing, or counted labels outside [0, K) without ``--drop-invalid``.

    Every rank holds the same numbers by now, so all raise or none does.
    """
    if tally.evaluated == 0:
        raise UserError(f"no pair could be evaluated: {'; '.join((tally.unreadable + tally.mismatched)[:3])}")
    if metrics.num_invalid and not args.drop_invalid:
        first = metrics.first_invalid
        raise UserError(f"{metrics.num_invalid} pixels have labels outside [0, {args.num_classes}) that are not "
                        f"ignored (first bad value: {first}): is --num-classes right? (--ignore-index {first} for "
                        f"void labels, or --drop-invalid to count and skip them)")


def _report_eval(args, result, tally, *, pairs, rank, world, launcher):
    """The skipped pairs, the table and what it covers, and the files asked for (JSON, per-case, plot)."""
    if tally.unreadable:
        print(f"warning: skipped {len(tally.unreadable)} unreadable pair(s): {'; '.join(tally.unreadable[:3])}",
              file=sys.stderr)
    if tally.mismatched:
        print(f"warning: skipped {len(tally.mismatched)} pair(s) of different sizes, e.g. {tally.mismatched[:3]}",
              file=sys.stderr)
    print(result.table())
    if launcher == "shard":
        print(f"shard {rank}/{world}: {tally.evaluated} image pairs evaluated, of {len(pairs)} in all (this shard's "
              f"table; sum the --json confusion matrices, or run under torchrun for one table)")
    else:
        print(f"{tally.evaluated} image pairs evaluated" + (f" on {world} ranks" if world > 1 else ""))
    if result.num_invalid:
        print(f"warning: {result.num_invalid} pixels had labels outside [0, {args.num_classes}) and were not counted "
              f"(--drop-invalid)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
        print(f"wrote {args.json}")
    if args.per_case:
        _write_per_case(args.per_case, tally.case_rows, result)
        print(f"wrote {args.per_case}")
    if args.plot:
        from .viz import plot_confusion_matrix

        plot_confusion_matrix(result).savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")


def _eval(args) -> int:
    """Predicted label maps (or volumes) against their ground truths: pair, check, count, report."""
    from .metrics import SegMetrics

    names = _read_class_names(args)
    if args.json:
        _check_output(args.json, (".json",), "--json")
    if args.plot:
        _check_output(args.plot, (".png", ".pdf", ".svg"), "--plot")
    palette = read_palette(args.gt_palette) if args.gt_palette else None
    rank, world, launcher = shard_spec(args.shard)
    pairs, unmatched, missing = _pair_eval_files(args)
    volumes = _check_volume_pairs(pairs)
    surface = args.surface or volumes
    _check_surface_options(args, surface)
    lead = rank == 0 or launcher == "shard"  # under torchrun rank 0 speaks for all
    if lead:
        _warn_unpaired(pairs, unmatched, missing)
    if not pairs:
        raise UserError("no prediction/ground-truth pairs with the same name were found (see --pred-suffix, "
                        "--gt-suffix, -r)")
    # Invalid labels are counted here and judged once all pairs are read (the count goes in the message).
    metrics = SegMetrics(args.num_classes, ignore_index=args.ignore_index, class_names=names, on_invalid="ignore",
                         boundary=args.boundary, spatial_ndim=3 if volumes else 2,  # a volume is one case
                         **_surface_options(args, surface, volumes))
    tally = _count_pairs(args, metrics, pairs, rank=rank, world=world, launcher=launcher, lead=lead,
                         volumes=volumes, palette=palette, surface=surface)
    _check_counts(args, metrics, tally)
    if lead:
        _report_eval(args, metrics.compute(), tally, pairs=pairs, rank=rank, world=world, launcher=launcher)
    return 0


def _write_per_case(path, rows, result):
    """The per-case table: a CSV row per case and class, or JSON with the rows and the per-class means."""
    columns = ["case", "class", "dice", "iou", "hd95", "assd", "nsd"]
    if str(path).lower().endswith(".csv"):
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
        Path(path).write_text(out.getvalue())
        return
    means = {name: {"dice": d, "iou": i, "hd95": h, "assd": a, "nsd": n}
             for name, d, i, h, a, n in zip(result.class_names, *(result.to_dict()[key] for key in
                                                                 ("dice", "iou", "hd95", "assd", "nsd")))}
    Path(path).write_text(json.dumps({"metric_per_case": rows, "mean": means,
                                      "note": "dice and iou of the summed confusion matrix in mean; hd95, assd and "
                                              "nsd are means over cases"}, indent=2))


# ----------------------------------------------------------------------------- bench

def _bench(args) -> int:
    from .benchmarking import crf_timings, metrics_throughput

    print("dense CRF, crf_refine end to end (stride-8 logits -> labels), pydensecrf preset, 10 iterations")
    print(f"{'image':>10} {'labels':>7} {'segpost ms':>11} {'pydensecrf ms':>14} {'speedup':>8}")
    for row in crf_timings(sizes=(256, 512), labels=(21,), repeats=args.repeats):
        ref = f"{row['pydensecrf_ms']:.0f}" if row["pydensecrf_ms"] else "n/a"
        speed = f"{row['pydensecrf_ms'] / row['segpost_ms']:.1f}x" if row["pydensecrf_ms"] else "-"
        print(f"{row['size']:>10} {row['labels']:>7} {row['segpost_ms']:>11.0f} {ref:>14} {speed:>8}")
    print("\nconfusion matrix, 1024x2048, 19 classes, 10% ignore")
    for row in metrics_throughput(repeats=args.repeats):
        print(f"{row['dtype']:>6} segpost {row['segpost_mpx']:>6.0f} Mpx/s   np.bincount {row['bincount_mpx']:>5.0f} Mpx/s   "
              f"({row['segpost_mpx'] / row['bincount_mpx']:.1f}x)")
    return 0


# ---------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segpost",
        description="Dense CRF refinement, metrics and pipelines for semantic segmentation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the demo on photos shipped with scikit-image and write pictures",
                          description="Builds a scene with an exact ground truth from scikit-image photos, simulates "
                                      "a network's coarse output, refines it with the CRF, prints the gain and writes "
                                      "pictures.")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--preset", default="deeplab", choices=["deeplab", "pydensecrf"], help="CRF parameters")
    demo.set_defaults(func=_demo)

    refine = sub.add_parser(
        "refine", help="refine a model's scores with the dense CRF: one image, or a folder in parallel",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reads IMAGE (any format scikit-image reads) and LOGITS (.npy, .npz or .pt, shape (C, h, w)),\n"
                    "writes the refined labels as a palette PNG (VOC colours).\n\n"
                    "With a folder (or a .txt list of paths) as IMAGES, LOGITS is a folder too: files pair by their\n"
                    "path relative to the folder minus the suffix (or the extension), OUT is a folder of NAME.png\n"
                    "(and NAME_probs.npy), and a run that stopped resumes where it was. Under torchrun, or with\n"
                    "--shard I/N, each process refines every N-th pair.",
        epilog="example:\n  segpost refine leftImg8bit/val scores/ -o refined/ -r --image-suffix _leftImg8bit.png "
               "--workers 2\n  torchrun --nproc-per-node 4 -m segpost refine images/ scores/ -o refined/")
    refine.add_argument("image", metavar="IMAGES", help="an image, a folder of images, or a .txt list of them")
    refine.add_argument("logits", metavar="LOGITS", help="its scores, or a folder of them")
    refine.add_argument("-o", "--output", required=True, metavar="OUT", help="label map to write (OUT.png), or a "
                                                                             "folder for a folder of images")
    refine.add_argument("--probs", action="store_true", help="LOGITS holds softmax probabilities, not logits")
    refine.add_argument("--preset", default="deeplab", choices=["deeplab", "pydensecrf"], help="CRF parameters")
    refine.add_argument("--params", metavar="JSON", help='override parameters, e.g. \'{"bi_weight": 5}\'')
    refine.add_argument("--iterations", type=int, help="mean-field iterations (default: the preset's)")
    refine.add_argument("--overlay", metavar="OVERLAY.png", help="also write the labels blended over the image "
                                                                 "(one image only)")
    refine.add_argument("--save-probs", nargs="?", const=True, metavar="P.npy",
                        help="also write the refined (C, H, W) probabilities (default name: OUT's name + _probs.npy)")
    refine.add_argument("--image-suffix", metavar="S", help="the end of every image's name, cut off to pair "
                                                            "(e.g. _leftImg8bit.png; default: any image extension)")
    refine.add_argument("--logits-suffix", metavar="S", help="the end of every scores file's name (default: .npy, "
                                                             ".npz, .pt or .pth)")
    refine.add_argument("-r", "--recursive", action="store_true", help="pair files in subfolders too")
    refine.add_argument("--workers", type=int, default=1,
                        help="processes (default 1); each runs cores / N threads")
    refine.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist (default: skip)")
    refine.add_argument("--shard", metavar="I/N", help="refine pairs I, I + N, ... only (default under torchrun: "
                                                       "RANK/WORLD_SIZE)")
    refine.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    refine.set_defaults(func=_refine)

    ev = sub.add_parser(
        "eval", help="score a folder of predicted label maps against the ground truth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pairs files by their path relative to each folder minus the suffix (or the extension); reads "
                    "palette,\n8-bit and 16-bit PNGs; lists and skips unreadable, RGB and mismatched files; prints "
                    "the per-class\ntable and means. Under torchrun every rank reads its share and rank 0 prints one "
                    "table.\nNIfTI volumes (.nii, .nii.gz; pip install 'segpost[medical]') are scored with their "
                    "headers' voxel\nspacing, which must agree between prediction and ground truth, and get per-case "
                    "HD95, ASSD and NSD.",
        epilog="examples:\n"
               "  Cityscapes (predictions as trainIds, e.g. refined/frankfurt/frankfurt_000000_000294.png; the GT's\n"
               "  *_gtFine_labelTrainIds.png from cityscapesscripts' createTrainIdLabelImgs):\n"
               "    segpost eval refined/ gtFine/val -r --gt-suffix _gtFine_labelTrainIds.png --num-classes 19 "
               "--ignore-index 255\n"
               "  PASCAL VOC (SegmentationClass holds palette PNGs: indices, 255 on the borders):\n"
               "    segpost eval refined/ VOC2012/SegmentationClass --num-classes 21 --ignore-index 255\n"
               "  colour-coded (RGB) ground truths: --gt-palette voc, or a file of r,g,b lines (class = line)")
    ev.add_argument("pred_dir", metavar="PRED_DIR", help="predicted label maps: a folder or a .txt list")
    ev.add_argument("gt_dir", metavar="GT_DIR", help="ground-truth label maps: a folder or a .txt list")
    ev.add_argument("--num-classes", type=int, required=True, help="number of classes K")
    ev.add_argument("--ignore-index", type=int, action="append", help="target label to ignore (repeatable), e.g. 255")
    ev.add_argument("--class-names", metavar="FILE", help="text file with one class name per line")
    ev.add_argument("--json", metavar="OUT.json", help="write all results as JSON")
    ev.add_argument("--plot", metavar="CM.png", help="write a confusion-matrix heatmap")
    ev.add_argument("--workers", type=int, default=4, help="threads reading images (default 4)")
    ev.add_argument("--drop-invalid", action="store_true",
                    help="count and skip labels outside [0, K) instead of stopping (default: an error)")
    ev.add_argument("--boundary", action="store_true", help="also report the dataset-level Boundary IoU")
    ev.add_argument("--surface", action="store_true", help="also report per-case HD95, ASSD and NSD, averaged "
                    "(always on for NIfTI volumes, whose headers give the spacing)")
    ev.add_argument("--tolerance", type=float, default=1.0, help="the surface Dice's tolerance in the units of the "
                    "spacing, mm for NIfTI (default 1)")
    ev.add_argument("--exclude-class", type=int, action="append", metavar="C",
                    help="class left out of the means and the surface metrics (repeatable), e.g. 0 for background")
    ev.add_argument("--per-case", metavar="OUT.csv|OUT.json", help="write a row per case and class: Dice, IoU, "
                    "HD95, ASSD, NSD (with --surface or NIfTI)")
    ev.add_argument("--pred-suffix", metavar="S", help="the end of every prediction's name, cut off to pair "
                                                       "(default: any image extension)")
    ev.add_argument("--gt-suffix", metavar="S", help="the end of every ground truth's name, e.g. "
                                                     "_gtFine_labelTrainIds.png")
    ev.add_argument("-r", "--recursive", action="store_true", help="pair files in subfolders too")
    ev.add_argument("--gt-palette", metavar="voc|FILE", help="read RGB ground truths through a colour map")
    ev.add_argument("--shard", metavar="I/N", help="score pairs I, I + N, ... only (under torchrun: RANK/WORLD_SIZE, "
                                                   "summed into one table)")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_eval)

    bench = sub.add_parser("bench", help="a short benchmark summary on this machine",
                           description="The CRF against pydensecrf (if installed) and the confusion matrix against "
                                       "np.bincount; the full tables are in benchmarks/.")
    bench.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (UserError, ValueError, TypeError, OSError, MemoryError) as exc:
        print(f"segpost {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"segpost {args.command}: {exc if isinstance(exc, Interrupted) else 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
