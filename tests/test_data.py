"""sr3_mini.data: image conversions, the bundled sets, (x, y) pairs, and FolderCrops' handling of bad input."""
import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr3_mini import data

DATA = Path(data.__file__).resolve().parent.parent / "data"


def _px(t, i=0, j=0):
    return t[:, i, j].tolist()


# ---- uint8 <-> [-1, 1] and load_image -------------------------------------------------------------------------

def test_uint8_round_trip_and_end_points():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256)
    y = data.from_uint8(u)
    assert y.dtype == torch.float32 and y.min() == -1 and y.max() == 1
    assert y[0, 0, 51] == pytest.approx(-0.6, abs=1e-7)  # 51 / 127.5 - 1
    assert torch.equal(data.to_uint8(y), u)
    assert torch.equal(data.to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


def _save(tmp_path, im, name, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def _check(t, h=2, w=3):
    assert t.dtype == torch.float32 and t.shape == (3, h, w) and t.min() >= -1 and t.max() <= 1


def test_rgb_exact_values(tmp_path):
    a = np.zeros((2, 3, 3), np.uint8)
    a[0, 0] = (51, 102, 255)
    t = data.load_image(_save(tmp_path, Image.fromarray(a), "rgb.png"))
    _check(t)
    assert _px(t) == pytest.approx([-0.6, -0.2, 1.0], abs=1e-6) and _px(t, 1, 2) == [-1, -1, -1]


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_becomes_equal_channels(tmp_path, mode):
    a = np.full((2, 3), 51, np.uint8) if mode == "L" else np.array([[0, 255, 0], [255, 0, 255]], np.uint8)
    t = data.load_image(_save(tmp_path, Image.fromarray(a).convert(mode), f"{mode}.png"))
    _check(t)
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    assert t[0, 0, 0].item() == pytest.approx(-0.6 if mode == "L" else -1.0, abs=1e-6)


def test_alpha_is_composited_on_white(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 0)  # invisible red -> white
    a[0, 1] = (0, 0, 255, 255)  # opaque blue
    a[0, 2] = (0, 0, 0, 51)  # black at alpha 0.2 over white -> 0.8 -> 0.6
    t = data.load_image(_save(tmp_path, Image.fromarray(a, "RGBA"), "rgba.png"))
    _check(t)
    assert _px(t, 0, 0) == [1, 1, 1] and _px(t, 0, 1) == [-1, -1, 1]
    assert _px(t, 0, 2) == pytest.approx([0.6] * 3, abs=1e-6)
    la = Image.fromarray(np.array([[[51, 255], [0, 0], [0, 51]]] * 2, np.uint8), "LA")
    t = data.load_image(_save(tmp_path, la, "la.png"))
    _check(t)
    assert _px(t, 0, 0) == pytest.approx([-0.6] * 3, abs=1e-6) and _px(t, 0, 1) == [1, 1, 1]
    assert _px(t, 0, 2) == pytest.approx([0.6] * 3, abs=1e-6)


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.fromarray(np.array([[0, 1, 2]] * 2, np.uint8), "P")
    p.putpalette([255, 0, 0, 0, 255, 0, 51, 102, 255] + [0] * 759)
    t = data.load_image(_save(tmp_path, p, "p.png"))
    _check(t)
    assert _px(t, 0, 0) == [1, -1, -1] and _px(t, 0, 2) == pytest.approx([-0.6, -0.2, 1.0], abs=1e-6)
    t = data.load_image(_save(tmp_path, p, "pt.png", transparency=1))
    assert _px(t, 0, 1) == [1, 1, 1] and _px(t, 0, 0) == [1, -1, -1]


def test_16_bit_keeps_its_precision(tmp_path):
    a = np.array([[0, 32768, 65535]] * 2, np.uint16)
    path = _save(tmp_path, Image.fromarray(a), "grey16.png")
    assert Image.open(path).mode in ("I;16", "I")
    t = data.load_image(path)
    _check(t)
    assert t[0, 0].tolist() == pytest.approx([-1, 32768 / 65535 * 2 - 1, 1], abs=1e-6)
    assert torch.equal(t[0], t[2])
    t = data.load_image(_save(tmp_path, Image.fromarray(a.astype(np.int32)), "grey32.tif"))  # mode I
    assert t[1, 0].tolist() == pytest.approx([-1, 32768 / 65535 * 2 - 1, 1], abs=1e-6)


def test_cmyk(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, 0] = (0, 255, 0, 0)  # magenta
    a[0, 1] = (0, 0, 0, 255)  # black ink
    t = data.load_image(_save(tmp_path, Image.fromarray(a, "CMYK"), "cmyk.tif"))
    _check(t)
    assert _px(t, 0, 0) == [1, -1, 1] and _px(t, 0, 1) == [-1, -1, -1] and _px(t, 0, 2) == [1, 1, 1]


def test_exif_rotation_is_applied(tmp_path):
    im = Image.new("RGB", (3, 2))
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    assert data.load_image(_save(tmp_path, im, "rot.jpg", exif=exif)).shape == (3, 3, 2)


def test_non_images_raise_value_error_naming_the_path(tmp_path):
    good = _save(tmp_path, Image.new("RGB", (64, 64), (9, 99, 199)), "good.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:300])
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("text.jpg", "cut.jpg", "empty.png"):
        with pytest.raises(ValueError, match=name):
            data.load_image(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        data.load_image(tmp_path / "missing.png")


def test_save_image_round_trip(tmp_path):
    y = data.from_uint8(torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    data.save_image(y[None], tmp_path / "sub" / "y.png")
    assert torch.equal(data.load_image(tmp_path / "sub" / "y.png"), y)
    with pytest.raises(ValueError):
        data.save_image(y[:1], tmp_path / "bad.png")


# ---- the bundled sets -------------------------------------------------------------------------------------------

def test_bundled_sets_shapes_and_detail():
    crops = data.bundled_train_crops()
    assert crops.dtype == torch.uint8 and crops.shape[1:] == (3, 64, 64) and len(crops) == 23 * 256
    assert min(data.detail(c.permute(1, 2, 0).numpy()) for c in crops[::7]) >= data.MIN_GRAD
    crops[0] = 0  # callers get their own copy
    assert data.bundled_train_crops()[0].any()
    ev = data.bundled_eval_images()
    names = [n for n, _ in ev]
    assert names == sorted(names) and 6 <= len(ev) <= 10
    for _, y in ev:
        _check(y, 256, 256)


def _sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_eval_and_train_do_not_overlap():
    train_files = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (DATA / "train").glob("*.png")}
    eval_files = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (DATA / "eval").glob("*.png")}
    assert len(train_files) == 23 and not train_files & eval_files
    crops = {_sha(c) for c in data.bundled_train_crops().numpy()}
    evals = [data.to_uint8(y).numpy() for _, y in data.bundled_eval_images()]
    tiles = {_sha(u[:, i:i + 64, j:j + 64]) for u in evals for i in range(0, 193, 32) for j in range(0, 193, 32)}
    assert not crops & tiles
    with np.load(DATA / "train_crops.npz") as z:
        assert all("mate/nature" in s or "/usr/share/wallpapers/" in s for s in z["sources"])


def test_bundled_files_match_their_checksums():
    for line in (DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


def test_data_dir_override_and_tamper_check(tmp_path, monkeypatch):
    shutil.copytree(DATA / "train", tmp_path / "train")
    shutil.copy(DATA / "train_crops.npz", tmp_path)
    (tmp_path / "eval").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "eval" / "only.png")
    monkeypatch.setenv("SR3_MINI_DATA", str(tmp_path))
    assert [n for n, _ in data.bundled_eval_images()] == ["only"]
    Image.new("RGB", (640, 400)).save(tmp_path / "train" / "Aqua.png")
    with pytest.raises(ValueError, match="make_dataset"):
        data.bundled_train_crops()


# ---- pairs ------------------------------------------------------------------------------------------------------

def _crops(n=24, size=16, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ---- FolderCrops -----------------------------------------------------------------------------------------------

def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), np.uint8)).save(root / "a.png")
    (root / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (90, 70), np.uint8)).save(root / "sub" / "b.jpg")
    (root / "notes.txt").write_text("hello")
    (root / "broken.jpg").write_bytes((root / "sub" / "b.jpg").read_bytes()[:200])
    Image.new("RGB", (31, 200), (0, 90, 0)).save(root / "small.png")
    Image.new("RGB", (80, 80), (120, 120, 120)).save(root / "flat.png")
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root


