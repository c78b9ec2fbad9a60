"""The settings of a training run (``train.train``): ``TrainConfig``, one field per setting, each with what it does
(its ``help``: the one text that ``sr3-mini train --help`` shows too) and its range (``_RULES``), checked when the
config is made. A setting out of range raises a ``ConfigError`` naming it, before anything is written.
Relies on: checkpoint (``KINDS``).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from sr3_mini.checkpoint import KINDS

__all__ = ["TrainConfig", "ConfigError", "DIVERGE"]

DIVERGE = 100.0  # a logged loss above DIVERGE x the best one logged: the run diverged (TrainConfig.diverge)


class ConfigError(ValueError):
    """A configuration that cannot run (a field out of range, an unknown preset or UNet key, a crop larger than the
    data, a missing or different run to resume, a data folder that is not one): raised before anything is written."""


def _setting(default, help: str):
    """A TrainConfig field: its default and what it does (shown by ``sr3-mini train --help``)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Paper defaults (section 4: Adam, lr 1e-4, 10k warm-up steps, batch 256, 1M steps); deviations noted.
    Every field is checked when the config is made (``check``): a bad one raises a ConfigError naming it."""
    preset: str = _setting("mini", "U-Net size (unet.PRESETS: tiny, mini, sr3_16_128, ...); deviation: the paper's "
                           "U-Nets have 150-625M parameters (Table 1)")
    unet: dict = _setting({}, "UNetConfig overrides, e.g. dropout=0.2 or head=v (repeat the option for several)")
    kind: str = _setting("sr3", "what to train: sr3 (diffusion) or regression (the paper's baseline)")
    scale: int = _setting(4, "super-resolution factor: the network sees the HR crop shrunk by this much")
    data: str = _setting("", "a folder of images to train on (data.FolderCrops); empty: the bundled crops (data/)")
    crop: int = _setting(64, "HR crop side in pixels; deviation: the paper trains at the target size (128..1024)")
    flip: bool = _setting(True, "random left-right flips of the crops")
    val_size: int = _setting(8, "held-out photos for validation (bundled: data/eval; a --data folder: whole photos "
                             "never trained on)")
    steps: int = _setting(1_000_000, "updates to run in all (a resumed run continues up to this many)")
    batch_size: int = _setting(16, "crops per update and process; deviation: paper 256 (global batch = batch_size x "
                               "grad_accum x processes)")
    grad_accum: int = _setting(1, "micro-batches whose gradients are summed into one update")
    lr: float = _setting(1e-4, "Adam's learning rate after warm-up")
    warmup_steps: int = _setting(10_000, "updates of linear learning-rate warm-up from 0 (then constant)")
    loss_p: int = _setting(1, "p of the loss ||f - eps||_p^p (6), which leaves p open: 1 (L1, the bundled model's "
                           "recipe; a median, which shrinks y0_hat) or 2 (L2, the posterior mean; measured to give "
                           "more diverse samples: data/MODEL_CARD.md). Regression always uses L2")
    loss_weighting: str = _setting("none", "deviation when not none: how (6) weighs each draw of gamma. none (the "
                                   "paper: every draw alike, so the levels count as p(gamma) draws them) or bound "
                                   "(each draw times 1/p(log-SNR), capped at 20: every log-SNR counts alike on the "
                                   "eps error, as in the variational bound; notebook 03 section 5.1)")
    cond_noise: float = _setting(0.0, "deviation when > 0 (conditioning augmentation, Ho et al. 2021; for a "
                                 "cascade's later stage, notebook 08): the LR input x gets s eps, s ~ U(0, cond_noise) "
                                 "per crop, in x's [-1, 1] units (cond_aug.py); sample with cond_noise= too")
    cond_blur: float = _setting(0.0, "deviation when > 0 (conditioning augmentation): the LR input x is blurred by a "
                                "Gaussian of std b ~ U(0, cond_blur) pixels of x per crop (cond_aug.py); sample "
                                "with cond_blur= too")
    grad_clip: float = _setting(1.0, "clip the gradient norm to this (0 = off); not stated in the paper")
    ema_decay: float = _setting(0.9999, "decay of the EMA of the weights that sampling uses (DDPM's; SR3 states "
                                "none)")
    ema_warmup: bool = _setting(True, "deviation: decay_k = min(ema_decay, (1+k)/(10+k)), so short runs get a "
                                "usable EMA")
    schedule_T: int = _setting(2000, "steps T of the linear beta training schedule (SR3/WaveGrad: 2000)")
    beta_start: float = _setting(1e-6, "first beta of the training schedule")
    beta_end: float = _setting(1e-2, "last beta of the training schedule")
    seed: int = _setting(0, "seed of the weights and of every draw of the run (crops, flips, gamma, noise)")
    out_dir: str = _setting("runs/sr3", "folder of the run: last.pt, config.json, log.jsonl, val_*.png, loss.png")
    resume: str = _setting("", "continue a run: 'auto' (the option alone) = out_dir/last.pt if present, else a "
                           "checkpoint path; empty = a fresh run")
    init: str = _setting("", "start a fresh run from these weights (a checkpoint's EMA, else its model)")
    save_every: int = _setting(5000, "write last.pt (atomically replaced) every this many updates")
    keep_every: int = _setting(0, "also keep step_XXXXXXX.pt every this many updates (0 = never)")
    val_every: int = _setting(5000, "validate (PSNR, consistency, a PNG grid) every this many updates (0 = never)")
    val_steps: int = _setting(50, "sampling steps of validation (the training schedule respaced; a deviation)")
    log_every: int = _setting(100, "log the loss every this many updates (also how often the host waits for the "
                              "device, and checks for non-finite or diverged values)")
    diverge: float = _setting(DIVERGE, "stop as diverged, saving nothing more, when a logged loss exceeds this many "
                              "times the lowest one logged (0 = never)")
    minutes: float = _setting(0.0, "wall-clock budget: stop, validate and save cleanly when spent (0 = none)")
    device: str = _setting("auto", "cpu, cuda, cuda:N, mps, or auto (cuda if available)")
    autocast: str = _setting("none", "mixed precision: none, bf16 (CUDA; opt-in on CPU) or fp16 (T4-class GPUs, "
                             "with loss scaling)")
    channels_last: bool = _setting(False, "channels-last memory format (faster convolutions on some GPUs)")
    compile: bool = _setting(False, "torch.compile the network (accel.compile_net); not yet timed on a GPU")
    num_workers: int = _setting(0, "processes decoding a --data folder (its crops are then cached in out_dir)")
    progress: bool = _setting(True, "a progress bar (also off with env TQDM_DISABLE=1, and on DDP ranks > 0)")

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise a ConfigError naming every field out of its range (``_RULES``). ``train`` checks again (a field
        may change after the config was made) and itself checks what needs the network or the data."""
        bad = [f"{k} must be {what}, got {getattr(self, k)!r}" for k, (ok, what) in _RULES.items()
               if not ok(getattr(self, k))]
        if not bad and self.crop % self.scale:
            bad.append(f"crop={self.crop} must be a multiple of scale={self.scale}")
        if not bad and self.val_steps > self.schedule_T:
            bad.append(f"val_steps={self.val_steps} must be at most schedule_T={self.schedule_T}")
        if bad:
            raise ConfigError("; ".join(bad))


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:  # NaN fails every comparison of _RULES
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _device(v) -> bool:
    with contextlib.suppress(RuntimeError, TypeError):
        return v == "auto" or bool(torch.device(v))
    return False


