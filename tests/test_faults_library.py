"""Faults at the library's edges (issue "Nothing lost, nothing silently wrong"): every way a checkpoint can fail
to load is one ValueError naming the file; the bundled models are checked against data/SHA256SUMS; killed saves
leave no temporary files behind for good; ``super_resolve`` takes what resampling makes and refuses, clearly,
what it cannot honour (another scale than the model's, an empty batch). The command line turns these
ValueErrors into one line and exit status 2 (tests/test_cli.py).
"""
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sr3_mini
from sr3_mini import checkpoint as C
from sr3_mini.sample import LR_OVERSHOOT, super_resolve
from sr3_mini.schedule import Schedule
from sr3_mini.tiling import upscale_image
from sr3_mini.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def tiny_state(scale=4):
    torch.manual_seed(0)
    model = UNet.from_preset("tiny")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)                     # zero-initialised output convs: make the output depend on x
    return C.make_state(kind="sr3", model=model, schedule=Schedule.linear(2000, 1e-6, 1e-2), scale=scale)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return C.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "good.pt", tiny_state())


def rezip(src: bytes, drop=None, replace=None) -> bytes:
    """The checkpoint's zip rewritten by Python's zipfile (valid CRCs), without entry ``drop`` or with
    ``replace = (name, bytes)``: damage that no checksum of the zip can see."""
    z, out = zipfile.ZipFile(io.BytesIO(src)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as w:
        for name in z.namelist():
            if name != drop:
                w.writestr(name, replace[1] if replace and name == replace[0] else z.read(name))
    return out.getvalue()


# ---- every damaged checkpoint: one ValueError naming the file ----------------------------------------------------
def damaged(good: Path, case: str):
    """(bytes of the file, or a state dict to torch.save, and a phrase of the message)."""
    b = good.read_bytes()
    state = tiny_state()
    if case.startswith("truncated"):
        return b[:int(case.split("_")[1])] if case.split("_")[1] != "end" else b[:-30], "corrupt"
    if case == "random_bytes":
        return random.Random(0).randbytes(5000), "corrupt"
    if case == "missing_entry":
        return rezip(b, drop="archive/data/3"), "corrupt"
    if case == "flipped_64_bytes":                     # the zip's CRC-32 sees it; torch.load does not look
        flipped = bytearray(b)
        flipped[len(b) // 2:len(b) // 2 + 64] = bytes(x ^ 0xFF for x in flipped[len(b) // 2:len(b) // 2 + 64])
        return bytes(flipped), "CRC"
    if case == "schedule_lacks_alphas":
        state["schedule"] = {"name": "linear"}
        return state, "schedule"
    if case == "schedule_out_of_range":
        state["schedule"]["alphas"] = [1.5, 0.5]
        return state, "schedule"
    if case == "config_of_wrong_type":
        state["unet_config"]["channels"] = "sixteen"
        return state, "unet_config"
    if case == "weights_not_tensors":
        state["model"] = {k: 0 for k in state["model"]}
        return state, "weights"
    if case == "nan_weights":
        state["model"]["conv_in.weight"][0, 0, 0, 0] = float("nan")
        return state, "conv_in.weight"
    if case == "scale_not_an_integer":
        state["scale"] = "x4"
        return state, "scale"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["truncated_0", "truncated_100", "truncated_end", "random_bytes", "missing_entry",
                                  "flipped_64_bytes", "schedule_lacks_alphas", "schedule_out_of_range",
                                  "config_of_wrong_type", "weights_not_tensors", "nan_weights",
                                  "scale_not_an_integer"])
def test_every_damaged_checkpoint_is_one_value_error_naming_the_file(good, tmp_path, case):
    content, phrase = damaged(good, case)
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=phrase) as e:
        C.load_model(path)
    assert str(path) in str(e.value)