def test_folder_crops_skips_and_counts_bad_files(tmp_path):
    folder = _folder(tmp_path / "photos")
    with pytest.warns(UserWarning) as rec:
        fc = data.FolderCrops(folder, crop=32, crops_per_image=5)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "skipped 4 of 6 files: 2 not readable images, 1 smaller than 32x32, 1 without a crop" in msg
    assert fc.counts["images_used"] == 2 and fc.sources == ["a.png", "sub/b.jpg"]
    assert fc.crops.shape == (10, 3, 32, 32) and fc.crops.dtype == torch.uint8 and len(fc) == 10
    t, l = fc.boxes[7]
    b = np.asarray(Image.open(folder / "sub" / "b.jpg").convert("RGB"))
    assert np.array_equal(fc[7].permute(1, 2, 0).numpy(), b[t:t + 32, l:l + 32])


def test_folder_crops_deterministic_parallel_and_max_side(tmp_path):
    folder = _folder(tmp_path / "photos")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = data.FolderCrops(folder, crop=32, crops_per_image=4, seed=3)
        b = data.FolderCrops(folder, crop=32, crops_per_image=4, seed=3, workers=2)
        c = data.FolderCrops(folder, crop=32, crops_per_image=4, seed=4)
        d = data.FolderCrops(folder, crop=16, crops_per_image=4, max_side=40)
    assert torch.equal(a.crops, b.crops) and not torch.equal(a.crops, c.crops)
    assert d.boxes.max() <= 40 - 16 and d.counts["too_small"] == 1  # small.png shrinks to 6x40


