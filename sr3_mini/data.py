"""Images -> HR crops y_0 -> training pairs (x, y_0): the data set D = {x_i, y_i} of SR3.

Saharia et al. (2021), section 4: each pair is an HR crop y and its LR input x made by bicubic downsampling
with anti-aliasing; here ``x = resize.downsample(y, scale)``, the one place where LR images are made. Pixels
live in [-1, 1] (the range of y_0 in (3) and (5)); crops are stored as uint8 [N, 3, H, W] and mapped with
``from_uint8`` (v / 127.5 - 1) and ``to_uint8`` (round((y + 1) * 127.5)).

- ``load_image`` / ``save_image``: any Pillow image -> RGB float [3, H, W]; the conversions are fixed here.
- ``data_dir``: where the bundled models and photos are (one lookup for the whole package).
- ``bundled_train_crops`` / ``bundled_eval_images``: the sets in ``data/`` (see data/README.md).
- ``FolderCrops``: a folder of your own photos -> cached uint8 crops, skipping (and counting) bad files.
- ``load_data`` / ``load_data_once``: a training run's crops and held-out photos (once per DDP group).
The trainer makes (x, y_0) pairs from crops on the device, whole batches at a time (``train.sample_batch``).

A crop is kept only if it has something to super-resolve: ``detail(crop) >= min_grad``, the RMS of the
horizontal and vertical luma differences in grey levels per pixel (0..255 scale); flat sky or bokeh
scores ~1, grass and petals 5-20. Relies on no other module of sr3_mini.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, ImageOps

__all__ = ["load_image", "save_image", "to_uint8", "from_uint8", "detail", "random_crops", "data_dir",
           "bundled_train_crops", "bundled_eval_images", "FolderCrops", "load_data", "load_data_once"]

MIN_GRAD = 2.0  # detail threshold of the bundled set and FolderCrops' default (see data/README.md)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601 weights


def from_uint8(u: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] in 0..255 -> float32 in [-1, 1]: 0 -> -1, 255 -> 1."""
    return u.float() / 127.5 - 1


