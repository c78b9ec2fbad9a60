"""The command line, run as a user runs it: ``python -m sr3_mini ...`` in a subprocess, in a fresh folder.

Fast and independent of the bundled model: a session fixture writes tiny random-weight checkpoints (the "tiny"
U-Net with model.multiple = 8, so odd LR sizes need padding) and a data folder of two 48 x 48 crops of the
held-out photos; SR3_MINI_DATA points ``demo`` and ``evaluate`` at it and ``--checkpoint`` points ``upscale``
at it. Every bad input must give exit status 2, one ``error:`` line on stderr, no traceback and no file written.
Each command and each bad input of the issue runs as a subprocess; further cases call ``cli.main`` in this
process (the same code, without the seconds a fresh interpreter spends importing torch on a busy CPU).
One slow test runs the real ``demo`` with the bundled model when it exists.
"""
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr3_mini.checkpoint import make_state, save_checkpoint
from sr3_mini.cli import main
from sr3_mini.tiling import Tiled
from sr3_mini.schedule import Schedule
from sr3_mini.unet import UNet

ROOT = Path(__file__).resolve().parent.parent


def tiny_unet(seed: int) -> UNet:
    """The tiny preset with 4 levels (multiple 8); the zero-initialised output convs are randomised too, so the
    output depends on the input."""
    torch.manual_seed(seed)
    model = UNet.from_preset("tiny", channel_mults=(1, 2, 2, 2))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)
    return model


def photo(size_hw, mode="RGB", seed=0) -> Image.Image:
    """A real-looking image: a crop of a held-out photo, resized, in ``mode``."""
    im = Image.open(ROOT / "data" / "eval" / "chelsea.png").convert("RGB")
    left = 40 + 10 * seed
    im = im.crop((left, 60, left + 4 * size_hw[1], 60 + 4 * size_hw[0])).resize(size_hw[::-1], Image.BICUBIC)
    if mode == "RGBA":
        a = np.linspace(0, 255, size_hw[1], dtype=np.uint8)[None].repeat(size_hw[0], 0)
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(a))
        return im
    return im.convert(mode)


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_assets")
    data = root / "data"
    (data / "eval").mkdir(parents=True)
    schedule = Schedule.linear(2000, 1e-6, 1e-2)
    save_checkpoint(data / "sr3_mini_x4.pt", make_state(kind="sr3", model=tiny_unet(0), schedule=schedule, scale=4))
    save_checkpoint(data / "regression_x4.pt",
                    make_state(kind="regression", model=tiny_unet(1), schedule=schedule, scale=4))
    bad = make_state(kind="sr3", model=tiny_unet(2), schedule=schedule, scale=4)
    bad["unet_config"]["channels"] = 24               # the config says 24 channels, the weights have 16
    save_checkpoint(root / "mismatched.pt", bad)
    for name in ("astronaut", "chelsea"):
        crop = Image.open(ROOT / "data" / "eval" / f"{name}.png").crop((96, 96, 144, 144))
        crop.save(data / "eval" / f"{name}.png")
    photo((11, 13)).save(root / "lr_odd.png")
    photo((30, 22), seed=1).save(root / "lr_wide.png")
    photo((11, 13), "L").save(root / "lr_grey.png")
    photo((9, 10), "RGBA").save(root / "lr_rgba.png")
    (root / "notes.png").write_text("this is not an image\n")
    return root