_RULES = {  # field: (test, what it must be), for TrainConfig.check
    "kind": (lambda v: v in KINDS, " or ".join(map(repr, KINDS))),
    "autocast": (lambda v: v in ("none", "bf16", "fp16"), "'none', 'bf16' or 'fp16'"),
    "loss_p": (lambda v: v in (1, 2), "1 or 2"),
    "loss_weighting": (lambda v: v in ("none", "bound"), "none or bound"),
    **{k: (lambda v: _integer(v) and v >= 1, "an integer >= 1") for k in (
        "scale", "crop", "steps", "batch_size", "grad_accum", "schedule_T", "save_every", "log_every", "val_steps")},
    **{k: (lambda v: _integer(v) and v >= 0, "an integer >= 0") for k in (
        "val_size", "warmup_steps", "keep_every", "val_every", "num_workers")},
    "seed": (_integer, "an integer"),
    "lr": (lambda v: _number(v) and 0 < v < math.inf, "a finite number > 0"),
    **{k: (lambda v: _number(v) and 0 <= v < math.inf, "a finite number >= 0 (0 = off)") for k in (
        "grad_clip", "cond_noise", "cond_blur")},
    "ema_decay": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "diverge": (lambda v: _number(v) and (v == 0 or 1 < v < math.inf), "0 (off) or a finite number > 1"),
    "minutes": (lambda v: _number(v) and 0 <= v < math.inf, "a finite number >= 0 (0 = no limit)"),
    "beta_start": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "beta_end": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "unet": (lambda v: isinstance(v, dict), "a dict of UNetConfig fields"),
    "device": (_device, "'auto' or a torch device (cpu, cuda, ...)"),
}
