"""The command line of sr3_mini: ``sr3-mini demo | upscale | evaluate | train`` (also ``python -m sr3_mini``).

- ``demo``: the bundled x4 model on a held-out photo: LR | bicubic | regression | SR3 | HR in one PNG, and the
  paper's comparison (section 4) as a table: PSNR, SSIM, consistency, plus ``metrics.sharpness``.
- ``upscale IN -o OUT``: Algorithm 2 (``sample.super_resolve``) on any LR image, tiled when large.
- ``evaluate [FOLDER]``: makes x = ``resize.downsample(y)`` from the HR photos itself, then scores bicubic,
  regression and SR3 on them.
- ``train ...``: ``train.train`` (Algorithm 1), one option per ``TrainConfig`` field (``train --help``).

SR3 samples with the checkpoint's own training schedule respaced to ``--steps``; images of any size are padded
and tiled (``tiling.py``), and ``upscale`` refuses, before it starts, a run estimated beyond ``--max-gib`` or
``--max-minutes``. User errors (missing or non-image files, an existing output, a mismatched checkpoint, bad
option values, a training configuration that cannot run) end with one line ``sr3-mini: error: ...`` on stderr
and exit status 2, having written nothing; outputs are written atomically. Ctrl-C or SIGTERM stops any command
with one line and exit status 130; ``train`` so stopped saves the step reached; a run that stops early says, in
one line, what it kept.
Here: parsing and messages only; what each command does is in ``commands.py``.
Relies on: commands, train_config (TrainConfig, for ``train``'s options), checkpoint (``KINDS``), stopping
(``RunStop``: SIGTERM as Ctrl-C).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import math
import re
import sys

import torch

from .checkpoint import KINDS
from .commands import (DEFAULT_STEPS, DEFAULT_TILE, DEMO_STEPS, MAX_GIB, MAX_MINUTES, CLIError, cmd_demo,
                       cmd_evaluate, cmd_train, cmd_upscale)
from .stopping import RunStop

__all__ = ["main", "build_parser", "train_parser", "config_from_args", "unet_overrides", "CLIError"]


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


def _limit(s: str) -> float:
    """A --max-* limit: a finite number >= 0. NaN compares False with every estimate and inf never trips, so
    either would switch the guard off silently; 0 is the way to say "no limit"."""
    try:
        v = float(s)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0 = no limit), got {s!r}")
    return v


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sr3-mini", description="SR3 super-resolution (Saharia et al. 2021), mini.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,upscale,evaluate,train}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=_int_at_least(0), default=0, help="sampling seed (default 0)")
    common.add_argument("--variance", choices=("paper", "posterior", "analytic"),
                        help="sigma_t^2 of (10): the paper's 1 - alpha_t, the posterior's, or the KL-optimal "
                             "'analytic' (needs the checkpoint's .variance.json) (default: the library's)")
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
    u.add_argument("--max-gib", type=_limit, default=MAX_GIB, help=f"refuse beyond this estimated memory "
                   f"(default {MAX_GIB:g}; 0 = no limit)")
    u.add_argument("--max-minutes", type=_limit, default=MAX_MINUTES, help=f"refuse beyond this estimated time "
                   f"(default {MAX_MINUTES:g}; 0 = no limit)")
    u.set_defaults(run=cmd_upscale)

    e = sub.add_parser("evaluate", parents=[common, models], help="score bicubic, regression, SR3 on HR photos")
    e.add_argument("folder", nargs="?", help="HR photos (default: the bundled held-out set)")
    e.add_argument("--csv", help="also write per-image and mean rows to this CSV")
    e.add_argument("--steps", type=steps, default=DEFAULT_STEPS, help=f"refinement steps (default {DEFAULT_STEPS})")
    e.add_argument("--limit", type=_int_at_least(1), help="use at most this many images")
    e.add_argument("--seeds", type=_int_at_least(0), nargs="+", metavar="SEED",
                   help="draw SR3 once per seed (each image with its own generator); two or more also give the "
                        "diversity of the draws (default: --seed alone)")
    e.set_defaults(run=cmd_evaluate)

    sub.add_parser("train", add_help=False, help="train SR3 or the regression baseline (see train --help)")
    return p


def train_parser() -> argparse.ArgumentParser:
    """One option per TrainConfig field (``--batch-size`` for batch_size, ...): its default, and its help text from
    the field itself (``train_config.py``), so that the two never disagree."""
    from .train_config import TrainConfig
    p = argparse.ArgumentParser(prog="sr3-mini train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train SR3 (Algorithm 1) or the regression baseline. Writes last.pt, "
                                "config.json, log.jsonl, val_*.png and loss.png to --out-dir. Ctrl-C or SIGTERM "
                                "saves the step reached (exit status 130); --resume continues.")
    choices = {"kind": KINDS, "autocast": ("none", "bf16", "fp16"), "loss_p": (1, 2)}
    for f in dataclasses.fields(TrainConfig):
        flag, default, text = _flag(f.name), getattr(TrainConfig(), f.name), f.metadata["help"]
        if f.name == "unet":
            p.add_argument(flag, action="append", default=[], metavar="KEY=VALUE", help=text)
        elif f.name == "resume":
            p.add_argument(flag, nargs="?", const="auto", default="", help=text)
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            p.add_argument(flag, type=type(default), default=default, choices=choices.get(f.name), help=text)
    p.add_argument("--out", dest="out_dir", default=argparse.SUPPRESS, help="alias of --out-dir")
    return p


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def unet_overrides(items) -> dict:
    """``--unet KEY=VALUE ...`` as a dict of UNetConfig fields; values are Python literals where they parse, else
    strings. A missing "=" is a CLIError."""
    unet = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--unet expects KEY=VALUE, got {item!r}")
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(value)
        unet[key] = value
    return unet


def config_from_args(argv=None):
    """The TrainConfig of ``sr3-mini train`` options; --unet values are Python literals where they parse.
    A field out of range (``train.ConfigError``) is a CLIError naming its option: one line on stderr, exit 2."""
    from .train_config import ConfigError, TrainConfig
    args = vars(train_parser().parse_args(argv))
    unet = unet_overrides(args.pop("unet"))
    try:
        return TrainConfig(**args, unet=unet)
    except ConfigError as e:                      # checked when the config is made, before anything runs
        fields = "|".join(f.name for f in dataclasses.fields(TrainConfig))    # "lr must be" -> "--lr must be"
        raise CLIError(re.sub(rf"\b({fields})(?= must be)", lambda m: _flag(m[1]), str(e))) from None


def main(argv=None) -> int:
    """Entry point of ``sr3-mini`` and ``python -m sr3_mini``. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # SIGTERM (kill, a scheduler, a container stopping) becomes Ctrl-C for every command, with the trainer's own
    # mechanism: the temporary file of an atomic write is removed, one line, status 130, where Python's default would
    # die at once, silently, leaving it. Inside, train() sets its own handlers, which save the step reached.
    with RunStop():
        return _main(argv)


def _main(argv) -> int:
    try:
        if argv[:1] == ["train"]:
            return cmd_train(config_from_args(argv[1:]))
        args = build_parser().parse_args(argv)
        return args.run(args)
    except CLIError as e:
        print(f"sr3-mini: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sr3-mini: interrupted; nothing was written", file=sys.stderr)
        return 130
