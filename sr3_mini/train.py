"""Training of SR3: Algorithm 1 of Saharia et al. (2021), the objective (6) on noisy images made by (5).

    repeat
        (x, y_0) ~ D             an HR crop y_0 and its antialiased bicubic LR x = downsample(y_0) (resize.py)
        gamma ~ p(gamma)         Schedule.sample_gamma: t ~ U{1..T}, gamma ~ U(gamma_t, gamma_{t-1})
        eps ~ N(0, I)
        gradient step on || f_theta(x, sqrt(gamma) y_0 + sqrt(1 - gamma) eps, gamma) - eps ||_p^p     (5), (6)
    until converged

Around it: Adam with linear warm-up, gradient clipping, an EMA of the weights (the weights used for sampling),
optional bf16 autocast / channels_last / torch.compile, gradient accumulation, DDP under ``torchrun``, atomic
checkpoints with exact resume (checkpoint.py), a JSON-lines log, periodic validation (PSNR, consistency, a PNG
grid). ``kind="regression"`` trains the paper's regression baseline: same U-Net fed y_t = 0 and a constant gamma
(checkpoint.regression_predict), MSE between its output and y_0.

Randomness: every draw of a step (which crops, crop offsets, flips, gamma, eps) comes from ONE torch.Generator
on the training device, seeded with ``cfg.seed`` and saved in each checkpoint, so resuming at step k and running
to k + n gives the same weights, bit for bit, as an uninterrupted run. Under DDP every rank holds the same
generator, draws the *global* batch (batch_size x world_size samples) and keeps its own slice; ranks therefore
see different samples, and the run is mathematically the single-process run with the global batch (equal up to
float rounding of the gradient all-reduce). The batch pipeline runs on the device: the uint8 crop pool is moved
there once, and cropping, flipping and downsampling happen on whole batches. Only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from sr3_mini import diffusion as D
from sr3_mini.checkpoint import (FORMAT, check_state_dict, load_checkpoint, regression_predict,
                                 save_checkpoint)
from sr3_mini.resize import downsample, upsample
from sr3_mini.schedule import Schedule

__all__ = ["TrainConfig", "NonFiniteLossError", "train", "lr_at", "ema_decay_at", "ema_update", "plot_log",
           "main"]


@dataclass
class TrainConfig:
    """Paper defaults (section 4: Adam, lr 1e-4, 10k warm-up steps, batch 256, 1M steps), deviations noted."""
    preset: str = "mini"            # deviation: paper models have 150-625M parameters (Table 1); mini fits a laptop
    unet: dict = field(default_factory=dict)  # UNetConfig overrides, e.g. {"dropout": 0.2}
    kind: str = "sr3"               # "sr3" (diffusion) or "regression" (the paper's baseline)
    scale: int = 4
    data: str = ""                  # "" = bundled crops (data/train_crops.npz), else a folder of images
    crop: int = 64                  # deviation: paper trains at the target size (128..1024); 64 keeps it small
    flip: bool = True               # random horizontal flips
    val_size: int = 8               # the first val_size crops of the pool: fixed validation batch, never trained on
    steps: int = 1_000_000
    batch_size: int = 16            # per process; deviation: paper 256. global = batch_size x grad_accum x world
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int = 10_000      # linear warm-up from 0, then constant
    loss_p: int = 1                 # L1: the paper found it slightly better than L2 (regression always uses L2)
    grad_clip: float = 1.0          # not stated in the paper; a standard guard (0 = off)
    ema_decay: float = 0.9999       # the paper samples with EMA weights; DDPM's decay (SR3 does not state one)
    ema_warmup: bool = True         # deviation: decay_k = min(ema_decay, (1+k)/(10+k)) so short runs get a usable EMA
    schedule_T: int = 2000          # training schedule: linear beta 1e-6 -> 1e-2, T = 2000 (SR3/WaveGrad)
    beta_start: float = 1e-6
    beta_end: float = 1e-2
    seed: int = 0
    out_dir: str = "runs/sr3"
    resume: str = ""                # "" = fresh run, "auto" = out_dir/last.pt if it exists, or a checkpoint path
    save_every: int = 5000          # last.pt is overwritten atomically; keep_every > 0 also keeps step_*.pt
    keep_every: int = 0
    val_every: int = 5000           # 0 = no validation
    val_steps: int = 50             # deviation: short inference schedule (training schedule respaced) for validation
    log_every: int = 100            # also how often the device is synchronised (loss, non-finite check)
    minutes: float = 0.0            # wall-clock budget: stop, validate and save cleanly when spent (0 = none)
    device: str = "auto"            # "auto" = cuda if available
    autocast: str = "none"          # "none" | "bf16" (CUDA; opt-in on CPU)
    channels_last: bool = False
    compile: bool = False           # torch.compile the network
    num_workers: int = 0            # decoding workers when building the crop cache of a folder (data.FolderCrops)
    progress: bool = True           # tqdm bar (also off with env TQDM_DISABLE=1, and on ranks > 0)


class NonFiniteLossError(ValueError):
    """The loss or gradient norm became NaN/inf. The poisoned state is not saved: last.pt is the last good one."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss or gradient at step {step}; training stopped, the last good "
                         "checkpoint was kept (try a lower --lr or --autocast none)")
        self.step = step