def test_a_mangled_pickle_with_valid_checksums_is_a_value_error_too(good, tmp_path):
    """Bytes of data.pkl changed and the zip rewritten with CRCs that match: torch.load itself then raised
    IndexError, KeyError, TypeError, AttributeError or struct.error. Seeded: 150 single-byte changes."""
    b = good.read_bytes()
    pkl = zipfile.ZipFile(io.BytesIO(b)).read("archive/data.pkl")
    rng, outcomes = random.Random(2), set()
    for _ in range(150):
        mangled = bytearray(pkl)
        mangled[rng.randrange(len(pkl))] = rng.getrandbits(8)
        (tmp_path / "m.pt").write_bytes(rezip(b, replace=("archive/data.pkl", bytes(mangled))))
        try:
            C.load_model(tmp_path / "m.pt")
            outcomes.add("loaded")                      # a changed digit in a number, say: nothing can tell
        except ValueError as e:
            assert "m.pt" in str(e)
            outcomes.add("ValueError")
    assert "ValueError" in outcomes


# ---- the bundled models against data/SHA256SUMS -----------------------------------------------------------------
def test_sha256sums_lists_the_bundled_models():
    sums = dict(reversed(line.split()) for line in (DATA / "SHA256SUMS").read_text().splitlines())
    for name in ("sr3_mini_x4.pt", "regression_x4.pt", "sr3_stage2_x4.pt", "sr3_mini_x4.pt.variance.json"):
        assert sums[name] == hashlib.sha256((DATA / name).read_bytes()).hexdigest(), name


@pytest.mark.parametrize("kind, name", [("sr3", "sr3_mini_x4.pt"), ("regression", "regression_x4.pt"),
                                        ("sr3_stage2", "sr3_stage2_x4.pt")])
def test_a_bundled_model_with_flipped_bytes_is_refused(tmp_path, monkeypatch, kind, name):
    """64 flipped bytes in the weights loaded silently (the regression model) or blamed the variance table (SR3)."""
    for f in ("SHA256SUMS", name, name + ".variance.json"):
        if (DATA / f).exists():
            shutil.copy(DATA / f, tmp_path / f)
    monkeypatch.setenv("SR3_MINI_DATA", str(tmp_path))
    model, _, info = sr3_mini.load_pretrained(kind)             # the intact copy loads
    assert info["kind"] == {"sr3_stage2": "sr3"}.get(kind, kind) and model.scale == info["scale"] == 4
    b = bytearray((tmp_path / name).read_bytes())
    b[3_000_000:3_000_064] = bytes(x ^ 0xFF for x in b[3_000_000:3_000_064])
    (tmp_path / name).write_bytes(bytes(b))
    with pytest.raises(ValueError, match=f"{name}.*SHA256SUMS.*reinstall"):
        sr3_mini.load_pretrained(kind)


def test_a_damaged_variance_table_is_refused_and_a_retrain_updates_its_line(tmp_path, monkeypatch):
    """One changed digit of v(gamma) still parses and is tied to the right model by its SHA-256: only the table's own
    line in SHA256SUMS sees it. ``update_checksum`` (what release_model.py and estimate_variance.py call) makes a
    deliberate change load again."""
    name = "sr3_mini_x4.pt"
    for f in ("SHA256SUMS", name, name + ".variance.json"):
        shutil.copy(DATA / f, tmp_path / f)
    monkeypatch.setenv("SR3_MINI_DATA", str(tmp_path))
    table = tmp_path / (name + ".variance.json")
    d = json.loads(table.read_text())
    d["var_y0"][5] *= 3
    table.write_text(json.dumps(d, indent=1))
    with pytest.raises(ValueError, match=r"variance\.json.*SHA256SUMS.*reinstall"):
        sr3_mini.load_pretrained("sr3")
    sums = tmp_path / "SHA256SUMS"                      # its line in sha256sum's binary form, as `sha256sum -b` writes
    sums.write_text(sums.read_text().replace(f"  {table.name}", f" *{table.name}"))
    assert sr3_mini.update_checksum(table)
    model, _, _ = sr3_mini.load_pretrained("sr3")
    assert model.var_y0.var_y0[5] == d["var_y0"][5]
    assert sum(line.endswith(name + ".variance.json") for line in (tmp_path / "SHA256SUMS").read_text().splitlines()) == 1
    assert not sr3_mini.update_checksum(tmp_path / "elsewhere" / "x.pt")     # no SHA256SUMS there: nothing to do