def to_uint8(y: torch.Tensor) -> torch.Tensor:
    """float [..., 3, H, W] in [-1, 1] -> uint8 (clamped, rounded to nearest): the inverse of ``from_uint8``."""
    return ((y.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _read(path) -> np.ndarray:
    """Any image file -> [H, W, 3]: uint8 for 8-bit images without transparency, else float32 in [0, 1].
    EXIF rotation applied; transparency composited on white (what a viewer shows, whereas the colour under
    alpha = 0 is arbitrary); 16-bit greyscale kept at 16-bit precision (value / 65535, mode I too);
    float (F) clipped to [0, 1]; CMYK by Pillow's conversion; colour profiles ignored."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                a = np.asarray(im, np.float64) / (1.0 if im.mode == "F" else 65535.0)
                return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=2).astype(np.float32)
            if "A" in im.mode or "a" in im.mode or "transparency" in im.info:
                rgba = np.asarray(im.convert("RGBA"), np.float32) / 255
                a = rgba[..., 3:]
                return rgba[..., :3] * a + (1 - a)  # alpha over white: a rgb + (1 - a) 1
            return np.array(im.convert("RGB"), np.uint8)  # a writable copy, for torch.from_numpy
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def load_image(path) -> torch.Tensor:
    """Image file -> float32 [3, H, W] in [-1, 1]. Any Pillow mode (1, L, LA, P, RGBA, CMYK, I;16, I, F...)
    becomes RGB the same way (see ``_read``). Raises ValueError naming the path for non-image/corrupt files."""
    a = torch.from_numpy(_read(path)).permute(2, 0, 1).contiguous()
    return from_uint8(a) if a.dtype == torch.uint8 else a * 2 - 1


def save_image(y: torch.Tensor, path) -> None:
    """float [3, H, W] (or [1, 3, H, W]) in [-1, 1] -> 8-bit RGB file; the suffix picks the format (PNG: lossless)."""
    if y.ndim == 4 and y.shape[0] == 1:
        y = y[0]
    if y.ndim != 3 or y.shape[0] != 3:
        raise ValueError(f"save_image wants a [3, H, W] tensor, got {tuple(y.shape)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(y.cpu()).permute(1, 2, 0).numpy()).save(path)


def detail(crop: np.ndarray) -> float:
    """uint8 [H, W, 3] -> RMS luma gradient sqrt(mean dx^2 + mean dy^2), grey levels per pixel."""
    luma = crop.astype(np.float32) @ _LUMA
    return float(np.sqrt(np.mean(np.diff(luma, axis=0) ** 2) + np.mean(np.diff(luma, axis=1) ** 2)))


def random_crops(image: np.ndarray, crop: int, count: int, rng: np.random.Generator, min_grad: float = MIN_GRAD,
                 tries_per_crop: int = 20):
    """Up to ``count`` uniformly placed crops of uint8 [H, W, 3] with ``detail >= min_grad``.
    Returns (crops uint8 [n, 3, crop, crop], tops [n], lefts [n], n_rejected); n < count only when
    ``count * tries_per_crop`` draws did not find enough detailed crops."""
    H, W = image.shape[:2]
    out, tops, lefts, rejected = [], [], [], 0
    for _ in range(count * tries_per_crop):
        if len(out) == count:
            break
        top, left = int(rng.integers(0, H - crop + 1)), int(rng.integers(0, W - crop + 1))
        c = image[top:top + crop, left:left + crop]
        if detail(c) < min_grad:
            rejected += 1
            continue
        out.append(c.transpose(2, 0, 1)), tops.append(top), lefts.append(left)
    crops = np.stack(out) if out else np.zeros((0, 3, crop, crop), np.uint8)
    return crops, np.array(tops, np.int32), np.array(lefts, np.int32), rejected


def data_dir() -> Path:
    """Where the bundled models and held-out photos are: $SR3_MINI_DATA if set; else the copy an installed
    wheel carries inside the package (``sr3_mini/_bundled``, copied from data/ when the wheel is built, see
    setup.py); else ``data/`` beside the package, in a clone or an editable install (replacing the files
    there is all a retrain needs). The training photos ship with the repository only."""
    if os.environ.get("SR3_MINI_DATA"):
        return Path(os.environ["SR3_MINI_DATA"])
    wheel = Path(__file__).resolve().parent / "_bundled"
    return wheel if wheel.is_dir() else Path(__file__).resolve().parent.parent / "data"


@lru_cache(maxsize=2)
def _bundled_crops(root: str) -> np.ndarray:
    root = Path(root)
    if not (root / "train_crops.npz").is_file():
        raise FileNotFoundError(f"no bundled training set in {root}: it ships with the git repository, not the "
                                "wheel; clone the repository (or set SR3_MINI_DATA to its data/), or train on "
                                "your own photos with --data FOLDER")
    with np.load(root / "train_crops.npz", allow_pickle=False) as z:
        names, sums, index, boxes = z["images"], z["image_sha256"], z["image_index"], z["boxes"]
    images = []
    for name, digest in zip(names, sums):
        png = (root / "train" / str(name)).read_bytes()
        if hashlib.sha256(png).hexdigest() != digest:
            raise ValueError(f"{root / 'train' / str(name)} does not match train_crops.npz; "
                             "rerun `python data/make_dataset.py`")
        with Image.open(root / "train" / str(name)) as im:
            images.append(np.asarray(im.convert("RGB")))
    return np.stack([images[i][t:b, l:r].transpose(2, 0, 1) for i, (t, l, b, r) in zip(index, boxes)])


def bundled_train_crops() -> torch.Tensor:
    """The bundled training set: uint8 [N, 3, 64, 64] HR crops cut, by the boxes in data/train_crops.npz,
    from the downscaled photos in data/train/ (a fresh copy each call)."""
    return torch.from_numpy(_bundled_crops(str(data_dir())).copy())


def bundled_eval_images() -> list:
    """The held-out evaluation photos data/eval/*.png (different origin, never trained on):
    [(name, float32 [3, 256, 256] in [-1, 1])], sorted by name."""
    return [(p.stem, load_image(p)) for p in sorted((data_dir() / "eval").glob("*.png"))]


def _listing(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _crops_of_file(job):
    """One file -> (status, crops, tops, lefts, rejected); status: ok | not_image | too_small | flat.
    Top level so that a process pool can pickle it."""
    path, rel, crop, count, seed, min_grad, max_side = job
    try:
        im = _read(path)
    except (ValueError, OSError):  # OSError: the file vanished since the listing
        return "not_image", None, None, None, 0
    if im.dtype != np.uint8:
        im = (im * 255).round().astype(np.uint8)
    if max_side and max(im.shape[:2]) > max_side:
        s = max_side / max(im.shape[:2])
        size = (max(1, round(im.shape[1] * s)), max(1, round(im.shape[0] * s)))
        im = np.asarray(Image.fromarray(im).resize(size, Image.LANCZOS))  # widens its kernel: anti-aliased
    if min(im.shape[:2]) < crop:
        return "too_small", None, None, None, 0
    rng = np.random.default_rng([seed, zlib.crc32(rel.encode())])  # per file: adding files keeps the others' crops
    crops, tops, lefts, rejected = random_crops(im, crop, count, rng, min_grad)
    return ("ok" if len(crops) else "flat"), crops, tops, lefts, rejected


class FolderCrops(torch.utils.data.Dataset):
    """A folder of photos (FFHQ, DIV2K, your own; searched recursively, hidden files ignored) -> uint8 HR
    crops ``self.crops`` [N, 3, crop, crop]; item i -> crops[i]. Feed it to ``PairDataset``.

    ``crops_per_image`` crops per photo with ``detail >= min_grad`` (after an optional anti-aliased shrink so
    the longer side is <= ``max_side``). Files that are not readable images and images smaller than the
    crop are skipped and counted in ``self.counts`` and one warning; no usable image -> ValueError.
    Decoding large JPEGs is slow, so the result is cached as an npz in ``cache_dir`` keyed by the file
    listing (path, size, mtime) and every parameter; ``workers > 0`` decodes in that many processes.
    ``sources[image_index[i]]`` and ``boxes[i]`` (top, left) say where crop i came from."""

    def __init__(self, folder, crop: int = 64, crops_per_image: int = 16, seed: int = 0, cache_dir=None,
                 min_grad: float = MIN_GRAD, max_side: int | None = None, workers: int = 0):
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")
        files = _listing(folder)
        if not files:
            raise ValueError(f"{folder} holds no files")
        rels = [p.relative_to(folder).as_posix() for p in files]
        params = dict(crop=crop, crops_per_image=crops_per_image, seed=seed, min_grad=min_grad, max_side=max_side)
        key = json.dumps(["foldercrops/1", params, [(r, p.stat().st_size, p.stat().st_mtime_ns)
                                                    for r, p in zip(rels, files)]])
        cache = Path(cache_dir) / f"foldercrops_{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz" \
            if cache_dir else None
        self.folder, self.from_cache = folder, bool(cache and cache.exists())
        if self.from_cache:
            with np.load(cache, allow_pickle=False) as z:
                crops, index, boxes = z["crops"], z["image_index"], z["boxes"]
                self.sources, self.counts = list(z["sources"]), json.loads(str(z["counts"]))
                self.skipped = list(z["skipped"])
        else:
            jobs = [(p, r, crop, crops_per_image, seed, min_grad, max_side) for p, r in zip(files, rels)]
            if workers > 0:
                with ProcessPoolExecutor(workers) as pool:
                    results = list(pool.map(_crops_of_file, jobs, chunksize=4))
            else:
                results = [_crops_of_file(j) for j in jobs]
            self.counts = dict(files=len(files), images_used=0, not_image=0, too_small=0, flat=0, crops_rejected=0)
            self.sources, self.skipped, parts = [], [], []
            for rel, (status, c, tops, lefts, rejected) in zip(rels, results):
                self.counts["crops_rejected"] += rejected
                if status != "ok":
                    self.counts[status] += 1
                    self.skipped.append(f"{rel} ({status})")
                    continue
                self.counts["images_used"] += 1
                parts.append((c, np.full(len(c), len(self.sources), np.int32), np.stack([tops, lefts], 1)))
                self.sources.append(rel)
            crops = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 3, crop, crop), np.uint8)
            index = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int32)
            boxes = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, 2), np.int32)
            if cache and parts:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp.npz")   # never shared between processes
                np.savez_compressed(tmp, crops=crops, image_index=index, boxes=boxes, sources=np.array(self.sources),
                                    counts=json.dumps(self.counts), skipped=np.array(self.skipped, dtype=str))
                os.replace(tmp, cache)  # atomic: a crash never leaves a half-written cache
        if not self.counts["images_used"]:
            raise ValueError(f"no usable image in {folder}: {self.counts}; e.g. {', '.join(self.skipped[:3])}")
        if self.skipped:
            warnings.warn(f"FolderCrops({folder}): skipped {len(self.skipped)} of {self.counts['files']} files: "
                          f"{self.counts['not_image']} not readable images, {self.counts['too_small']} smaller "
                          f"than {crop}x{crop}, {self.counts['flat']} without a crop of detail >= {min_grad} "
                          f"(e.g. {', '.join(self.skipped[:3])})", stacklevel=2)
        self.crops, self.image_index, self.boxes = torch.from_numpy(crops), index, boxes

    def __len__(self) -> int:
        return self.crops.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.crops[index]


def load_data(folder="", crop: int = 64, val_size: int = 8, cache_dir=None, workers: int = 0):
    """A training run's data: (training crops uint8 [N, 3, S, S], held-out photos uint8 [V, 3, S', S']).
    ``folder=""``: the bundled training crops and the first ``val_size`` bundled evaluation photos. Else
    ``FolderCrops(folder, crop)`` (cached in ``cache_dir``, decoded by ``workers`` processes) with whole photos held
    out: the first crop of each of the first ``val_size`` photos validates, and is never trained on (one photo is
    always left to train on). Raises ValueError when ``folder`` is not a folder with a usable photo."""
    if folder:
        crops = FolderCrops(folder, crop=crop, workers=workers, cache_dir=cache_dir)
        first = np.unique(crops.image_index, return_index=True)[1]    # the first crop of each photo
        k = min(val_size, len(first) - 1)
        return crops.crops[torch.as_tensor(crops.image_index >= k)], crops.crops[torch.as_tensor(first[:k])]
    held_out = [to_uint8(y) for _, y in bundled_eval_images()[:val_size]]
    return bundled_train_crops(), torch.stack(held_out)


def load_data_once(rank: int, world: int, **kwargs):
    """``load_data(**kwargs)`` under DDP: rank 0 first (it decodes a folder and writes the crop cache), then the
    other ranks, which read that cache. An error of rank 0 (ValueError, FileNotFoundError) is raised on every
    rank, so that no rank waits for the others forever."""
    if world == 1:
        return load_data(**kwargs)
    result, error = None, [None]
    if rank == 0:
        try:
            result = load_data(**kwargs)
        except (ValueError, FileNotFoundError) as e:
            error = [e]
    dist.broadcast_object_list(error, src=0)                   # also the barrier: the cache is complete after it
    if error[0] is not None:
        raise error[0]
    return result if rank == 0 else load_data(**kwargs)
