"""What the commands of ``sr3-mini`` do, once ``cli.py`` has parsed their options: the files they read and
write (atomically), the models they load (with the checkpoint's own training schedule respaced to ``--steps``),
the scores they print. ``CLIError``: a user error, one line on stderr and exit status 2 (``cli.main``).
Relies on: checkpoint, data, evaluate, resize, schedule, tiling, variance, viz (the demo figure), train (``train``).
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import data, load_pretrained
from .checkpoint import load_model
from .evaluate import DRAW_METRICS, METRICS, means, score
from .resize import downsample, upsample
from .schedule import Schedule
from .tiling import estimate_cost, upscale_image
from .variance import load_table

__all__ = ["CLIError", "cmd_demo", "cmd_upscale", "cmd_evaluate", "cmd_train"]

DEMO_STEPS = 50      # deviation: half the steps of upscale/evaluate, so `demo` runs well under a minute on 2 cores
DEFAULT_STEPS = 100  # upscale / evaluate: the inference length of the SR3 community code
DEFAULT_TILE = 128   # LR pixels per tile side (512 HR pixels at x4)
MAX_GIB, MAX_MINUTES = 4.0, 60.0   # upscale refuses to start beyond these (0 = no limit)
LONG_RUN_SECONDS = 60                # upscale shows its estimate first when a run should take longer


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2, no traceback."""


def _note(text: str) -> None:
    """One line on stderr, now (before the work it announces)."""
    print(f"sr3-mini: {text}", file=sys.stderr, flush=True)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


# ---- files ----
def _writable_formats() -> set:
    from PIL import Image
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def _check_output(path, overwrite: bool, image: bool = True) -> Path:
    """Refuse, before any work, an output that exists (without --overwrite), is a folder, has a format Pillow
    cannot write, or lies where no file can be created."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"output {path} is a folder")
    if path.exists() and not overwrite:
        raise CLIError(f"{path} already exists; pass --overwrite to replace it")
    if image:
        _check_image_format(path)
    _check_folder(path)
    return path


def _check_image_format(path: Path) -> None:
    """Pillow knows some suffixes it cannot write RGB in (.xbm: 1-bit only; .h5: no save handler): a 1 x 1 RGB
    image, what ``data.save_image`` writes, is saved to memory in the suffix's format."""
    from PIL import Image
    if path.suffix.lower() not in _writable_formats():
        raise CLIError(f"cannot tell the image format of {path}: use a suffix such as .png")
    fmt = Image.registered_extensions()[path.suffix.lower()]
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError) as e:
        raise CLIError(f"cannot write {path}: Pillow cannot save RGB images as {fmt} ({_one_line(e)}); use a suffix "
                       "such as .png") from None


def _check_folder(path: Path) -> None:
    """Create and remove a temporary file where the output will go (its nearest existing folder): a read-only
    folder or file system, a missing permission or a file in the way is then found before the work, not after."""
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not folder.is_dir():
        raise CLIError(f"cannot write {path}: {folder} is a file, not a folder; choose another output")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sr3_mini_check."):
            pass
    except OSError as e:
        raise CLIError(f"cannot write {path}: no file can be created in {folder} ({e.strerror or e}); choose "
                       "another output") from None


def _write_atomically(path: Path, write) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path`` (atomic)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CLIError(f"cannot write {path}: {_one_line(e)}") from None
        raise


def _load_image(path) -> torch.Tensor:
    """data.load_image with user-facing errors. -> [3, H, W] in [-1, 1] (greyscale, RGBA... made RGB there)."""
    path = Path(path)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if path.is_dir():
        raise CLIError(f"{path} is a folder, not an image")
    try:
        return data.load_image(path)
    except (ValueError, OSError) as e:
        raise CLIError(_one_line(e)) from None


