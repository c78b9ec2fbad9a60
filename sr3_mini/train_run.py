"""What surrounds Algorithm 1 in a training run (``train.py``): the data of a run (the bundled sets or a folder of
photos, decoded once under DDP), resuming from a checkpoint, the JSON-lines log, validation on held-out photos,
and the helpers that let DDP ranks agree. Errors in a run's configuration are ``ConfigError``s, raised before the
run writes anything.
Relies on: checkpoint, data, resize, metrics and sample (validation only).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from sr3_mini.checkpoint import check_state_dict, load_checkpoint, regression_predict
from sr3_mini.resize import downsample, upsample
from sr3_mini.schedule import Schedule

if TYPE_CHECKING:
    from sr3_mini.train import TrainConfig

__all__ = ["ConfigError", "ARCH_FIELDS", "load_data", "load_data_once", "dist_env", "any_rank", "log", "restore",
           "open_checkpoint", "validate"]

ARCH_FIELDS = ("preset", "unet", "kind", "scale", "schedule_T", "beta_start", "beta_end")  # fixed on resume


class ConfigError(ValueError):
    """A configuration that cannot run (an unknown preset or UNet key, a crop larger than the data, a missing or
    different run to resume, a data folder that is not one): raised before anything is written."""


def load_data(cfg: TrainConfig):
    """(train pool uint8 [N, 3, S, S], held-out uint8 [V, 3, S', S']) from the bundled sets or cfg.data."""
    import numpy as np

    from sr3_mini import data
    if cfg.data:
        try:
            folder = data.FolderCrops(cfg.data, crop=cfg.crop, workers=cfg.num_workers,
                                      cache_dir=Path(cfg.out_dir) / "crop_cache")
        except ValueError as e:                                # not a folder, no usable photo
            raise ConfigError(str(e)) from None
        first = np.unique(folder.image_index, return_index=True)[1]    # the first crop of each photo
        k = min(cfg.val_size, len(first) - 1)                          # whole photos held out; one left to train on
        return folder.crops[torch.as_tensor(folder.image_index >= k)], folder.crops[torch.as_tensor(first[:k])]
    held_out = [data.to_uint8(y) for _, y in data.bundled_eval_images()[:cfg.val_size]]
    return data.bundled_train_crops(), torch.stack(held_out)


def load_data_once(cfg: TrainConfig, rank: int, world: int):
    """``load_data`` under DDP: rank 0 first (it decodes a --data folder and writes the crop cache), then the
    other ranks, which read that cache; rank 0's ConfigError is raised on every rank."""
    if world == 1:
        return load_data(cfg)
    result, error = None, [None]
    if rank == 0:
        try:
            result = load_data(cfg)
        except ConfigError as e:
            error = [str(e)]
    dist.broadcast_object_list(error, src=0)                   # also the barrier: the cache is complete after it
    if error[0] is not None:
        raise ConfigError(error[0])
    return result if rank == 0 else load_data(cfg)


def open_checkpoint(path, what: str) -> dict:
    """load_checkpoint with its errors as ConfigErrors naming the option (``what``)."""
    try:
        return load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{what}: {e}") from None


def dist_env():
    """(rank, world_size, local_rank) from the variables torchrun sets; (0, 1, 0) otherwise."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


def any_rank(flag: bool, device) -> bool:
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def log(out: Path, rec: dict, rank: int) -> None:
    if rank == 0:
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


def restore(path, cfg, model, ema, opt, g, rank):
    """Load a training checkpoint into model, ema, opt, g and this rank's global RNG; returns (step, metrics)."""
    state = open_checkpoint(path, "--resume")
    saved = state.get("train_config") or {}
    diff = {k: (saved[k], getattr(cfg, k)) for k in ARCH_FIELDS if k in saved and saved[k] != getattr(cfg, k)}
    if diff:
        raise ConfigError(f"cannot resume {path}: these settings differ (checkpoint, requested): {diff}")
    if state.get("optimizer") is None or state.get("rng") is None or state.get("ema") is None:
        raise ConfigError(f"{path} has no optimizer/RNG state (a release export?): it cannot be resumed")
    for module, key in ((model, "model"), (ema, "ema")):
        try:
            check_state_dict(module, state[key], what=f"{key} weights of {path}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        module.load_state_dict(state[key])
    opt.load_state_dict(state["optimizer"])
    rng = state["rng"]
    if rng["device_type"] != g.device.type:
        warnings.warn(f"{path} was trained on {rng['device_type']}: reseeding on {g.device.type} (not bit-exact)")
        g.manual_seed(cfg.seed + state["step"])
    else:
        g.set_state(rng["generator"])
        if rank < len(rng["ranks"]):
            torch.set_rng_state(rng["ranks"][rank]["torch"])
            if rng["ranks"][rank]["cuda"] is not None:
                torch.cuda.set_rng_state(rng["ranks"][rank]["cuda"], g.device)
    return int(state["step"]), state.get("metrics") or {}


@torch.no_grad()
def validate(ema, cfg: TrainConfig, y: torch.Tensor, schedule: Schedule, png: Path | None = None) -> dict:
    """PSNR of the EMA model (and of bicubic, for reference) and consistency on the held-out batch y
    [V, 3, H, W] in [-1, 1]; sr3 samples with ``schedule.respaced(cfg.val_steps)`` and a fixed seed.
    Writes a grid to ``png``: columns LR (nearest) | bicubic | output | HR, one row per image (at most 4)."""
    from sr3_mini.metrics import consistency, psnr
    from sr3_mini.sample import super_resolve
    x = downsample(y, cfg.scale)
    x_up = upsample(x, cfg.scale)
    if cfg.kind == "regression":
        y_hat = regression_predict(ema, x_up).float().clamp(-1, 1)
    else:
        y_hat = super_resolve(ema, x, schedule=schedule.respaced(cfg.val_steps), scale=cfg.scale, progress=False,
                              generator=torch.Generator().manual_seed(cfg.seed),
                              autocast=None if cfg.autocast == "none" else cfg.autocast).float()
    metrics = {"val_psnr": psnr(y_hat, y).mean().item(), "val_psnr_bicubic": psnr(x_up, y).mean().item(),
               "val_consistency": consistency(x, y_hat, cfg.scale).mean().item()}
    if png is not None:
        from sr3_mini.data import save_image
        lr = torch.nn.functional.interpolate(x, scale_factor=cfg.scale, mode="nearest")
        save_image(torch.cat([torch.cat(list(t[:4]), dim=1) for t in (lr, x_up, y_hat, y)], dim=2), png)
    return metrics
