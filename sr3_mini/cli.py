"""The command line of sr3_mini: ``sr3-mini demo | upscale | evaluate | train`` (also ``python -m sr3_mini``).

- ``demo``: the bundled x4 model on a held-out photo: LR | bicubic | regression | SR3 | HR in one PNG, and the
  paper's comparison (section 4) as a table: PSNR, SSIM, consistency, plus ``metrics.sharpness``.
- ``upscale IN -o OUT``: Algorithm 2 (``sample.super_resolve``) on any LR image, tiled when large.
- ``evaluate [FOLDER]``: makes x = ``resize.downsample(y)`` from the HR photos itself, then scores bicubic,
  regression and SR3 on them.
- ``train ...``: ``train.main`` (Algorithm 1), unchanged.

Images of any size: the LR image is reflect-padded so that its upsampled size is a multiple of ``model.multiple``,
and the output cropped back. Large images are tiled *inside every refinement step*: f_theta runs on overlapping
tiles of y_t and x_up, the tiles' eps are blended with weights that fall off towards tile edges, and one
step (10) is taken on the whole image with whole-image noise z (as MultiDiffusion, Bar-Tal et al. 2023; not in
SR3). So there is one sample, not a patchwork of independent ones, and no seams.
User errors (missing or non-image files, an existing output, a mismatched checkpoint, bad option values) end
with one line ``sr3-mini: error: ...`` on stderr and exit status 2; outputs are written atomically.
Relies on: checkpoint, data, metrics, resize, sample, viz (the demo figure), train (the `train` command).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data, load_pretrained
from .checkpoint import load_model, regression_predict
from .metrics import scores
from .resize import downsample, upsample
from .sample import super_resolve

__all__ = ["main", "build_parser", "Tiled", "upscale_image", "CLIError"]

DEMO_STEPS = 50      # deviation: half the steps of upscale/evaluate, so `demo` runs well under a minute on 2 cores
DEFAULT_STEPS = 100  # upscale / evaluate: the inference length of the SR3 community code
DEFAULT_TILE = 128   # LR pixels per tile side (512 HR pixels at x4)
METRICS = ("psnr", "ssim", "consistency", "sharpness")


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 2, no traceback."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


# ---- argparse types: bad values are usage errors (exit 2) before anything runs ----
def _int_at_least(low: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    return parse


def _device(s: str) -> torch.device:
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(s)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {s!r} (try cpu, cuda, cuda:1, mps or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("MPS is not available on this machine")
    return dev


# ---- files ----
def _writable_formats() -> set:
    from PIL import Image
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def _check_output(path, overwrite: bool, image: bool = True) -> Path:
    """Refuse, before any work, an output that exists (without --overwrite), is a folder or has no known format."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"output {path} is a folder")
    if path.exists() and not overwrite:
        raise CLIError(f"{path} already exists; pass --overwrite to replace it")
    if image and path.suffix.lower() not in _writable_formats():
        raise CLIError(f"cannot tell the image format of {path}: use a suffix such as .png")
    return path


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
    """(model, info) from ``checkpoint`` or, when None, the bundled model of ``kind``."""
    try:
        if checkpoint is None:
            model, _, info = load_pretrained(kind, device=device)
        else:
            model, info = load_model(checkpoint, device=device)
    except (FileNotFoundError, ValueError, TypeError, KeyError) as e:
        raise CLIError(_one_line(e)) from None
    where = checkpoint or f"the bundled {kind} model"
    if require_kind and info["kind"] != kind:
        raise CLIError(f"{where} is a {info['kind']!r} checkpoint; expected kind {kind!r}")
    if scale is not None and scale != info["scale"]:
        raise CLIError(f"{where} was trained for x{info['scale']}, not x{scale} (--scale)")
    return model, info