def test_folder_crops_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        data.FolderCrops(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a folder"):
        data.FolderCrops(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("text")
    with pytest.raises(ValueError, match=r"no usable image .*x.png \(not_image\)"):
        data.FolderCrops(tmp_path / "bad")


def test_folder_crops_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    folder, cache = _folder(tmp_path / "photos"), tmp_path / "cache"
    with pytest.warns(UserWarning):
        first = data.FolderCrops(folder, crop=32, crops_per_image=3, cache_dir=cache)
    assert not first.from_cache and len(list(cache.glob("*.npz"))) == 1

    def no_decoding(job):
        raise AssertionError("decoded despite the cache")

    monkeypatch.setattr(data, "_crops_of_file", no_decoding)
    with pytest.warns(UserWarning, match="skipped 4 of 6"):
        again = data.FolderCrops(folder, crop=32, crops_per_image=3, cache_dir=cache)
    assert again.from_cache and torch.equal(again.crops, first.crops) and again.sources == first.sources
    assert again.counts == first.counts and np.array_equal(again.boxes, first.boxes)
    (folder / "c.png").write_bytes((folder / "a.png").read_bytes())
    with pytest.raises(AssertionError, match="despite"):
        data.FolderCrops(folder, crop=32, crops_per_image=3, cache_dir=cache)


# ---- a training run's data ----------------------------------------------------------------------------------
def test_a_runs_data_is_the_bundled_sets_or_a_folder_with_whole_photos_held_out(tmp_path):
    pool, val = data.load_data_once(0, 1, val_size=2)             # one process: load_data itself
    assert pool.dtype == val.dtype == torch.uint8 and pool.shape[1:] == (3, 64, 64) and val.shape == (2, 3, 256, 256)
    assert torch.equal(val[1], data.to_uint8(data.bundled_eval_images()[1][1]))
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    pool, val = data.load_data(folder, crop=16, val_size=5, cache_dir=tmp_path / "cache")
    crops = data.FolderCrops(folder, crop=16, cache_dir=tmp_path / "cache")
    assert len(val) == 2 and len(pool) == (crops.image_index == 2).sum()  # one photo is always left to train on
    with pytest.raises(ValueError, match="not a folder"):
        data.load_data(tmp_path / "nope", crop=16)