def _load_model(checkpoint, kind: str, device, scale=None, require_kind: bool = True):
    """(model, info) from ``checkpoint`` or, when None, the bundled model of ``kind``. ``info["inference"]``:
    a function steps -> the checkpoint's own training schedule respaced to that many steps."""
    try:
        if checkpoint is None:
            model, _, info = load_pretrained(kind, device=device)
        else:
            model, info = load_model(checkpoint, device=device)
            model.var_y0 = load_table(checkpoint)      # v(gamma) for --variance analytic, if measured
    except (FileNotFoundError, ValueError, TypeError, KeyError) as e:
        raise CLIError(_one_line(e)) from None
    where = checkpoint or f"the bundled {kind} model"
    if require_kind and info["kind"] != kind:
        raise CLIError(f"{where} is a {info['kind']!r} checkpoint; expected kind {kind!r}")
    if scale is not None and scale != info["scale"]:
        raise CLIError(f"{where} was trained for x{info['scale']}, not x{scale} (--scale)")
    trained = Schedule.from_dict(info["schedule"])

    def inference(steps: int) -> Schedule:
        if steps > trained.T:
            raise CLIError(f"--steps {steps} is more than the {trained.T} steps of {where}'s training schedule")
        return trained.respaced(steps)
    info["inference"] = inference
    return model, info


def _score(y_hat, y, x, scale) -> dict:
    """``evaluate.score`` of one output ``[1, 3, H, W]`` or of draws ``[S, 1, 3, H, W]``, as numbers."""
    return {k: v.item() for k, v in score(y_hat, y, x, scale).items()}


def _table(rows: dict) -> str:
    """{method: {metric: value}} -> aligned text; consistency in the paper's units (1e-5, pixels in [0, 1]);
    grain: "-" when no flat area was scored, diversity only for SR3 with two seeds or more."""
    cell = lambda r, k, w, d: f"{r[k]:>{w}.{d}f}" if k in r and r[k] == r[k] else f"{'-':>{w}}"
    lines = [f"{'method':<12}{'PSNR (dB)':>10}{'SSIM':>8}{'consistency (1e-5)':>20}{'sharpness':>11}{'grain':>7}"
             f"{'diversity':>11}"]
    for name, r in rows.items():
        lines.append(f"{name:<12}{r['psnr']:>10.2f}{r['ssim']:>8.3f}{r['consistency'] * 1e5:>20.2f}"
                     f"{r['sharpness']:>11.2f}{cell(r, 'grain', 7, 2)}{cell(r, 'diversity', 11, 2)}")
    return "\n".join(lines)


def _methods(sr3, regression, x, scale, args, progress):
    """{name: y_hat} for bicubic, regression (if any) and SR3, on LR ``x`` [1, 3, h, w]."""
    out = {"bicubic": upsample(x, scale)}
    if regression is not None:
        out["regression"] = upscale_image(regression, "regression", x, scale, tile=args.tile)
    draws = []
    for seed in getattr(args, "seeds", None) or [args.seed]:
        g = torch.Generator().manual_seed(seed)      # per image: a result does not depend on the others
        draws.append(upscale_image(sr3, "sr3", x, scale, args.steps, g, args.tile, progress, args.schedule,
                                   args.variance))
    out["SR3"] = draws[0] if len(draws) == 1 else torch.stack(draws)   # [S, B, 3, H, W]: one draw per seed
    return out


def _check_tile(model, tile: int, scale: int) -> None:
    if tile * scale < 4 * model.multiple:     # the overlap is a quarter tile, in steps of model.multiple
        raise CLIError(f"--tile {tile} leaves no overlap between tiles (seams): use at least "
                       f"{math.ceil(4 * model.multiple / scale)} LR pixels for this model")


def _models(args):
    """The SR3 model and the regression baseline (--regression-checkpoint, else the bundled one if any);
    sets ``args.schedule``, the SR3 checkpoint's own schedule at ``args.steps``."""
    sr3, info = _load_model(args.checkpoint, "sr3", args.device)
    _check_tile(sr3, args.tile, info["scale"])
    args.schedule = info["inference"](args.steps)
    try:
        regression, _ = _load_model(args.regression_checkpoint, "regression", args.device, info["scale"])
    except CLIError as e:
        if args.regression_checkpoint:
            raise
        regression = None
        print(f"note: no regression baseline ({e})", file=sys.stderr)
    return sr3, regression, info["scale"]