def run(args, cwd, data=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "SR3_MINI_DATA"}
    # one thread: the tiny model gains nothing from two, and on a busy CPU OpenMP's spinning costs seconds
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    if data is not None:
        env["SR3_MINI_DATA"] = str(data)
    return subprocess.run([sys.executable, "-m", "sr3_mini", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def call(args, cwd, monkeypatch, capsys, data=None):
    """The same command in this process (``cli.main``): for the extra cases, without a fresh interpreter's
    seconds of ``import torch``. Returns (exit status, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    if data is None:
        monkeypatch.delenv("SR3_MINI_DATA", raising=False)
    else:
        monkeypatch.setenv("SR3_MINI_DATA", str(data))
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:                      # argparse: --help, usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, stderr, *phrases):
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert "error:" in last, stderr
    for phrase in phrases:
        assert phrase in last, (phrase, last)


def size_of(path):
    with Image.open(path) as im:
        return im.size, im.mode


# ---- each command, as a subprocess ----
def test_demo_writes_the_comparison_and_prints_the_table(assets, tmp_path):
    r = run(["demo", "--steps", "3", "--image", "chelsea"], tmp_path, data=assets / "data")
    assert r.returncode == 0, r.stderr
    assert "3 steps" in r.stdout and "PSNR" in r.stdout and "consistency" in r.stdout
    for method in ("bicubic", "regression", "SR3"):
        assert any(line.startswith(method) for line in r.stdout.splitlines()), r.stdout
    assert "wrote sr3_mini_demo.png in" in r.stdout
    (w, h), _ = size_of(tmp_path / "sr3_mini_demo.png")
    assert w > 2 * h                                   # five panels side by side (and their zoomed crops)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr3_mini_demo.png"]   # no temporary file left


def test_upscale_odd_size_greyscale_gives_exactly_scale_times(assets, tmp_path):
    """13 x 11 is reflect-padded to 14 x 12 (56 x 48 is a multiple of 8) and cropped back; L -> RGB, grey."""
    r = run(["upscale", assets / "lr_grey.png", "-o", "out.png", "--steps", "3",
             "--checkpoint", assets / "data" / "sr3_mini_x4.pt"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert size_of(tmp_path / "out.png") == ((52, 44), "RGB")
    rgb = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    assert (rgb == rgb[..., :1]).all()                 # greyscale in, greyscale out (no colour noise)


def test_upscale_tiled(assets, tmp_path):
    """--tile 8 (32 HR pixels) on a 22 x 30 LR image: 3 x 2 tiles blended, still exactly x4, not flat."""
    r = run(["upscale", assets / "lr_wide.png", "-o", "tiled.png", "--tile", "8", "--steps", "2",
             "--checkpoint", assets / "data" / "sr3_mini_x4.pt"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert size_of(tmp_path / "tiled.png") == ((88, 120), "RGB")
    assert np.asarray(Image.open(tmp_path / "tiled.png")).std() > 0


def test_evaluate_prints_the_table_and_writes_csv(assets, tmp_path):
    r = run(["evaluate", "--steps", "2", "--csv", "scores.csv"], tmp_path, data=assets / "data")
    assert r.returncode == 0, r.stderr
    assert "2 image(s)" in r.stdout and "PSNR" in r.stdout and "wrote scores.csv" in r.stdout
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "method", "psnr", "ssim", "consistency", "sharpness", "grain", "diversity"]
    assert len(rows) == 2 * 3 + 3
    assert {(r["image"], r["method"]) for r in rows[-3:]} == {("mean", m) for m in ("bicubic", "regression", "SR3")}
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("psnr", "ssim", "consistency", "sharpness"))
    assert all(r["diversity"] == "" for r in rows)                 # one seed: no diversity


def test_evaluate_with_seeds_reports_diversity(assets, tmp_path):
    r = run(["evaluate", "--steps", "2", "--seeds", "0", "1", "--limit", "1", "--csv", "scores.csv"], tmp_path,
            data=assets / "data")
    assert r.returncode == 0, r.stderr
    assert "seeds 0 1" in r.stdout and "diversity" in r.stdout
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = {(r["image"], r["method"]): r for r in csv.DictReader(f)}
    sr3 = float(rows[("mean", "SR3")]["diversity"])
    assert 0 < sr3 < 10 and rows[("mean", "regression")]["diversity"] == ""


@pytest.mark.parametrize("case", ["missing", "not_an_image", "mismatched_checkpoint", "steps_0", "seed_negative"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(assets, tmp_path, case):
    up = ["upscale", assets / "lr_odd.png", "-o", "out.png", "--steps", "2"]
    args, phrases = {
        "missing": (["upscale", "nope.png", "-o", "out.png"], ["nope.png", "no such file"]),
        "not_an_image": (["upscale", assets / "notes.png", "-o", "out.png"], ["notes.png", "not a readable image"]),
        "mismatched_checkpoint": (up + ["--checkpoint", assets / "mismatched.pt"], ["do not match", "unet_config"]),
        "steps_0": (up + ["--steps", "0"], ["--steps", "must be >= 1"]),
        "seed_negative": (["demo", "--seed", "-1"], ["--seed", "must be >= 0"]),
    }[case]
    r = run(args, tmp_path, data=assets / "data")
    assert_user_error(r.returncode, r.stderr, *phrases)
    assert list(tmp_path.iterdir()) == []              # nothing written, no temporary file


def test_existing_output_is_refused_without_overwrite(assets, tmp_path):
    out = tmp_path / "mine.png"
    photo((8, 8)).save(out)
    before, mtime = out.read_bytes(), out.stat().st_mtime_ns
    r = run(["upscale", assets / "lr_odd.png", "-o", out, "--steps", "2",
             "--checkpoint", assets / "data" / "sr3_mini_x4.pt"], tmp_path)
    assert_user_error(r.returncode, r.stderr, "mine.png", "--overwrite")
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    assert list(tmp_path.iterdir()) == [out]


# ---- more cases, in this process (same code, no interpreter start-up) ----
def test_help_lists_commands_and_train_delegates(tmp_path, monkeypatch, capsys):
    code, out, _ = call(["--help"], tmp_path, monkeypatch, capsys)
    assert code == 0 and all(c in out for c in ("demo", "upscale", "evaluate", "train"))
    code, out, _ = call(["train", "--help"], tmp_path, monkeypatch, capsys)
    assert code == 0 and "--batch-size" in out                   # train.main's own parser answered


def test_upscale_rgba_overwrite_and_regression(assets, tmp_path, monkeypatch, capsys, one_thread):
    """RGBA (composited on white) -> RGB; --overwrite replaces; a regression checkpoint makes one forward pass."""
    (tmp_path / "out.png").write_bytes(b"old")
    code, _, err = call(["upscale", assets / "lr_rgba.png", "-o", "out.png", "--steps", "2", "--overwrite",
                         "--checkpoint", assets / "data" / "sr3_mini_x4.pt"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert size_of(tmp_path / "out.png") == ((40, 36), "RGB")
    code, out, err = call(["upscale", assets / "lr_wide.png", "-o", "reg.png", "--tile", "8", "--scale", "4",
                           "--checkpoint", assets / "data" / "regression_x4.pt"], tmp_path, monkeypatch, capsys)
    assert code == 0 and "regression" in out, err
    assert size_of(tmp_path / "reg.png") == ((88, 120), "RGB")


def test_sigterm_during_a_write_is_one_line_exit_130_and_leaves_no_file(assets, tmp_path):
    """SIGTERM (kill, a scheduler) used to end every command but train at once: no message, status -15, and a write
    cut short left its temporary file. Now it is Ctrl-C: the temporary file is removed, one line, status 130, and
    the default SIGTERM is back afterwards. The signal is sent from inside the write, half a file written (in a
    child process: without the fix, SIGTERM kills whoever receives it)."""
    script = f"""if True:
        import os, signal, sys, time
        from pathlib import Path
        from sr3_mini import cli, data

        def killed_mid_write(image, path):
            Path(path).write_bytes(b"half a PNG")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)                                # the handler runs long before this ends

        data.save_image = killed_mid_write
        code = cli.main(["upscale", {str(assets / "lr_odd.png")!r}, "-o", "out.png", "--steps", "2",
                         "--checkpoint", {str(assets / "data" / "sr3_mini_x4.pt")!r}])
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        sys.exit(code)
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 130 and proc.stderr.strip() == "sr3-mini: interrupted; nothing was written", \
        (proc.returncode, proc.stderr[-2000:])
    assert list(tmp_path.iterdir()) == []


def test_evaluate_a_folder_skips_non_images_and_honours_limit(assets, tmp_path, monkeypatch, capsys, one_thread):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        photo((40, 40), seed=len(name)).save(folder / name)
    (folder / "0_notes.png").write_text("not a photo")       # sorted first: skipped before the limit is hit
    code, out, err = call(["evaluate", folder, "--limit", "1", "--steps", "2",
                           "--checkpoint", assets / "data" / "sr3_mini_x4.pt",
                           "--regression-checkpoint", assets / "data" / "regression_x4.pt"],
                          tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert "1 image(s)" in out
    assert "0_notes.png" in err


@pytest.mark.parametrize("case", ["missing_checkpoint", "unknown_format", "wrong_scale", "wrong_kind",
                                  "csv_exists", "demo_output_exists", "unknown_image", "not_a_folder"])
def test_more_bad_input(assets, tmp_path, monkeypatch, capsys, case):
    ckpt, lr = assets / "data" / "sr3_mini_x4.pt", assets / "lr_odd.png"
    up = ["upscale", lr, "-o", "out.png", "--steps", "2"]
    args, phrases = {
        "missing_checkpoint": (up + ["--checkpoint", "nope.pt"], ["nope.pt"]),
        "unknown_format": (["upscale", lr, "-o", "out.xyz"], ["image format"]),
        "wrong_scale": (up + ["--checkpoint", ckpt, "--scale", "2"], ["x4", "--scale"]),
        "wrong_kind": (["demo", "--checkpoint", assets / "data" / "regression_x4.pt"], ["'regression'", "'sr3'"]),
        "csv_exists": (["evaluate", "--csv", "taken.csv"], ["taken.csv", "--overwrite"]),
        "demo_output_exists": (["demo", "-o", "taken.csv"], ["taken.csv", "--overwrite"]),
        "unknown_image": (["demo", "--image", "nobody"], ["nobody", "chelsea"]),
        "not_a_folder": (["evaluate", "nowhere"], ["nowhere", "not a folder"]),
    }[case]
    (tmp_path / "taken.csv").write_text("keep me\n")
    code, _, err = call(args, tmp_path, monkeypatch, capsys, data=assets / "data")
    assert_user_error(code, err, *phrases)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.csv"]
    assert (tmp_path / "taken.csv").read_text() == "keep me\n"


class Pointwise(torch.nn.Module):
    """A 'network' without spatial context (1 x 1 convolution): tiling must not change its output at all."""
    multiple = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 3, 1)

    def forward(self, y_t, x_up, gamma):
        return self.conv(torch.cat([y_t, x_up], 1)) * gamma.view(-1, 1, 1, 1)


def test_tiles_blend_to_the_whole_image_result(one_thread):
    """The blending weights sum to one everywhere: with a context-free f_theta the tiled eps equals the whole
    image's (no seam), for several tile sizes and a batch of 2."""
    torch.manual_seed(0)
    net = Pointwise()
    y_t, x_up, gamma = torch.randn(2, 3, 88, 120), torch.randn(2, 3, 88, 120), torch.tensor([0.3, 0.7])
    whole = net(y_t, x_up, gamma)
    for tile in (32, 40, 56, 200):
        tiled = Tiled(net, tile, batch=3)
        torch.testing.assert_close(tiled(y_t, x_up, gamma), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_real_demo_with_the_bundled_model(tmp_path):
    if not (ROOT / "data" / "sr3_mini_x4.pt").exists():
        pytest.skip("data/sr3_mini_x4.pt is not there yet (train and export it, see data/MODEL_CARD.md)")
    start = time.perf_counter()
    r = run(["demo"], tmp_path, timeout=600)
    seconds = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    assert "SR3" in r.stdout and "wrote sr3_mini_demo.png" in r.stdout
    (w, h), _ = size_of(tmp_path / "sr3_mini_demo.png")
    assert w > 2 * h
    print(f"demo with the bundled model: {seconds:.1f} s\n{r.stdout}")


# ---- issue 13: bad input to train and upscale, the checkpoint's own schedule ----------------------------------
TRAIN = ["train", "--preset", "tiny", "--crop", "16", "--batch-size", "2", "--steps", "1", "--val-every", "0",
         "--no-progress", "--device", "cpu"]


@pytest.mark.parametrize("case, extra, phrase", [
    ("crop", ["--crop", "128"], "larger than the training crops"),
    ("preset", ["--preset", "nope"], "unknown preset"),
    ("unet", ["--unet", "nokey=1"], "nokey"),
    ("resume", ["--resume", "missing.pt"], "missing.pt"),
    ("differs", ["--resume", "auto", "--kind", "regression"], "differ"),
    ("data", ["--data", "not_a_folder"], "not a folder"),
    # checked by TrainConfig itself, as the options are read (this one ended in a traceback: issue 18)
    ("steps", ["--steps", "0"], "steps must be an integer >= 1, got 0"),
    ("lr", ["--lr", "-1"], "lr must be a finite number > 0")])
def test_train_errors_are_one_line_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys, one_thread, case, extra,
                                                            phrase):
    out = tmp_path / "run"
    if case == "differs":
        assert call([*TRAIN, "--out", out], tmp_path, monkeypatch, capsys)[0] == 0
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = call([*TRAIN, "--out", out, *extra], tmp_path, monkeypatch, capsys)
    assert_user_error(code, err, phrase)
    assert len(err.strip().splitlines()) == 1 and sorted(p.name for p in tmp_path.rglob("*")) == before


def test_upscale_samples_with_the_checkpoints_own_schedule(assets, tmp_path, monkeypatch, capsys, one_thread):
    import sr3_mini.tiling
    own = Schedule.linear(300, 1e-4, 0.05)
    save_checkpoint(tmp_path / "own.pt", make_state(kind="sr3", model=tiny_unet(0), schedule=own, scale=4))
    seen = []

    def spy(model, x, schedule=None, **kw):
        seen.append(schedule)
        return torch.zeros(x.shape[0], 3, 4 * x.shape[-2], 4 * x.shape[-1])
    monkeypatch.setattr(sr3_mini.tiling, "super_resolve", spy)
    code, _, err = call(["upscale", assets / "lr_odd.png", "-o", tmp_path / "o.png", "--checkpoint",
                         tmp_path / "own.pt", "--steps", "7"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    torch.testing.assert_close(seen[0].gammas, own.respaced(7).gammas)
    code, _, err = call(["upscale", assets / "lr_odd.png", "-o", tmp_path / "p.png", "--checkpoint",
                         tmp_path / "own.pt", "--steps", "301"], tmp_path, monkeypatch, capsys)
    assert_user_error(code, err, "300 steps")


def test_upscale_refuses_tiles_without_overlap_and_runs_beyond_the_limits(assets, tmp_path, monkeypatch, capsys,
                                                                          one_thread):
    args = ["upscale", assets / "lr_wide.png", "-o", tmp_path / "o.png"]
    code, _, err = call([*args, "--tile", "4"], tmp_path, monkeypatch, capsys, data=assets / "data")
    assert_user_error(code, err, "no overlap")                  # 4 x 4 = 16 HR pixels < 4 x multiple (8)
    code, _, err = call([*args, "--max-gib", "0.0001"], tmp_path, monkeypatch, capsys, data=assets / "data")
    assert_user_error(code, err, "GiB", "--max-gib")
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(ValueError, match="overlap"):
        Tiled(Pointwise(), 24)


def test_variance_option_reaches_the_sampler(assets, tmp_path, monkeypatch, capsys, one_thread):
    """--variance picks sigma_t^2 of (10) for upscale and evaluate; without it the library's default is used."""
    import inspect

    import sr3_mini.sample
    import sr3_mini.tiling
    seen = []
    real = sr3_mini.tiling.super_resolve

    def spy(model, x, **kw):
        seen.append(kw.get("variance", inspect.signature(real).parameters["variance"].default))
        return real(model, x, **kw)
    monkeypatch.setattr(sr3_mini.tiling, "super_resolve", spy)
    for flag in ("paper", "posterior", None):
        args = ["upscale", assets / "lr_odd.png", "-o", tmp_path / f"{flag}.png", "--steps", "2"]
        code, _, err = call(args + (["--variance", flag] if flag else []), tmp_path, monkeypatch, capsys,
                            data=assets / "data")
        assert code == 0, err
    default = inspect.signature(sr3_mini.sample.super_resolve).parameters["variance"].default
    assert seen == ["paper", "posterior", default]
    code, out, err = call(["evaluate", "--steps", "2", "--variance", "posterior", "--limit", "1"], tmp_path,
                          monkeypatch, capsys, data=assets / "data")
    assert code == 0 and seen[-1] == "posterior", err
    code, _, err = call(["upscale", assets / "lr_odd.png", "-o", tmp_path / "x.png", "--variance", "fixed"],
                        tmp_path, monkeypatch, capsys, data=assets / "data")
    assert code == 2 and "variance" in err


# ---- issue "Nothing lost, nothing silently wrong": upscale's guards and its output, checked before the work ------
@pytest.mark.parametrize("flag", ["--max-gib", "--max-minutes"])
@pytest.mark.parametrize("value", ["nan", "-1", "inf"])
def test_upscale_limits_are_finite_numbers_at_least_zero(assets, tmp_path, monkeypatch, capsys, flag, value):
    """NaN compared False with every estimate and so switched the guard off; 0 (no limit) stays."""
    code, _, err = call(["upscale", assets / "lr_odd.png", "-o", "o.png", f"{flag}={value}"], tmp_path,
                        monkeypatch, capsys, data=assets / "data")
    assert_user_error(code, err, flag, "a finite number >= 0", "0 = no limit")
    assert list(tmp_path.iterdir()) == []


def test_upscale_shows_a_long_runs_estimate_before_it_starts(assets, tmp_path, monkeypatch, capsys, one_thread):
    """A run estimated beyond LONG_RUN_SECONDS says so on stderr first (also with --quiet): it may take an hour."""
    import sr3_mini.commands as commands
    order = []
    monkeypatch.setattr(commands, "estimate_cost", lambda *a, **k: {"gib": 0.5, "seconds": 42 * 60, "tiles": 3})
    monkeypatch.setattr(commands, "upscale_image", lambda model, kind, x, scale, *a, **k: order.append("run") or
                        torch.zeros(1, 3, scale * x.shape[-2], scale * x.shape[-1]))
    monkeypatch.setattr(commands, "_note", lambda text: order.append(text))
    code, _, err = call(["upscale", assets / "lr_odd.png", "-o", "o.png", "--quiet"], tmp_path, monkeypatch, capsys,
                        data=assets / "data")
    assert code == 0, err
    assert len(order) == 2 and order[1] == "run" and "42 minutes" in order[0] and "0.5 GiB" in order[0], order
    monkeypatch.setattr(commands, "estimate_cost", lambda *a, **k: {"gib": 0.5, "seconds": 20, "tiles": 3})
    order.clear()
    code, _, err = call(["upscale", assets / "lr_odd.png", "-o", "p.png"], tmp_path, monkeypatch, capsys,
                        data=assets / "data")
    assert code == 0 and order == ["run"], (err, order)                        # a short run starts quietly


@pytest.mark.parametrize("case", ["xbm", "h5", "parent_is_a_file", "proc"])
def test_upscale_refuses_an_output_it_cannot_write_before_the_work(assets, tmp_path, monkeypatch, capsys, case):
    """Pillow knows these suffixes but cannot write RGB in them, or the folder cannot take a file: it said so only
    after the whole computation."""
    import sr3_mini.commands as commands
    if case == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc (a folder nobody can create files in, root included)")
    (tmp_path / "afile").write_text("keep me\n")
    out, phrases = {"xbm": ("o.xbm", ["o.xbm", "XBM", ".png"]), "h5": ("o.h5", ["o.h5", "HDF5", ".png"]),
                    "parent_is_a_file": ("afile/o.png", ["afile", "cannot write"]),
                    "proc": ("/proc/o.png", ["/proc", "cannot write"])}[case]

    def never(*a, **k):
        raise AssertionError("the work started")
    monkeypatch.setattr(commands, "upscale_image", never)
    monkeypatch.setattr(commands, "estimate_cost", never)
    code, _, err = call(["upscale", assets / "lr_odd.png", "-o", out], tmp_path, monkeypatch, capsys,
                        data=assets / "data")
    assert_user_error(code, err, *phrases)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"] and (tmp_path / "afile").read_text() == "keep me\n"


@pytest.mark.parametrize("case", ["no_alphas", "nan_weights", "flipped_bytes", "bundled_flipped"])
def test_upscale_with_a_damaged_checkpoint_is_one_line_exit_2(assets, tmp_path, monkeypatch, capsys, one_thread,
                                                             case):
    """A schedule without alphas ended in a KeyError traceback, NaN weights in a FloatingPointError after the whole
    sampling, flipped bytes loaded silently; the bundled model is checked against its SHA256SUMS."""
    import hashlib
    state = make_state(kind="sr3", model=tiny_unet(0), schedule=Schedule.linear(2000, 1e-6, 1e-2), scale=4)
    if case == "no_alphas":
        state["schedule"] = {"name": "linear"}
    if case == "nan_weights":
        state["model"]["conv_in.weight"][0, 0, 0, 0] = float("nan")
    data = tmp_path / "data"
    path = save_checkpoint(data / "sr3_mini_x4.pt", state)
    if "flipped" in case:
        (data / "SHA256SUMS").write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  sr3_mini_x4.pt\n")
        b = bytearray(path.read_bytes())
        b[len(b) // 2:len(b) // 2 + 64] = bytes(v ^ 0xFF for v in b[len(b) // 2:len(b) // 2 + 64])
        path.write_bytes(bytes(b))
    args = ["upscale", assets / "lr_odd.png", "-o", "o.png", "--steps", "2"]
    args += [] if case == "bundled_flipped" else ["--checkpoint", path]
    code, _, err = call(args, tmp_path, monkeypatch, capsys, data=data)
    phrase = {"no_alphas": "schedule", "nan_weights": "NaN", "flipped_bytes": "CRC",
              "bundled_flipped": "SHA256SUMS"}[case]
    assert_user_error(code, err, "sr3_mini_x4.pt", phrase)
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.png").exists()