ARCH_FIELDS = ("preset", "unet", "kind", "scale", "schedule_T", "beta_start", "beta_end")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update number ``step`` (1-based): lr * min(1, step / warmup_steps)."""
    return cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps > 0 else cfg.lr


def ema_decay_at(step: int, cfg: TrainConfig) -> float:
    return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay theta_ema + (1 - decay) theta (one fused lerp over all parameters); buffers copied."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def sample_batch(pool: torch.Tensor, n: int, cfg: TrainConfig, schedule: Schedule, g: torch.Generator):
    """Draw n training samples from a uint8 pool [N, 3, S, S] on g's device. Returns y_0 [n, 3, crop, crop] in
    [-1, 1], gamma [n] (float64) and eps [n, 3, crop, crop]. Every draw happens whatever the config, so the
    generator advances the same way in every run."""
    dev, c = pool.device, cfg.crop
    idx = torch.randint(pool.shape[0], (n,), generator=g, device=dev)
    oy = torch.randint(pool.shape[-2] - c + 1, (n, 1), generator=g, device=dev)
    ox = torch.randint(pool.shape[-1] - c + 1, (n, 1), generator=g, device=dev)
    flip = torch.rand(n, generator=g, device=dev) < 0.5
    gamma = schedule.sample_gamma(n, generator=g)                          # gamma ~ p(gamma)
    eps = torch.randn((n, 3, c, c), generator=g, device=dev)               # eps ~ N(0, I)
    y = pool[idx]
    if y.shape[-2:] != (c, c):                                             # per-sample random crop by gathering
        ar = torch.arange(c, device=dev)
        rows, cols = (oy + ar)[:, None, :, None], (ox + ar)[:, None, None, :]
        y = y[torch.arange(n, device=dev)[:, None, None, None], torch.arange(3, device=dev)[:, None, None], rows, cols]
    y_0 = y.float() / 127.5 - 1
    if cfg.flip:
        y_0 = torch.where(flip[:, None, None, None], y_0.flip(-1), y_0)
    return y_0, gamma, eps


def step_loss(net, kind: str, y_0, x_up, gamma, eps, p: int) -> torch.Tensor:
    """The loss of one (micro-)batch. sr3: (6) on y~ of (5). regression: MSE of the prediction of y_0."""
    if kind == "regression":
        return D.loss(regression_predict(net, x_up).float(), y_0, p=2)
    y_t = D.q_sample(y_0, gamma, eps)                          # (5): y~ = sqrt(gamma) y_0 + sqrt(1 - gamma) eps
    eps_hat = net(y_t, x_up, gamma.to(y_0.dtype))              # f_theta(x, y~, gamma), x enters as x_up
    return D.loss(eps_hat.float(), eps, p)                     # (6): || f_theta - eps ||_p^p


def _load_pool(cfg: TrainConfig) -> torch.Tensor:
    from sr3_mini import data
    if not cfg.data:
        return data.bundled_train_crops()
    return data.FolderCrops(cfg.data, crop=cfg.crop, num_workers=cfg.num_workers).crops


def _dist_env():
    """(rank, world_size, local_rank) from the variables torchrun sets; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def train(cfg: TrainConfig, pool: torch.Tensor | None = None) -> dict:
    """Run Algorithm 1 as configured. ``pool``: uint8 HR crops [N, 3, S, S] (default: cfg.data or the bundled
    set). Returns {"step", "model", "ema", "metrics", "stopped"} ("steps" or "time")."""
    from sr3_mini.unet import UNet

    t_start = time.monotonic()
    rank, world, local_rank = _dist_env()
    if cfg.kind not in ("sr3", "regression") or cfg.autocast not in ("none", "bf16"):
        raise ValueError(f"kind must be sr3|regression and autocast none|bf16; got {cfg.kind!r}, {cfg.autocast!r}")
    dev_name = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    device = torch.device(dev_name, local_rank) if dev_name == "cuda" else torch.device(dev_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(cfg, pool, UNet, device, rank, world, t_start)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(cfg, pool, UNet, device, rank, world, t_start):
    out, schedule = Path(cfg.out_dir), Schedule.linear(cfg.schedule_T, cfg.beta_start, cfg.beta_end)
    torch.manual_seed(cfg.seed)                                # same initial weights on every rank
    model = UNet.from_preset(cfg.preset)
    if cfg.unet:
        model = UNet(dataclasses.replace(model.config, **cfg.unet))
    if cfg.crop % model.multiple or cfg.crop % cfg.scale:
        raise ValueError(f"crop={cfg.crop} must be a multiple of the U-Net's {model.multiple} and of scale={cfg.scale}")
    fmt = torch.channels_last if cfg.channels_last else torch.preserve_format
    model = model.to(device, memory_format=fmt)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    g = torch.Generator(device).manual_seed(cfg.seed)          # all randomness of the steps; same on every rank
    torch.manual_seed(cfg.seed + 1 + rank)                     # dropout: a different stream per rank
    step, metrics = 0, {}
    resume = str(out / "last.pt") if cfg.resume == "auto" and (out / "last.pt").exists() else cfg.resume
    if resume and resume != "auto":
        step, metrics = _restore(resume, cfg, model, ema, opt, g, device, rank)
    elif (out / "last.pt").exists():
        raise FileExistsError(f"{out / 'last.pt'} exists: pass --resume to continue it, or choose another --out")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    pool = (_load_pool(cfg) if pool is None else pool).to(device)
    if pool.dtype != torch.uint8 or pool.ndim != 4 or pool.shape[0] <= cfg.val_size:
        raise ValueError(f"pool must be uint8 [N, 3, S, S] with N > val_size; got {pool.dtype} {tuple(pool.shape)}")
    s = (pool.shape[-1] - cfg.crop) // 2
    val_y = pool[:cfg.val_size, :, s:s + cfg.crop, s:s + cfg.crop].float() / 127.5 - 1   # centre crops, held out
    pool = pool[cfg.val_size:]
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else model
    ddp = net
    if cfg.compile:
        net = torch.compile(net)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16")
    B, n_global = cfg.batch_size, cfg.batch_size * world
    deadline = t_start + 60 * cfg.minutes if cfg.minutes > 0 else float("inf")
    bad_step = torch.tensor(-1, device=device)                 # first non-finite step, tracked without host syncs
    loss_sum, t_log, step_log = torch.zeros((), device=device), time.monotonic(), step
    log_path = out / "log.jsonl"
    pbar = _progress(cfg, rank, step)
    stopped = "steps"

    def check_finite():
        if bad_step.item() >= 0:
            pbar.close()
            raise NonFiniteLossError(int(bad_step.item()))

    def save(path):
        check_finite()
        _save(path, cfg, model, ema, opt, g, step, schedule, metrics, world, rank)

    model.train()
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step + 1, cfg)
        for micro in range(cfg.grad_accum):
            y_0, gamma, eps = sample_batch(pool, n_global, cfg, schedule, g)
            y_0, gamma, eps = y_0[rank * B:(rank + 1) * B], gamma[rank * B:(rank + 1) * B], eps[rank * B:(rank + 1) * B]
            x_up = upsample(downsample(y_0, cfg.scale), cfg.scale)   # x = downsample(y_0); the network sees x_up
            if cfg.channels_last:
                y_0, x_up, eps = (t.contiguous(memory_format=torch.channels_last) for t in (y_0, x_up, eps))
            sync = ddp.no_sync() if world > 1 and micro < cfg.grad_accum - 1 else contextlib.nullcontext()
            with sync:
                with amp:
                    loss = step_loss(net, cfg.kind, y_0, x_up, gamma, eps, cfg.loss_p) / cfg.grad_accum
                loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        ema_update(ema, model, ema_decay_at(step, cfg))
        finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
        bad_step = torch.where((bad_step < 0) & ~finite, step, bad_step)
        pbar.update(1)
        out_of_time = time.monotonic() > deadline
        if world > 1 and step % cfg.log_every == 0:            # every rank must stop at the same step
            flag = torch.tensor(float(out_of_time), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        elif world > 1:
            out_of_time = False
        last = step == cfg.steps or out_of_time
        if step % cfg.log_every == 0 or last:
            check_finite()
            if world > 1:
                dist.all_reduce(loss_sum)
            now = time.monotonic()
            rec = {"step": step, "loss": loss_sum.item() / world / max(step - step_log, 1), "lr": lr_at(step, cfg),
                   "grad_norm": grad_norm.item(), "it_s": (step - step_log) / max(now - t_log, 1e-9),
                   "elapsed": now - t_start, "time": time.time()}
            loss_sum.zero_()
            t_log, step_log = now, step
            pbar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            _append_log(log_path, rec, rank)
        if cfg.val_every > 0 and (step % cfg.val_every == 0 or last) and rank == 0:
            check_finite()
            metrics = validate(ema, cfg, val_y, schedule, out / f"val_{step:07d}.png", amp)
            _append_log(log_path, {"step": step, **metrics}, rank)
            model.train()
        if step % cfg.save_every == 0 or last:
            save(out / "last.pt")
        if cfg.keep_every > 0 and step % cfg.keep_every == 0:
            save(out / f"step_{step:07d}.pt")
        if out_of_time:
            stopped = "time"
            break
    pbar.close()
    return {"step": step, "model": model, "ema": ema, "metrics": metrics, "stopped": stopped}


def _progress(cfg, rank, step):
    from tqdm.auto import tqdm
    off = not cfg.progress or rank != 0 or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    return tqdm(total=cfg.steps, initial=step, disable=off, unit="step", dynamic_ncols=True)


def _append_log(path: Path, rec: dict, rank: int) -> None:
    if rank == 0:
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def _save(path, cfg, model, ema, opt, g, step, schedule, metrics, world, rank):
    """Gather every rank's global RNG state (dropout), then rank 0 writes atomically."""
    own = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(g.device) if g.device.type == "cuda" else None}
    states = [own]
    if world > 1:
        states = [None] * world
        dist.all_gather_object(states, own)
    if rank != 0:
        return
    save_checkpoint(path, {
        "format": FORMAT, "kind": cfg.kind, "unet_config": dataclasses.asdict(model.config),
        "schedule": schedule.to_dict(), "scale": cfg.scale, "model": model.state_dict(), "ema": ema.state_dict(),
        "optimizer": opt.state_dict(), "step": step, "train_config": dataclasses.asdict(cfg), "metrics": metrics,
        "rng": {"generator": g.get_state(), "device_type": g.device.type, "ranks": states}})