# ---- commands ----
def cmd_demo(args) -> int:
    start = time.perf_counter()
    # an explicit -o is protected like every output; the default sr3_mini_demo.png is the demo's own, replaced
    out = _check_output(args.output or "sr3_mini_demo.png", args.overwrite or args.output is None)
    photos = dict(data.bundled_eval_images())
    if not photos:
        raise CLIError(f"no held-out photos in {data.data_dir() / 'eval'}")
    name = args.image or next(iter(photos))
    if name not in photos:
        raise CLIError(f"no held-out photo named {name!r}; choose one of {', '.join(photos)}")
    sr3, regression, scale = _models(args)
    y = _crop_to(photos[name][None], math.lcm(scale, sr3.multiple))
    x = downsample(y, scale)                                  # the paper's LR input: bicubic, anti-aliased
    print(f"{name}: {x.shape[-1]}x{x.shape[-2]} -> {y.shape[-1]}x{y.shape[-2]} (x{scale}), SR3 with {args.steps} "
        f"steps, seed {args.seed}, on {args.device}")
    results = _methods(sr3, regression, x, scale, args, not args.quiet)
    rows = {k: _score(v, y, x, scale) for k, v in results.items()}
    import matplotlib.pyplot as plt

    from .viz import demo_figure
    fig = demo_figure(x, results, y, rows, f"{name}: x{scale} super-resolution of a held-out photo", args.steps)
    try:
        _write_atomically(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    print(_table(rows))
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _crop_to(y: torch.Tensor, k: int) -> torch.Tensor:
    """Centre crop of [B, 3, H, W] to multiples of k."""
    H, W = y.shape[-2:]
    top, left = (H % k) // 2, (W % k) // 2
    return y[..., top:top + H // k * k, left:left + W // k * k]


def cmd_upscale(args) -> int:
    out = _check_output(args.output, args.overwrite)
    x = _load_image(args.input)[None]
    model, info = _load_model(args.checkpoint, "sr3", args.device, args.scale, require_kind=False)
    scale, start, sr3 = info["scale"], time.perf_counter(), info["kind"] == "sr3"
    _check_tile(model, args.tile, scale)
    cost = estimate_cost(model, x.shape, scale, args.steps if sr3 else 1, args.tile)
    too_big = [f"{what} (limit {limit:g}, {flag})" for what, limit, flag, v in (
        (f"~{cost['gib']:.1f} GiB of memory", args.max_gib, "--max-gib", cost["gib"]),
        (f"~{cost['seconds'] / 60:.0f} minutes", args.max_minutes, "--max-minutes", cost["seconds"] / 60))
        if limit and v > limit]
    if too_big:
        raise CLIError(f"{args.input} ({x.shape[-1]}x{x.shape[-2]}, {cost['tiles']} tiles) would take "
                       f"{' and '.join(too_big)}; raise the limit (0 = none) or upscale a smaller image")
    if cost["seconds"] > LONG_RUN_SECONDS:       # shown even with --quiet: the run may hold the machine for long
        _note(f"{args.input}: {cost['tiles']} tile(s), estimated ~{cost['seconds'] / 60:.0f} minutes and "
              f"~{cost['gib']:.1f} GiB of memory; Ctrl-C stops it without writing anything")
    y = upscale_image(model, info["kind"], x, scale, args.steps, torch.Generator().manual_seed(args.seed),
                      args.tile, not args.quiet, info["inference"](args.steps) if sr3 else None, args.variance)
    _write_atomically(out, lambda tmp: data.save_image(y[0], tmp))
    if not args.quiet:
        how = "regression" if info["kind"] == "regression" else f"SR3, {args.steps} steps, seed {args.seed}"
        print(f"{args.input} {x.shape[-1]}x{x.shape[-2]} -> {out} {y.shape[-1]}x{y.shape[-2]} ({how}) "
              f"in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_evaluate(args) -> int:
    from tqdm.auto import tqdm

    folder = Path(args.folder) if args.folder else data.data_dir() / "eval"
    csv_out = _check_output(args.csv, args.overwrite, image=False) if args.csv else None
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    sr3, regression, scale = _models(args)
    k, per_image, skipped, used = math.lcm(scale, sr3.multiple), [], [], 0
    for path in tqdm(files, desc="images", **({"disable": True} if args.quiet else {})):  # tqdm reads TQDM_DISABLE
        if args.limit and used == args.limit:
            break
        try:
            y = _crop_to(data.load_image(path)[None], k)     # HR y_0, cropped so that x = y_0 / scale exists
        except (ValueError, OSError):
            skipped.append(f"{path.name} (not an image)")
            continue
        if min(y.shape[-2:]) < max(11, k):                  # SSIM's 11 x 11 window
            skipped.append(f"{path.name} (too small)")
            continue
        x, used = downsample(y, scale), used + 1
        for method, y_hat in _methods(sr3, regression, x, scale, args, False).items():
            per_image.append({"image": path.name, "method": method, **_score(y_hat, y, x, scale)})
    if skipped:
        print(f"note: skipped {len(skipped)} file(s): {', '.join(skipped[:5])}", file=sys.stderr)
    if not per_image:
        raise CLIError(f"no usable image in {folder}")
    avg = {m: v for (m, _), v in means([{**r, "setting": ""} for r in per_image]).items()}
    seeds = args.seeds or [args.seed]
    print(f"{used} image(s) from {folder}, x{scale}, SR3 with {args.steps} steps, "
          f"{'seed' if len(seeds) == 1 else 'seeds'} {' '.join(map(str, seeds))}; means:")
    print(_table(avg))
    if csv_out:
        rows = per_image + [{"image": "mean", "method": m, **v} for m, v in avg.items()]

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["image", "method", *METRICS, *DRAW_METRICS], restval="")
                w.writeheader()
                w.writerows(rows)
        _write_atomically(csv_out, write)
        print(f"wrote {csv_out}")
    return 0


def cmd_train(cfg) -> int:
    """``sr3-mini train``: also works under torchrun (every rank runs it; rank 0 writes). Every way the run can
    stop early is one line on stderr: a user error or a stopped run (non-finite, diverged, a file it cannot
    write: each names the checkpoint kept) exit with 2, a signal (Ctrl-C, SIGTERM: the step reached is saved)
    with 130. The library's warnings are one line each too."""
    import warnings

    from .train import ConfigError, DivergedError, NonFiniteLossError, TrainingInterrupted, dist_env, train
    from .viz import plot_log

    def one_line_warning(message, category, filename, lineno, file=None, line=None):
        print(f"sr3-mini: warning: {_one_line(message)}", file=sys.stderr)
    rank = dist_env()[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")                 # each warning once, whatever this process saw before
            warnings.showwarning = one_line_warning
            result = train(cfg)
    except (ConfigError, FileExistsError, NonFiniteLossError, DivergedError, OSError) as e:
        raise CLIError(_one_line(e)) from None
    except TrainingInterrupted as e:                         # the step reached is saved (or the line says why not)
        if rank == 0:
            print(f"sr3-mini: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:                                # train.py takes signals over from its first write on
        print("sr3-mini: interrupted before training started; nothing was written", file=sys.stderr)
        return 130
    if rank == 0:
        plot_log(Path(cfg.out_dir) / "log.jsonl", Path(cfg.out_dir) / "loss.png")
        print(f"stopped at step {result['step']} ({result['stopped']}); {Path(cfg.out_dir) / 'last.pt'}")
    return 0
