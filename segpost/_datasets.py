"""Files of a dataset for the command line: finding, pairing, sharding, reading and writing them.

`segpost refine` and `segpost eval` pair two trees of files the same way
(:func:`pair_files`) and split the pairs over processes or machines the same
way (:func:`shard` with :func:`shard_spec`). Every reader raises
:class:`UserError` with one sentence naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm")
SCORE_SUFFIXES = (".npy", ".npz", ".pt", ".pth")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
VOLUME_SUFFIXES = (".nii.gz", ".nii")  # NIfTI label volumes, read through nibabel (segpost[medical])


class UserError(Exception):
    """A mistake on the command line: reported as one sentence, exit code 2."""


# ------------------------------------------------------------------------- finding and pairing

def _key(relative, suffix, extensions):
    """``relative`` (a posix path) minus ``suffix``, or minus its extension; None if it does not match."""
    name = relative.rsplit("/", 1)[-1]
    if suffix:
        # The name must keep something besides the suffix: "_leftImg8bit.png" alone is no image's name.
        return relative[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None
    extension = os.path.splitext(name)[1]
    if name.lower().endswith(".nii.gz") and len(name) > 7:  # a double extension
        extension = name[-7:]
    return relative[: -len(extension)] if extension and extension.lower() in extensions else None


def list_files(source, *, suffix=None, extensions=IMAGE_SUFFIXES, recursive=False, name="folder"):
    """The files of a folder (or a ``.txt`` list of paths), keyed by their relative path minus the suffix.

    Parameters
    ----------
    source : str or Path
        A folder, or a ``.txt`` file with one path per line (relative to the
        list's folder, or absolute; blank lines and ``#`` comments skipped).
    suffix : str, optional
        The end of every file's name, e.g. ``"_leftImg8bit.png"``
        (case-sensitive); it is cut off to make the key. Default: any of
        ``extensions`` (case-insensitive), cut off.
    extensions : tuple of str
        Extensions accepted when ``suffix`` is not given.
    recursive : bool
        Walk subfolders (keys then hold the subfolder, ``"city/x"``).
    name : str
        What the command line calls ``source``, for messages.

    Returns
    -------
    dict of str -> Path
        Sorted by key. Files starting with ``.`` are left out (hidden files,
        and the partial files of an interrupted write).

    Raises
    ------
    UserError
        If ``source`` is neither a folder nor a ``.txt`` file, or two files
        have the same key.
    """
    root = Path(source)
    found = {}

    def add(key, path):
        if key in found:
            raise UserError(f"{found[key]} and {path} both pair as {key!r}: keep one, or choose with the suffix "
                            f"option")
        found[key] = path

    if root.is_file() and root.suffix.lower() == ".txt":
        base = root.parent
        for line in root.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = Path(os.path.normpath(base / line))
            # A path outside the list's folder (absolute, or through ..) is keyed by its name alone: the
            # outputs, named by key, must stay inside the output folder.
            norm_base = Path(os.path.normpath(base))
            relative = path.relative_to(norm_base).as_posix() if path.is_relative_to(norm_base) else path.name
            key = _key(relative, suffix, extensions)
            if key is None:
                raise UserError(f"{root} lists {line}, which does not end in "
                                f"{suffix or ' or '.join(extensions)}")
            add(key, path)
        return dict(sorted(found.items()))
    if not root.is_dir():
        raise UserError(f"{name} is not a folder or a .txt list of files: {root}")
    visited = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:  # a symbolic link back up the tree
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        relative_folder = Path(folder).relative_to(root).as_posix()
        for file in sorted(files):
            if file.startswith("."):
                continue
            relative = file if relative_folder == "." else f"{relative_folder}/{file}"
            key = _key(relative, suffix, extensions)
            if key is not None:
                add(key, Path(folder) / file)
    return dict(sorted(found.items()))


def pair_files(left, right):
    """Pair two ``list_files`` results by key.

    Parameters
    ----------
    left, right : dict of str -> Path

    Returns
    -------
    pairs : list of (key, left path, right path)
        Sorted by key.
    only_left, only_right : list of str
        The keys found on one side only, sorted.
    """
    common = sorted(set(left) & set(right))
    return ([(key, left[key], right[key]) for key in common], sorted(set(left) - set(right)),
            sorted(set(right) - set(left)))


# ------------------------------------------------------------------------------- outputs vs inputs

def _identities(path):
    """The ways a path can name a file: its resolved path, and its (device, inode) when it exists."""
    p = Path(path)
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError):  # a symbolic-link loop: compared as written
        resolved = Path(os.path.abspath(p))
    names = [("path", str(resolved))]
    try:
        st = os.stat(p)
        names.append(("inode", (st.st_dev, st.st_ino)))
    except OSError:
        pass
    return names


def refuse_outputs_over_inputs(outputs, inputs):
    """Refuse, before any work, an output path that names an input file or another output.

    Two paths name the same file when they resolve to the same path (through
    ``.``, ``..`` and symbolic links) or share a device and inode (hard
    links).

    Parameters
    ----------
    outputs : iterable of (str, path)
        What the command line calls each output (``"-o/--output"``), and its path.
    inputs : iterable of path
        Every file the command reads.

    Raises
    ------
    UserError
        Naming the output's option, its path and the input it would replace.
    """
    taken = {}  # identity -> why the path is taken
    for path in inputs:
        for identity in _identities(path):
            taken.setdefault(identity, f"the input {path}: writing it would destroy it")
    for option, path in outputs:
        identities = _identities(path)
        for identity in identities:
            if identity in taken:
                raise UserError(f"{option} {path} is {taken[identity]}; choose another output path")
        for identity in identities:
            taken[identity] = f"also the output of {option}"


# ------------------------------------------------------------------------------------- sharding

def shard_spec(text=None, environ=None):
    """Which share of the work this process takes: ``--shard I/N``, else torchrun's ``RANK``/``WORLD_SIZE``.

    Parameters
    ----------
    text : str, optional
        ``"I/N"``, 0 <= I < N (the ``--shard`` option).
    environ : mapping, optional
        Default ``os.environ``.

    Returns
    -------
    rank, world : int
    launcher : {"shard", "torchrun", None}
        None when the process takes everything.

    Raises
    ------
    UserError
        If ``text`` or the environment variables are malformed.
    """
    environ = os.environ if environ is None else environ
    if text is not None:
        try:
            rank, world = (int(part) for part in text.split("/"))
        except ValueError:
            raise UserError(f"--shard must be I/N with integers, e.g. 0/4, got {text!r}") from None
        if world < 1 or not 0 <= rank < world:
            raise UserError(f"--shard I/N needs N >= 1 and 0 <= I < N, got {text!r}")
        return rank, world, "shard"
    if "WORLD_SIZE" not in environ:
        return 0, 1, None
    try:
        rank, world = int(environ.get("RANK", "0")), int(environ["WORLD_SIZE"])
    except ValueError:
        raise UserError(f"RANK={environ.get('RANK')!r} and WORLD_SIZE={environ['WORLD_SIZE']!r} must be "
                        f"integers (torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return (rank, world, "torchrun") if world > 1 else (0, 1, None)


def shard(items, rank, world):
    """Every ``world``-th item from ``rank``: the shares of all ranks partition ``items``."""
    return list(items)[rank::world]


# -------------------------------------------------------------------------------------- reading

def _not_a_file(path, what):
    """Why ``path`` cannot be read as a file, in words: missing, a folder, or a link that leads nowhere."""
    if path.is_symlink():
        return f"{what} file {path} is a symbolic link that leads nowhere (broken, or a loop)"
    if path.is_dir():
        return f"{what} file {path} is a folder"
    return f"{what} file not found: {path}"


def read_image(path):
    """An RGB(A) or gray image as (H, W[, 3]) (alpha dropped; 16-bit files as [0, 1] float32)."""
    from skimage import io

    p = Path(path)
    if not p.is_file():
        raise UserError(_not_a_file(p, "image"))
    try:
        image = io.imread(p)
    except Exception as exc:  # any decoder error is a user-facing "cannot read"
        raise UserError(f"cannot read {path} as an image ({type(exc).__name__}: {exc})") from None
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]  # drop alpha
    if image.dtype == np.uint16:
        # A file's bit depth says its range: 16-bit PNG/TIFF to [0, 1] floats (segpost's rule reads
        # integer arrays as 0..255 whatever their dtype).
        image = image.astype(np.float32) / 65535
    return image


def read_scores(path):
    """A model's (C, h, w) scores from .npy, .npz (``logits``, ``probs`` or the first array) or .pt."""
    p = Path(path)
    if not p.is_file():
        raise UserError(_not_a_file(p, "scores"))
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                key = "logits" if "logits" in z.files else ("probs" if "probs" in z.files else z.files[0])
                arr = z[key]
        elif p.suffix in (".pt", ".pth"):
            import torch

            arr = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(arr, dict):
                arr = arr.get("logits", arr.get("out", next(iter(arr.values()))))
            arr = arr.detach().float().numpy()
        else:
            raise UserError(f"unsupported scores format {p.suffix!r}: use .npy, .npz or .pt")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read scores from {path} ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise UserError(f"scores in {path} must be (C, h, w), got shape {arr.shape}")
    return arr.astype(np.float32)


def read_palette(spec):
    """The colours of a colour-coded label map: ``"voc"``, or a file of ``r,g,b`` lines (class = line number).

    A line may name its class instead: ``r,g,b,index`` (e.g. ``0,0,0,255`` for void).

    Returns
    -------
    colours : (P, 3) uint8
    classes : (P,) int64
    """
    if spec == "voc":
        from .viz import voc_palette

        return voc_palette(), np.arange(256)
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--gt-palette is 'voc' or a colour map file; {spec} is neither")
    colours, classes = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.replace(",", " ").split()
        try:
            values = [int(v) for v in fields]
        except ValueError:
            values = []
        if len(values) not in (3, 4) or not all(0 <= v <= 255 for v in values[:3]) or min(values) < 0:
            raise UserError(f"line {number} of {path} is not 'r,g,b' or 'r,g,b,class' with 0..255 colours: "
                            f"{line.strip()!r}")
        colours.append(values[:3])
        classes.append(values[3] if len(values) == 4 else len(classes))
    if not colours:
        raise UserError(f"{path} holds no colours")
    colours = np.array(colours, np.uint8)
    if len({tuple(c) for c in colours.tolist()}) != len(colours):
        raise UserError(f"{path} lists a colour twice")
    return colours, np.array(classes, np.int64)


def _colour_codes(rgb):
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def read_label_map(path, palette=None):
    """Integer labels from a palette, 8-bit or 16-bit PNG (palette indices, not colours).

    Parameters
    ----------
    path : Path
    palette : (colours, classes), optional
        From :func:`read_palette`: RGB files are decoded colour by colour;
        without it an RGB file is refused.

    Returns
    -------
    (H, W) integer array
        uint8 for palette and 8-bit files (the confusion matrix counts uint8
        fastest), uint16 or int32 for 16- and 32-bit files.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                labels = np.asarray(img)
                return labels.astype(np.uint16) if labels.dtype.byteorder == ">" else labels
            if palette is not None and img.mode in ("RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB"))
            else:
                hint = " (colour-coded ground truths: --gt-palette)" if img.mode in ("RGB", "RGBA") else ""
                raise UserError(f"{path} is a {img.mode} image; label maps must be palette, 8-bit or 16-bit "
                                f"gray{hint}")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read {path} as a label map ({type(exc).__name__})") from None
    colours, classes = palette
    codes = _colour_codes(colours)
    order = np.argsort(codes)
    sorted_codes = codes[order]
    pixels = _colour_codes(rgb)
    at = np.minimum(np.searchsorted(sorted_codes, pixels), len(sorted_codes) - 1)
    unknown = sorted_codes[at] != pixels
    if unknown.any():
        y, x = np.argwhere(unknown)[0]
        raise UserError(f"{path} has {int(unknown.sum())} pixels of colours not in the palette, e.g. "
                        f"{tuple(int(c) for c in rgb[y, x])} at ({y}, {x})")
    labels = classes[order][at]
    return labels.astype(np.uint8) if classes.max() < 256 else labels


def is_volume(path):
    """Whether ``path`` names a NIfTI volume (``.nii`` or ``.nii.gz``)."""
    return Path(path).name.lower().endswith(VOLUME_SUFFIXES)


def read_volume(path):
    """Integer labels and voxel spacing of a NIfTI label volume, through nibabel.

    Parameters
    ----------
    path : Path

    Returns
    -------
    labels : (X, Y, Z) integer array
        In the file's own axis order; the smallest unsigned dtype that holds
        the labels (uint8 for most), int32 for negative labels.
    spacing : tuple of float
        The header's voxel size per axis (``header.get_zooms()``), usually mm.
    """
    try:
        import nibabel
    except ImportError:
        raise UserError(f"reading {path} needs nibabel: pip install 'segpost[medical]'") from None
    try:
        image = nibabel.load(str(path))
        data = np.asanyarray(image.dataobj)
        spacing = tuple(float(z) for z in image.header.get_zooms()[:data.ndim])
    except Exception as exc:
        raise UserError(f"cannot read {path} as a NIfTI volume ({type(exc).__name__})") from None
    if data.ndim < 2:
        raise UserError(f"{path} holds a {data.ndim}-D array, not a label volume")
    if data.dtype.kind == "f":  # labels stored as floats (or scaled): they must be whole numbers
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise UserError(f"{path} holds non-integer values: not a label volume")
    elif data.dtype.kind not in "biu":
        raise UserError(f"{path} holds {data.dtype} values: not a label volume")
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    dtype = np.int32 if lo < 0 else (np.uint8 if hi < 256 else (np.uint16 if hi < 65536 else np.int64))
    return data.astype(dtype), spacing


# -------------------------------------------------------------------------------------- writing

def _replace_into(path, write):
    """Write through a hidden partial file, then rename: an interrupted run never leaves a file that looks done."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_palette_png(path, labels):
    """Labels as a palette PNG with VOC's colours (at most 256 classes)."""
    from PIL import Image

    from .viz import voc_palette

    if labels.max() > 255:
        raise UserError(f"cannot write {labels.max() + 1} classes as a palette PNG (at most 256)")
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    _replace_into(path, lambda p: img.save(p, format="PNG"))


def save_npy(path, array):
    """``np.save`` through a partial file (see ``write_palette_png``)."""
    def write(p):
        with open(p, "wb") as f:
            np.save(f, array)

    _replace_into(path, write)


def read_ahead(read, items, workers):
    """``map(read, items)`` on ``workers`` threads, in order, with at most ``2 * workers`` results waiting.

    Decoding releases the GIL, so threads overlap it with the caller's work;
    the bound keeps memory flat when the caller is the slower side (a
    1024x2048 pair is 4 MB decoded; ``ThreadPoolExecutor.map`` would hold the
    whole dataset).
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    items = iter(items)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque(pool.submit(read, item) for _, item in zip(range(2 * workers), items))
        while pending:
            result = pending.popleft().result()
            for item in items:  # refill one
                pending.append(pool.submit(read, item))
                break
            yield result
