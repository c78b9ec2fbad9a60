"""Rebuild the bundled data sets: `python data/make_dataset.py` (from anywhere; about 10 s).

TRAINING (data/train/*.png + data/train_crops.npz): 23 photographs from two Debian packages: the 12 nature photos
of mate-backgrounds and the 11 photographs (not the drawn or rendered artwork) of plasma-workspace-wallpapers
(`apt-get install mate-backgrounds plasma-workspace-wallpapers`; licences in data/README.md), each shrunk with an anti-aliased Lanczos filter
so its longer side is LONG_SIDE pixels, then CROPS_PER_IMAGE seeded uniform 64x64 HR crops per photo, keeping
only crops with sr3_mini.data.detail >= MIN_GRAD. The npz stores the crop boxes, not the pixels: overlapping
crops stored as pixels would take ~25 MB, the 12 shrunk photos as PNG take ~4 MB; bundled_train_crops() cuts
them back out.

OTHER ORIGIN (data/eval_other/*.png): a second held-out set, 16 crops of 128x128 from the 13 photographs of the
Debian package lomiri-wallpapers-16.04 (Ubuntu's 2018 community wallpaper contest; CC BY 4.0, CC BY-SA 4.0 or
CC0: see data/README.md), each photo shrunk like the training photos (longer side 640 px) and cropped at seeded
positions with the training crops' detail rule. Another photographer, camera and subject mix than the training
set, and never trained on. `apt-get install lomiri-wallpapers-16.04`.

EVALUATION (data/eval/*.png): colour photos of a different origin shipped inside the scikit-image,
scikit-learn and matplotlib wheels (public domain, CC0 or CC BY 2.0: see data/README.md), centre-cropped to a
square and shrunk (Lanczos, anti-aliased) to EVAL_SIZE x EVAL_SIZE. Never used for training.

Deterministic: the same sources and Pillow give byte-identical files (PNG has no timestamps, the npz is
written with fixed zip dates); data/SHA256SUMS lists them, `cd data && sha256sum -c SHA256SUMS` checks them.
scikit-learn is needed here only (build time): `pip install scikit-learn scikit-image`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps

DATA = Path(__file__).resolve().parent
sys.path.insert(0, str(DATA.parent))
from sr3_mini.data import MIN_GRAD, detail, random_crops  # noqa: E402  (the same crop rule as FolderCrops)

SEED = 0
CROP = 64
LONG_SIDE = 640  # 2560 px wallpapers shrunk 2-4x: at full size a 64 px crop is mostly smooth bokeh
CROPS_PER_IMAGE = 256  # 23 x 256 = 5888 crops, ~4x overlap of the disjoint 64 px tiles of each photo
EVAL_SIZE = 256  # multiple of 64: x4 -> 64x64 LR input
OTHER_SOURCE = Path("/usr/share/backgrounds")
# the 13 photographs of lomiri-wallpapers-16.04 (checked by eye; left out: analogpattern, a blurred abstract
# texture, and umang, a rendered gradient); photo i % 13 gives crop i
OTHER_PHOTOS = ("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
                "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
                "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
                "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
                "sunset_by_Aitzol_Berasategi")
OTHER_COUNT, OTHER_SIZE = 16, 128
TRAIN_SOURCE = Path("/usr/share/backgrounds/mate/nature")
# KDE Plasma's wallpapers that are photographs (checked by eye; the others are drawn or rendered): each in its
# 2560x1600 version. Saved as plasma_<Name>.png.
PLASMA_SOURCE = Path("/usr/share/wallpapers")
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "OneStandsOut", "Path", "summer_1am")
# name -> (package, path inside the installed package)
EVAL_SOURCES = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "hubble": ("skimage", "data/hubble_deep_field.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_file(package: str, rel: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None:
        sys.exit(f"{package} is not installed: pip install scikit-image scikit-learn matplotlib")
    return Path(spec.submodule_search_locations[0]) / rel


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def save_npz(path: Path, **arrays) -> None:
    """np.savez_compressed with fixed zip dates, so the bytes depend on the arrays only."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue(),
                       compress_type=zipfile.ZIP_DEFLATED)