def _restore(path, cfg, model, ema, opt, g, device, rank):
    """Load a training checkpoint into model/ema/opt/g and the global RNG; returns (step, metrics)."""
    state = load_checkpoint(path)
    saved = state.get("train_config") or {}
    diff = {k: (saved.get(k), getattr(cfg, k)) for k in ARCH_FIELDS if k in saved and saved[k] != getattr(cfg, k)}
    if diff:
        raise ValueError(f"cannot resume {path}: (checkpoint, requested) differ for {diff}")
    if state.get("optimizer") is None or state.get("rng") is None or state.get("ema") is None:
        raise ValueError(f"{path} is a release export (no optimizer/RNG state): it cannot be resumed")
    for module, key in ((model, "model"), (ema, "ema")):
        check_state_dict(module, state[key], what=f"{key} weights of {path}")
        module.load_state_dict(state[key])
    opt.load_state_dict(state["optimizer"])
    rng = state["rng"]
    if rng["device_type"] == device.type:
        g.set_state(rng["generator"])
        if rank < len(rng["ranks"]):
            torch.set_rng_state(rng["ranks"][rank]["torch"])
            if device.type == "cuda" and rng["ranks"][rank]["cuda"] is not None:
                torch.cuda.set_rng_state(rng["ranks"][rank]["cuda"], device)
    else:
        warnings.warn(f"{path} was trained on {rng['device_type']}; reseeding on {device.type} (not bit-exact)")
        g.manual_seed(cfg.seed + state["step"])
    return int(state["step"]), state.get("metrics") or {}