# ---- temporary files of killed saves ------------------------------------------------------------------------------
def test_a_save_removes_the_temporary_files_that_killed_saves_left(tmp_path):
    """A SIGKILL between mkstemp and the rename leaves ``.last.pt.<pid>.<random>.tmp`` (68 MB after 8 kills of a
    training run). The next save of the same file removes those whose writer is gone and that nobody has written
    to for STALE_TEMP_SECONDS; it keeps a live writer's, a fresh one, and other files' temporaries."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    old = time.time() - 2 * C.STALE_TEMP_SECONDS
    names = {"dead_old": f".last.pt.{dead}.abc123de.tmp", "unnamed_old": ".last.pt.k2j3h4_x.tmp",
             "live_old": f".last.pt.{os.getpid()}.def456gh.tmp", "dead_fresh": f".last.pt.{dead}.ghi789jk.tmp",
             "other_target": f".best.pt.{dead}.jkl012mn.tmp", "user_file": "last.pt.notes"}
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"\0" * 1000)
        if key != "dead_fresh":
            os.utime(tmp_path / name, (old, old))
    C.save_checkpoint(tmp_path / "last.pt", tiny_state())
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"last.pt"} | {names[k] for k in ("live_old", "dead_fresh", "other_target", "user_file")}


# ---- super_resolve's edges -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny x4 model as load_model gives it: with ``model.scale`` from the checkpoint."""
    path = C.save_checkpoint(tmp_path_factory.mktemp("sr") / "x4.pt", tiny_state())
    return C.load_model(path)[0]


def sharp_photo(side: int) -> torch.Tensor:
    """[1, 3, side, side] in [-1, 1] with saturated edges: what makes bicubic resampling overshoot."""
    i = torch.arange(side) // max(side // 8, 1)
    board = ((i[:, None] + i[None, :]) % 2).float() * 2 - 1
    return torch.stack([board, board.flip(0), -board])[None]


def sr(model, x, **kw):
    return super_resolve(model, x, steps=2, generator=torch.Generator().manual_seed(0), progress=False, **kw)


def test_an_lr_image_resampled_the_usual_way_is_accepted(model):
    """F.interpolate(..., antialias=True) of a [-1, 1] photo overshoots; up to LR_OVERSHOOT it is clamped."""
    x = F.interpolate(sharp_photo(64), scale_factor=0.25, mode="bicubic", antialias=True)
    assert 1 < x.abs().max() <= 1 + LR_OVERSHOOT                 # the case of the issue: [-1.049, 1.075]
    torch.testing.assert_close(sr(model, x), sr(model, x.clamp(-1, 1)), rtol=0, atol=0)
    for bad in (x * 1.3 / x.abs().max(), (x.clamp(-1, 1) + 1) * 127.5):   # beyond the tolerance; 0..255 pixels
        with pytest.raises(ValueError, match=r"\[-1, 1\]"):
            sr(model, bad)


def test_another_scale_than_the_models_is_refused(model, tmp_path):
    x = sharp_photo(8)
    with pytest.raises(ValueError, match="x4.*scale=3"):
        sr(model, x, scale=3)
    assert sr(model, x).shape[-1] == 32                          # default: the model's own scale
    x2 = C.load_model(C.save_checkpoint(tmp_path / "x2.pt", tiny_state(scale=2)))[0]
    assert sr(x2, x).shape[-1] == 16


def test_float64_is_accepted_and_an_empty_batch_refused(model):
    x = sharp_photo(8)
    y64 = sr(model, x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), sr(model, x), rtol=0, atol=1e-4)   # equations in float64
    with pytest.raises(ValueError, match="empty"):
        sr(model, x[:0])


def test_a_greyscale_input_gives_a_greyscale_output(model):
    """Three equal channels in (a greyscale photo loaded as RGB): three equal channels out, their mean (SR3 drew
    colour noise of up to 22/255 into them); a colour image in the same batch keeps its colours."""
    colour = sharp_photo(8)
    grey = colour.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    for y in (sr(model, torch.cat([grey, colour])),
              upscale_image(model, "regression", torch.cat([grey, colour]), 4)):   # the CLI's regression path
        assert torch.equal(y[0, 0], y[0, 1]) and torch.equal(y[0, 0], y[0, 2])
        assert (y[1, 0] - y[1, 1]).abs().max() > 0.01