def make_train() -> list[Path]:
    photos = sorted(TRAIN_SOURCE.glob("*.jpg"))
    if len(photos) != 12:
        sys.exit(f"expected the 12 photos of mate-backgrounds in {TRAIN_SOURCE}: apt-get install mate-backgrounds")
    plasma = [PLASMA_SOURCE / name / "contents" / "images" / "2560x1600.jpg" for name in PLASMA_PHOTOS]
    if not all(p.exists() for p in plasma):
        sys.exit(f"expected KDE's photographs in {PLASMA_SOURCE}: apt-get install plasma-workspace-wallpapers")
    photos += plasma
    (DATA / "train").mkdir(exist_ok=True)
    names, pngs, sources, factors, index, boxes, boxes_original, details = [], [], [], [], [], [], [], []
    for k, photo in enumerate(photos):
        im = rgb(photo)
        factor = LONG_SIDE / max(im.size)
        small = im.resize((round(im.width * factor), round(im.height * factor)), Image.LANCZOS)
        stem = f"plasma_{photo.parents[2].name}" if photo.is_relative_to(PLASMA_SOURCE) else photo.stem
        png = DATA / "train" / f"{stem}.png"
        small.save(png, optimize=True)
        a = np.asarray(Image.open(png).convert("RGB"))
        crops, tops, lefts, rejected = random_crops(a, CROP, CROPS_PER_IMAGE, np.random.default_rng([SEED, k]),
                                                    MIN_GRAD)
        b = np.stack([tops, lefts, tops + CROP, lefts + CROP], 1)
        names.append(png.name), pngs.append(png), sources.append(str(photo)), factors.append(small.width / im.width)
        index.append(np.full(len(crops), k, np.int16)), boxes.append(b)
        boxes_original.append((b / factors[-1]).astype(np.float32))
        details.append(np.array([detail(c.transpose(1, 2, 0)) for c in crops], np.float32))
        print(f"train {stem:24s} {im.width}x{im.height} -> {small.width}x{small.height}: "
              f"{len(crops)} crops, {rejected} flat draws rejected")
    params = dict(seed=SEED, crop=CROP, long_side=LONG_SIDE, crops_per_image=CROPS_PER_IMAGE, min_grad=MIN_GRAD,
                  resize="PIL LANCZOS", pillow=PIL.__version__, source_package="mate-backgrounds 1.26.0-1; plasma-workspace-wallpapers 4:5.27.5-2")
    npz = DATA / "train_crops.npz"
    save_npz(npz, images=np.array(names), image_sha256=np.array([sha256(p) for p in pngs]),
             sources=np.array(sources), source_sha256=np.array([sha256(Path(s)) for s in sources]),
             resize_factor=np.array(factors), image_index=np.concatenate(index), boxes=np.concatenate(boxes),
             boxes_original=np.concatenate(boxes_original), detail=np.concatenate(details),
             params=np.array(json.dumps(params)))
    print(f"train: {sum(len(i) for i in index)} crops of {CROP}x{CROP} from {len(photos)} photos")
    return pngs + [npz]


def make_eval() -> list[Path]:
    (DATA / "eval").mkdir(exist_ok=True)
    out = []
    for name, (package, rel) in EVAL_SOURCES.items():
        src = package_file(package, rel)
        im = rgb(src)
        square = ImageOps.fit(im, (EVAL_SIZE, EVAL_SIZE), Image.LANCZOS)  # centre crop to square, then shrink
        square.save(DATA / "eval" / f"{name}.png", optimize=True)
        out.append(DATA / "eval" / f"{name}.png")
        print(f"eval  {name:13s} {package}/{rel} {im.width}x{im.height} sha256 {sha256(src)[:12]}")
    return out


def make_eval_other() -> list[Path]:
    photos = [OTHER_SOURCE / f"{name}.jpg" for name in OTHER_PHOTOS]
    if not all(p.exists() for p in photos):
        sys.exit(f"expected the photos of lomiri-wallpapers-16.04 in {OTHER_SOURCE}: "
                 "apt-get install lomiri-wallpapers-16.04")
    (DATA / "eval_other").mkdir(exist_ok=True)
    out = []
    for i in range(OTHER_COUNT):
        photo = photos[i % len(photos)]
        im = rgb(photo)
        factor = LONG_SIDE / max(im.size)
        small = np.asarray(im.resize((round(im.width * factor), round(im.height * factor)), Image.LANCZOS))
        (crop,), *_ = random_crops(small, OTHER_SIZE, 1, np.random.default_rng([SEED, 1000 + i]), MIN_GRAD)
        path = DATA / "eval_other" / f"{i:02d}_{photo.stem.split('_by_')[0]}.png"
        Image.fromarray(crop.transpose(1, 2, 0)).save(path, optimize=True)
        out.append(path)
        print(f"other {path.name:24s} from {photo.name} {im.width}x{im.height} sha256 {sha256(photo)[:12]}")
    return out


def main() -> None:
    files = make_train() + make_eval() + make_eval_other()
    lines = [f"{sha256(p)}  {p.relative_to(DATA).as_posix()}" for p in files]
    names = {line.split()[1] for line in lines}      # keep the other files' lines (the bundled models')
    lines += [line for line in (DATA / "SHA256SUMS").read_text().splitlines() if line.split()[1] not in names]
    (DATA / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    print(f"total {sum(p.stat().st_size for p in files) / 1e6:.2f} MB; wrote data/SHA256SUMS")


if __name__ == "__main__":
    main()