@torch.no_grad()
def validate(ema, cfg: TrainConfig, y: torch.Tensor, schedule: Schedule, png: Path | None = None,
             amp=contextlib.nullcontext()) -> dict:
    """PSNR (against y and, for reference, of bicubic) and consistency on the fixed held-out batch y [V, 3, H, W];
    sr3 samples with the training schedule respaced to cfg.val_steps. Saves a grid LR | bicubic | output | HR."""
    from sr3_mini.metrics import consistency, psnr
    x = downsample(y, cfg.scale)
    x_up = upsample(x, cfg.scale)
    with amp:
        if cfg.kind == "regression":
            y_hat = regression_predict(ema, x_up).float().clamp(-1, 1)
        else:
            from sr3_mini.sample import super_resolve
            gen = torch.Generator(y.device).manual_seed(cfg.seed)
            y_hat = super_resolve(ema, x, schedule=schedule.respaced(cfg.val_steps), generator=gen,
                                  progress=False).float()
    mean = lambda v: float(torch.as_tensor(v, dtype=torch.float64).mean())  # noqa: E731
    m = {"val_psnr": mean(psnr(y_hat, y)), "val_psnr_bicubic": mean(psnr(x_up, y)),
         "val_consistency": mean(consistency(x, y_hat, cfg.scale))}
    if png is not None:
        lr_near = torch.nn.functional.interpolate(x, scale_factor=cfg.scale, mode="nearest")
        rows = torch.cat([torch.cat(list(t[:4]), dim=1) for t in (lr_near, x_up, y_hat, y)], dim=2)  # [3, 4H, 4W]
        _save_png(rows, png)
    return m