# ---- any size: padding and tiles ----
class Tiled(torch.nn.Module):
    """f_theta(y_t, x_up, gamma) evaluated on overlapping ``tile`` x ``tile`` windows (HR pixels, multiples of
    ``model.multiple``) whose eps are blended: [B, 3, H, W] -> [B, 3, H, W]. Images that fit run whole."""

    def __init__(self, model, tile: int, batch: int = 4):
        super().__init__()
        self.model, self.multiple, self.batch = model, model.multiple, batch
        self.tile = max(self.multiple, tile // self.multiple * self.multiple)
        self.overlap = self.tile // 4 // self.multiple * self.multiple
        self.train(model.training)   # super_resolve restores this mode afterwards: keep the model's own

    def _starts(self, size: int) -> list:
        if size <= self.tile:
            return [0]
        stride = self.tile - self.overlap
        return list(range(0, size - self.tile, stride)) + [size - self.tile]   # all multiples of model.multiple

    def _ramp(self, n: int, device) -> torch.Tensor:
        """1-D blending weight: rises linearly over the overlap at both ends, > 0 everywhere."""
        i = torch.arange(n, device=device, dtype=torch.float32)
        return (torch.minimum(i + 1, n - i) / (self.overlap + 1)).clamp(max=1)

    def forward(self, y_t, x_up, gamma):
        B, _, H, W = y_t.shape
        if H <= self.tile and W <= self.tile:
            return self.model(y_t, x_up, gamma)
        th, tw = min(self.tile, H), min(self.tile, W)
        w = self._ramp(th, y_t.device)[:, None] * self._ramp(tw, y_t.device)[None, :]
        eps, weight = torch.zeros_like(y_t), torch.zeros(H, W, device=y_t.device, dtype=y_t.dtype)
        boxes = [(i, j) for i in self._starts(H) for j in self._starts(W)]
        gamma = torch.as_tensor(gamma, device=y_t.device).reshape(-1).expand(B)
        for k in range(0, len(boxes), self.batch):
            chunk = boxes[k:k + self.batch]
            crop = lambda z: torch.cat([z[..., i:i + th, j:j + tw] for i, j in chunk])   # noqa: E731
            out = self.model(crop(y_t), crop(x_up), gamma.repeat(len(chunk))).to(y_t.dtype)
            for n, (i, j) in enumerate(chunk):
                eps[..., i:i + th, j:j + tw] += out[n * B:(n + 1) * B] * w
                weight[i:i + th, j:j + tw] += w
        return eps / weight                          # sum_tiles w eps_tile / sum_tiles w


def upscale_image(model, kind: str, x: torch.Tensor, scale: int, steps: int = DEFAULT_STEPS,
                  generator: torch.Generator | None = None, tile: int = DEFAULT_TILE, progress: bool = True):
    """LR ``x`` [B, 3, h, w] of any size -> [B, 3, scale*h, scale*w]: SR3 (Algorithm 2, ``super_resolve``) or,
    for a ``kind="regression"`` model, its single forward pass. ``tile``: tile side in LR pixels."""
    h, w = x.shape[-2:]
    q = model.multiple // math.gcd(model.multiple, scale)    # scale * (h + pad) must be a multiple of model.multiple
    pad_h, pad_w = -h % q, -w % q
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"   # reflection needs pad < size
    x_pad = F.pad(x, (0, pad_w, 0, pad_h), mode=mode) if pad_h or pad_w else x
    net = Tiled(model, tile * scale)
    if kind == "regression":
        device = next(model.parameters()).device
        with torch.no_grad():
            y = regression_predict(net, upsample(x_pad, scale).to(device)).clamp(-1, 1).to(x.device)
    else:
        y = super_resolve(net, x_pad, steps=steps, generator=generator, scale=scale, progress=progress)
    return y[..., :scale * h, :scale * w]


def _score(y_hat, y, x, scale) -> dict:
    return {k: v.item() for k, v in scores(y_hat, y, x, scale).items()}


def _table(rows: dict) -> str:
    """{method: {metric: value}} -> aligned text; consistency in the paper's units (1e-5, pixels in [0, 1])."""
    lines = [f"{'method':<12}{'PSNR (dB)':>10}{'SSIM':>8}{'consistency (1e-5)':>20}{'sharpness':>11}"]
    for name, r in rows.items():
        lines.append(f"{name:<12}{r['psnr']:>10.2f}{r['ssim']:>8.3f}{r['consistency'] * 1e5:>20.2f}"
                     f"{r['sharpness']:>11.2f}")
    return "\n".join(lines)


def _methods(sr3, regression, x, scale, args, progress):
    """{name: y_hat} for bicubic, regression (if any) and SR3, on LR ``x`` [1, 3, h, w]."""
    out = {"bicubic": upsample(x, scale)}
    if regression is not None:
        out["regression"] = upscale_image(regression, "regression", x, scale, tile=args.tile)
    g = torch.Generator().manual_seed(args.seed)      # per image: a result does not depend on the others
    out["SR3"] = upscale_image(sr3, "sr3", x, scale, args.steps, g, args.tile, progress)
    return out


def _models(args):
    """The SR3 model and the regression baseline (--regression-checkpoint, else the bundled one if any)."""
    sr3, info = _load_model(args.checkpoint, "sr3", args.device)
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
    _save_comparison(out, x, results, y, rows, f"{name}: x{scale} super-resolution of a held-out photo",
                     args.steps)
    print(_table(rows))
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _save_comparison(out: Path, x, results: dict, y, rows: dict, title: str, steps: int) -> None:
    """LR (nearest, so its pixels show) | bicubic | regression | SR3 | HR, PSNR and SSIM under each name, and a
    second row zoomed on the centre (``viz.comparison_grid``)."""
    import matplotlib.pyplot as plt

    from .viz import comparison_grid

    names = {"bicubic": "bicubic", "regression": "regression", "SR3": f"SR3 ({steps} steps)"}
    images = {f"LR input x ({x.shape[-1]}x{x.shape[-2]})": x[0]}
    images.update({f"{names[k]}\n{rows[k]['psnr']:.2f} dB, SSIM {rows[k]['ssim']:.3f}": v[0]
                   for k, v in results.items()})
    images["HR ground truth y"] = y[0]
    H, W = y.shape[-2:]
    fig = comparison_grid(images, crop=(H * 3 // 8, W * 3 // 8, min(H, W) // 4), suptitle=title)
    try:
        _write_atomically(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def _crop_to(y: torch.Tensor, k: int) -> torch.Tensor:
    """Centre crop of [B, 3, H, W] to multiples of k."""
    H, W = y.shape[-2:]
    top, left = (H % k) // 2, (W % k) // 2
    return y[..., top:top + H // k * k, left:left + W // k * k]


def cmd_upscale(args) -> int:
    out = _check_output(args.output, args.overwrite)
    x = _load_image(args.input)[None]
    model, info = _load_model(args.checkpoint, "sr3", args.device, args.scale, require_kind=False)
    scale, start = info["scale"], time.perf_counter()
    y = upscale_image(model, info["kind"], x, scale, args.steps, torch.Generator().manual_seed(args.seed),
                      args.tile, not args.quiet)
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
    for path in tqdm(files, desc="images", disable=args.quiet or os.environ.get("TQDM_DISABLE") == "1"):
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
    means = {}
    for r in per_image:
        means.setdefault(r["method"], []).append(r)
    means = {m: {k: sum(r[k] for r in rs) / len(rs) for k in METRICS} for m, rs in means.items()}
    print(f"{used} image(s) from {folder}, x{scale}, SR3 with {args.steps} steps, seed {args.seed}; means:")
    print(_table(means))
    if csv_out:
        rows = per_image + [{"image": "mean", "method": m, **v} for m, v in means.items()]

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["image", "method", *METRICS])
                w.writeheader()
                w.writerows(rows)
        _write_atomically(csv_out, write)
        print(f"wrote {csv_out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sr3-mini", description="SR3 super-resolution (Saharia et al. 2021), mini.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,upscale,evaluate,train}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=_int_at_least(0), default=0, help="sampling seed (default 0)")
    common.add_argument("--device", type=_device, default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    common.add_argument("--tile", type=_int_at_least(1), default=DEFAULT_TILE,
                        help=f"tile side in LR pixels for large images (default {DEFAULT_TILE})")
    common.add_argument("--overwrite", action="store_true", help="replace an existing output")
    common.add_argument("--quiet", action="store_true", help="no progress bars (results and warnings only)")
    steps = _int_at_least(1)
    models = argparse.ArgumentParser(add_help=False)
    models.add_argument("--checkpoint", help="SR3 checkpoint (default: the bundled model)")
    models.add_argument("--regression-checkpoint", help="regression baseline (default: the bundled one)")

    d = sub.add_parser("demo", parents=[common, models], help="super-resolve a held-out photo, write a comparison")
    d.add_argument("--steps", type=steps, default=DEMO_STEPS, help=f"refinement steps (default {DEMO_STEPS})")
    d.add_argument("--image", help="held-out photo by name (default: the first)")
    d.add_argument("-o", "--output", help="PNG to write (default sr3_mini_demo.png, replaced without asking)")
    d.set_defaults(run=cmd_demo)

    u = sub.add_parser("upscale", parents=[common], help="super-resolve one LR image")
    u.add_argument("input", help="LR image (any size; greyscale and RGBA are made RGB)")
    u.add_argument("-o", "--output", required=True, help="image to write (format from its suffix)")
    u.add_argument("--scale", type=_int_at_least(2), help="must match the checkpoint (default: its scale)")
    u.add_argument("--steps", type=steps, default=DEFAULT_STEPS, help=f"refinement steps (default {DEFAULT_STEPS})")
    u.add_argument("--checkpoint", help="SR3 or regression checkpoint (default: the bundled SR3 model)")
    u.set_defaults(run=cmd_upscale)

    e = sub.add_parser("evaluate", parents=[common, models], help="score bicubic, regression, SR3 on HR photos")
    e.add_argument("folder", nargs="?", help="HR photos (default: the bundled held-out set)")
    e.add_argument("--csv", help="also write per-image and mean rows to this CSV")
    e.add_argument("--steps", type=steps, default=DEFAULT_STEPS, help=f"refinement steps (default {DEFAULT_STEPS})")
    e.add_argument("--limit", type=_int_at_least(1), help="use at most this many images")
    e.set_defaults(run=cmd_evaluate)

    sub.add_parser("train", add_help=False, help="train SR3 or the regression baseline (see train --help)")
    return p


def main(argv=None) -> int:
    """Entry point of ``sr3-mini`` and ``python -m sr3_mini``. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from .train import main as train_main
        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CLIError as e:
        print(f"sr3-mini: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sr3-mini: interrupted; nothing was written", file=sys.stderr)
        return 130