def _save_png(img: torch.Tensor, path: Path) -> None:
    from PIL import Image
    arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr).save(path)


def plot_log(path, out_png) -> Path:
    """Plot the training loss (and validation PSNR, if logged) of a log.jsonl file to a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    train_recs, val = [r for r in recs if "loss" in r], [r for r in recs if "val_psnr" in r]
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(10 if val else 5, 3.5), squeeze=False)
    axes[0, 0].plot([r["step"] for r in train_recs], [r["loss"] for r in train_recs])
    axes[0, 0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss (6)")
    if val:
        axes[0, 1].plot([r["step"] for r in val], [r["val_psnr"] for r in val], "o-", label="model (EMA)")
        axes[0, 1].plot([r["step"] for r in val], [r["val_psnr_bicubic"] for r in val], "--", label="bicubic")
        axes[0, 1].set(xlabel="step", ylabel="PSNR (dB)", title="held-out batch")
        axes[0, 1].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def build_parser() -> argparse.ArgumentParser:
    """One option per TrainConfig field (``--batch-size`` for batch_size, ...), defaults from TrainConfig."""
    p = argparse.ArgumentParser(prog="python -m sr3_mini train", description="Train SR3 (Algorithm 1) or the "
                                "regression baseline; checkpoints, config.json and log.jsonl go to --out-dir.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    choices = {"kind": ("sr3", "regression"), "autocast": ("none", "bf16"), "loss_p": (1, 2)}
    for f in dataclasses.fields(TrainConfig):
        name, default = "--" + f.name.replace("_", "-"), getattr(TrainConfig(), f.name)
        if f.name == "unet":
            p.add_argument(name, action="append", default=[], metavar="KEY=VALUE", help="UNetConfig override")
        elif f.name == "resume":
            p.add_argument(name, nargs="?", const="auto", default="", help="continue out_dir/last.pt, or a path")
        elif isinstance(default, bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=" ")
        else:
            p.add_argument(name, type=type(default), default=default, choices=choices.get(f.name), help=" ")
    p.add_argument("--out", dest="out_dir", default=argparse.SUPPRESS, help="alias of --out-dir")
    return p


def config_from_args(argv=None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    unet = {}
    for item in args.pop("unet"):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--unet expects KEY=VALUE, got {item!r}")
        try:
            unet[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            unet[key] = value
    return TrainConfig(**args, unet=unet)


def main(argv=None) -> int:
    """Command line: ``python -m sr3_mini train [options]`` (see build_parser). Returns the exit code."""
    cfg = config_from_args(argv)
    try:
        result = train(cfg)
    except (NonFiniteLossError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if _dist_env()[0] == 0:
        plot_log(Path(cfg.out_dir) / "log.jsonl", Path(cfg.out_dir) / "loss.png")
        print(f"stopped after step {result['step']} ({result['stopped']}); checkpoint {Path(cfg.out_dir) / 'last.pt'}")
    return 0
