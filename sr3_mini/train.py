"""Training of SR3: Algorithm 1 of Saharia et al. (2021), the objective (6) on noisy images made by (5).

    repeat
        (x, y_0) ~ D             an HR crop y_0 and its antialiased bicubic LR x = downsample(y_0) (resize.py)
        gamma ~ p(gamma)         Schedule.sample_gamma: t ~ U{1..T}, gamma ~ U(gamma_t, gamma_{t-1})
        eps ~ N(0, I)
        gradient step on || f_theta(x, sqrt(gamma) y_0 + sqrt(1 - gamma) eps, gamma) - eps ||_p^p     (5), (6)
    until converged

Around it: Adam with linear warm-up, gradient clipping, an EMA of the weights (the weights used for sampling),
optional bf16 autocast / channels_last / torch.compile, gradient accumulation, DDP under ``torchrun``, atomic
checkpoints (checkpoint.py), a JSON-lines log, periodic validation (PSNR, consistency, a PNG grid).
``kind="regression"`` trains the paper's regression baseline: the same U-Net fed y_t = 0 and a constant gamma
(sample.regression_predict), MSE between its output and y_0.

Randomness: every draw of a step (crops, crop offsets, flips, gamma, eps) comes from ONE torch.Generator on the
training device, seeded with ``cfg.seed`` and saved in each checkpoint, so resuming at step k and running to
k + n gives the same weights, bit for bit, as an uninterrupted run (on CPU; on CUDA, cuDNN's autotuned kernels
need not be deterministic), float16 loss scaling included. Under DDP every rank holds the same generator, draws
the *global* batch (batch_size x world_size) and keeps its own slice: the run is by construction the
single-process run with the global batch (equal up to the rounding of the gradient all-reduce). The uint8 crop
pool is moved to the device once; cropping, flipping and downsampling run there on whole batches; the loop waits
for the device only every ``log_every`` steps (loss, non-finite check: under DDP every rank stops at the first
non-finite step of any). Only rank 0 writes files. Relies on: checkpoint (saving, ``restore_training``), data
(``load_data_once``), diffusion, resize, schedule, unet (``target_of``), sample (``regression_predict``), evaluate
(``validate``), accel; the command line is in ``cli.py``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sr3_mini import accel
from sr3_mini import diffusion as D
from sr3_mini.checkpoint import KINDS, load_checkpoint, load_weights, make_state, restore_training, save_checkpoint
from sr3_mini.data import from_uint8, load_data_once
from sr3_mini.evaluate import validate
from sr3_mini.resize import downsample, upsample
from sr3_mini.sample import regression_predict
from sr3_mini.schedule import Schedule
from sr3_mini.unet import UNet, target_of

__all__ = ["TrainConfig", "ConfigError", "NonFiniteLossError", "train", "make_adam", "lr_at", "ema_decay_at",
           "ema_update", "sample_batch", "step_loss", "validate", "dist_env"]

ARCH_FIELDS = ("preset", "unet", "kind", "scale", "schedule_T", "beta_start", "beta_end")  # fixed on resume


class ConfigError(ValueError):
    """A configuration that cannot run (a field out of range, an unknown preset or UNet key, a crop larger than the
    data, a missing or different run to resume, a data folder that is not one): raised before anything is written."""


@dataclass
class TrainConfig:
    """Paper defaults (section 4: Adam, lr 1e-4, 10k warm-up steps, batch 256, 1M steps); deviations noted.
    Every field is checked when the config is made (``check``): a bad one raises a ConfigError naming it."""
    preset: str = "mini"            # deviation: the paper's U-Nets have 150-625M parameters (Table 1)
    unet: dict = field(default_factory=dict)  # UNetConfig overrides, e.g. {"dropout": 0.2}
    kind: str = "sr3"               # "sr3" (diffusion) or "regression" (the paper's baseline)
    scale: int = 4
    data: str = ""                  # "" = bundled crops (data/), else a folder of images (data.FolderCrops)
    crop: int = 64                  # HR crop; deviation: the paper trains at the target size (128..1024)
    flip: bool = True               # random left-right flips
    val_size: int = 8               # held-out photos for validation (bundled: data/eval; folder: never trained on)
    steps: int = 1_000_000
    batch_size: int = 16            # per process; deviation: paper 256. global = batch_size x grad_accum x ranks
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int = 10_000      # linear warm-up from 0, then constant
    loss_p: int = 1                 # L1: the paper found it slightly better than L2 (regression always uses L2)
    grad_clip: float = 1.0          # not stated in the paper; a standard guard (0 = off)
    ema_decay: float = 0.9999       # SR3 samples with EMA weights but states no decay: DDPM's 0.9999
    ema_warmup: bool = True         # deviation: decay_k = min(ema_decay, (1+k)/(10+k)), so short runs get a usable EMA
    schedule_T: int = 2000          # training schedule: linear beta 1e-6 -> 1e-2, T = 2000 (SR3/WaveGrad)
    beta_start: float = 1e-6
    beta_end: float = 1e-2
    seed: int = 0
    out_dir: str = "runs/sr3"
    resume: str = ""                # "" = fresh, "auto" = out_dir/last.pt if present, else a checkpoint path
    init: str = ""                  # fresh run starting from these weights (a checkpoint's EMA, else its model)
    save_every: int = 5000          # last.pt, replaced atomically
    keep_every: int = 0             # also keep step_XXXXXXX.pt every N steps (0 = never)
    val_every: int = 5000           # 0 = no validation
    val_steps: int = 50             # deviation: validation samples with the training schedule respaced to 50 steps
    log_every: int = 100            # also how often the host waits for the device (loss, non-finite check)
    minutes: float = 0.0            # wall-clock budget: stop, validate and save cleanly when spent (0 = none)
    device: str = "auto"            # "auto" = cuda if available
    autocast: str = "none"          # "none" | "bf16" (CUDA; opt-in on CPU) | "fp16" (T4-class GPUs; loss scaling)
    channels_last: bool = False
    compile: bool = False           # torch.compile the network (accel.compile_net); off: not yet timed on a GPU
    num_workers: int = 0            # processes decoding a --data folder (its crops are then cached in out_dir)
    progress: bool = True           # tqdm bar (also off with env TQDM_DISABLE=1, and on ranks > 0)

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
    **{k: (lambda v: _integer(v) and v >= 1, "an integer >= 1") for k in (
        "scale", "crop", "steps", "batch_size", "grad_accum", "schedule_T", "save_every", "log_every", "val_steps")},
    **{k: (lambda v: _integer(v) and v >= 0, "an integer >= 0") for k in (
        "val_size", "warmup_steps", "keep_every", "val_every", "num_workers")},
    "seed": (_integer, "an integer"),
    "lr": (lambda v: _number(v) and 0 < v < math.inf, "a finite number > 0"),
    "grad_clip": (lambda v: _number(v) and 0 <= v < math.inf, "a finite number >= 0 (0 = off)"),
    "ema_decay": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "minutes": (lambda v: _number(v) and 0 <= v < math.inf, "a finite number >= 0 (0 = no limit)"),
    "beta_start": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "beta_end": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "unet": (lambda v: isinstance(v, dict), "a dict of UNetConfig fields"),
    "device": (_device, "'auto' or a torch device (cpu, cuda, ...)"),
}


class NonFiniteLossError(ValueError):
    """The loss or gradient norm became NaN/inf. The poisoned state is never saved: last.pt stays good."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss or gradient at step {step}; training stopped, the last good "
                         "checkpoint was kept (try a lower --lr, or --autocast none)")
        self.step = step


def make_adam(model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam (the paper's optimiser) in its fused form on CUDA and CPU: one kernel for all parameters instead of ~10
    small ops per tensor, the same update rule (rounding can differ in the last bits). Else the per-tensor loop."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cuda", "cpu"))
    except RuntimeError:  # e.g. an older torch without the fused CPU kernel
        return torch.optim.Adam(model.parameters(), lr=lr)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update number ``step`` (1-based): lr * min(1, step / warmup_steps)."""
    return cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps > 0 else cfg.lr


def ema_decay_at(step: int, cfg: TrainConfig) -> float:
    return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """theta_ema <- decay theta_ema + (1 - decay) theta, one fused lerp over all parameters; buffers copied."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def sample_batch(pool: torch.Tensor, n: int, cfg: TrainConfig, schedule: Schedule, g: torch.Generator):
    """n training samples from a uint8 pool [N, 3, S, S] on g's device: y_0 [n, 3, crop, crop] in [-1, 1],
    gamma [n] (float64 on the CPU, float32 elsewhere), eps [n, 3, crop, crop]. Every draw happens whatever the config."""
    dev, c = pool.device, cfg.crop
    idx = torch.randint(pool.shape[0], (n,), generator=g, device=dev)
    oy = torch.randint(pool.shape[-2] - c + 1, (n, 1), generator=g, device=dev)
    ox = torch.randint(pool.shape[-1] - c + 1, (n, 1), generator=g, device=dev)
    flip = torch.rand(n, generator=g, device=dev) < 0.5
    gamma = schedule.sample_gamma(n, generator=g)                          # gamma ~ p(gamma)
    eps = torch.randn((n, 3, c, c), generator=g, device=dev)               # eps ~ N(0, I)
    y = pool[idx]
    if y.shape[-2:] != (c, c):                                             # a random crop per sample, by gathering
        ar = torch.arange(c, device=dev)
        y = y[torch.arange(n, device=dev)[:, None, None, None], torch.arange(3, device=dev)[:, None, None],
              (oy + ar)[:, None, :, None], (ox + ar)[:, None, None, :]]
    y_0 = from_uint8(y)
    if cfg.flip:
        y_0 = torch.where(flip[:, None, None, None], y_0.flip(-1), y_0)
    return y_0, gamma, eps


def step_loss(net, kind: str, y_0, x_up, gamma, eps, p: int) -> torch.Tensor:
    """Loss of one (micro-)batch. sr3: (6) on y~ of (5), in the network's variable (``target_of(net)``, read
    through DDP and torch.compile: the residual deviation diffuses (y - x_up) / scale). regression: MSE of its
    prediction of y_0."""
    if kind == "regression":
        return D.loss(regression_predict(net, x_up).float(), y_0, p=2)
    y_0 = target_of(net).encode(y_0, x_up)                     # the paper: y_0 itself
    y_t = D.q_sample(y_0, gamma, eps)                          # (5): y~ = sqrt(gamma) y_0 + sqrt(1 - gamma) eps
    eps_hat = net(y_t, x_up, gamma.to(y_0.dtype))              # f_theta(x, y~, gamma); x enters as x_up
    return D.loss(eps_hat.float(), eps, p)                     # (6): || f_theta - eps ||_p^p


def train(cfg: TrainConfig, pool: torch.Tensor | None = None, val: torch.Tensor | None = None) -> dict:
    """Run Algorithm 1 as configured. ``pool`` / ``val``: uint8 training crops [N, 3, S, S] and held-out crops
    (default: from cfg.data or the bundled sets). Returns {"step", "model", "ema", "metrics", "stopped"}, with
    stopped = "steps" or "time". Under torchrun, joins (or creates) the process group. On CUDA, cuDNN autotuning
    and TF32 matmuls are on for the run only (``accel.cuda_tuning``)."""
    cfg.check()
    t_start, (rank, world, local_rank) = time.monotonic(), dist_env()
    name = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    device = torch.device(name, local_rank) if name == "cuda" else torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        with accel.cuda_tuning(device):
            return _train(cfg, pool, val, device, rank, world, t_start)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(cfg, pool, val, device, rank, world, t_start):
    out, schedule = Path(cfg.out_dir), Schedule.linear(cfg.schedule_T, cfg.beta_start, cfg.beta_end)
    torch.manual_seed(cfg.seed)                                # the same initial weights on every rank
    with _config_errors(f"preset {cfg.preset!r} with unet {cfg.unet}", TypeError):  # or a key UNetConfig lacks
        model = UNet.from_preset(cfg.preset, **cfg.unet)
    if cfg.crop % model.multiple:
        raise ConfigError(f"crop={cfg.crop} must be a multiple of model.multiple={model.multiple}")
    if cfg.init:                                               # a checkpoint's EMA weights (else its raw ones)
        with _config_errors(f"--init {cfg.init}"):
            load_weights(model, load_checkpoint(cfg.init))
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = make_adam(model, cfg.lr, device)
    scaler = accel.grad_scaler(device, cfg.autocast)           # fp16: loss scaling; otherwise a no-op
    g = torch.Generator(device).manual_seed(cfg.seed)          # every draw of the steps; the same on every rank
    torch.manual_seed(cfg.seed + 1 + rank)                     # the global RNG only drives dropout: one per rank
    step, metrics = 0, {}
    resume = str(out / "last.pt") if cfg.resume == "auto" and (out / "last.pt").exists() else cfg.resume
    if resume and resume != "auto":
        with _config_errors(f"cannot resume {resume}"):
            step, metrics = restore_training(load_checkpoint(resume), model=model, ema=ema, optimizer=opt,
                                             generator=g, scaler=scaler, rank=rank, seed=cfg.seed,
                                             fixed={k: getattr(cfg, k) for k in ARCH_FIELDS})
    elif (out / "last.pt").exists():
        raise FileExistsError(f"{out / 'last.pt'} exists: pass --resume to continue it, or choose another --out")
    if pool is None:
        with _config_errors("--data"):                         # not a folder, no usable photo
            pool, val = load_data_once(rank, world, folder=cfg.data, crop=cfg.crop, val_size=cfg.val_size,
                                       cache_dir=out / "crop_cache", workers=cfg.num_workers)
    if cfg.crop > min(pool.shape[-2:]):
        raise ConfigError(f"crop={cfg.crop} is larger than the training crops ({pool.shape[-2]}x{pool.shape[-1]}); "
                          "choose a smaller crop, or train on a folder of photos (--data)")
    if rank == 0:                                              # the first write of the run: every check is done
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    pool = pool.to(device)
    if val is not None and len(val):                           # centre crops of the held-out images
        top, left = (val.shape[-2] - cfg.crop) // 2, (val.shape[-1] - cfg.crop) // 2
        val = from_uint8(val[..., top:top + cfg.crop, left:left + cfg.crop].to(device))
    net = ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    net = accel.compile_net(net) if cfg.compile else net
    amp = torch.autocast(device.type, dtype=accel.AUTOCAST.get(cfg.autocast), enabled=cfg.autocast != "none")
    B, deadline = cfg.batch_size, t_start + 60 * cfg.minutes if cfg.minutes > 0 else float("inf")
    bad_step = torch.tensor(-1, device=device)                 # first non-finite step, tracked on the device
    loss_sum, t_log, step_log, stopped = torch.zeros((), device=device), time.monotonic(), step, "steps"
    bar = {} if cfg.progress and rank == 0 else {"disable": True}   # when on, tqdm still obeys TQDM_DISABLE
    pbar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, **bar)

    def check_finite():                                        # collective under DDP: every rank calls it
        first = bad_step
        if world > 1:                                          # all ranks stop at the first bad step of any
            first = torch.where(bad_step < 0, cfg.steps + 1, bad_step)     # steps + 1: none here
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        first = int(first.item())
        if 0 <= first <= cfg.steps:
            pbar.close()
            raise NonFiniteLossError(first)

    def save(path):
        check_finite()                                         # never write a poisoned state
        own = {"torch": torch.get_rng_state(),                 # this rank's dropout stream
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        ranks = [own]
        if world > 1:
            ranks = [None] * world
            dist.all_gather_object(ranks, own)
        if rank == 0:
            save_checkpoint(path, make_state(
                kind=cfg.kind, model=model, schedule=schedule, scale=cfg.scale, ema=ema, optimizer=opt, step=step,
                train_config=dataclasses.asdict(cfg), metrics=metrics, scaler=scaler,
                rng={"generator": g.get_state(), "device_type": device.type, "ranks": ranks}))

    model.train()
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step + 1, cfg)
        for micro in range(cfg.grad_accum):
            y_0, gamma, eps = (t[rank * B:(rank + 1) * B] for t in sample_batch(pool, B * world, cfg, schedule, g))
            x_up = upsample(downsample(y_0, cfg.scale), cfg.scale)  # x = downsample(y_0); the network sees x_up
            if cfg.channels_last:
                y_0, x_up, eps = (t.contiguous(memory_format=torch.channels_last) for t in (y_0, x_up, eps))
            with ddp.no_sync() if world > 1 and micro < cfg.grad_accum - 1 else contextlib.nullcontext():
                with amp:
                    loss = step_loss(net, cfg.kind, y_0, x_up, gamma, eps, cfg.loss_p) / cfg.grad_accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        scaler.unscale_(opt)                                   # true gradients for the clip and its norm
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        scaler.step(opt)                                       # fp16: skipped when a gradient overflowed
        scaler.update()
        opt.zero_grad(set_to_none=True)
        step += 1
        ema_update(ema, model, ema_decay_at(step, cfg))
        # every micro-batch's loss since the last log is in loss_sum: one NaN or inf keeps it non-finite
        finite = torch.isfinite(loss_sum) & (torch.isfinite(grad_norm) | scaler.is_enabled())  # fp16: scaler's
        bad_step = torch.where((bad_step < 0) & ~finite, step, bad_step)
        pbar.update(1)
        out_of_time = time.monotonic() > deadline
        if world > 1:                                          # all ranks must stop at the same step
            out_of_time = step % cfg.log_every == 0 and any_rank(out_of_time, device)
        last = step == cfg.steps or out_of_time
        if step % cfg.log_every == 0 or last:
            check_finite()
            if world > 1:
                dist.all_reduce(loss_sum)
            now = time.monotonic()
            rec = {"step": step, "loss": loss_sum.item() / world / (step - step_log), "lr": lr_at(step, cfg),
                   "grad_norm": grad_norm.item(), "it_s": (step - step_log) / (now - t_log),
                   "elapsed_s": now - t_start, "time": time.time()}
            loss_sum.zero_()
            t_log, step_log = now, step
            pbar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}")
            log(out, rec, rank)
        if cfg.val_every > 0 and val is not None and len(val) and (step % cfg.val_every == 0 or last):
            check_finite()
            if rank == 0:
                metrics = validate(ema, cfg, val, schedule, out / f"val_{step:07d}.png")
                log(out, {"step": step, **metrics}, rank)
        if step % cfg.save_every == 0 or last:
            save(out / "last.pt")
        if cfg.keep_every > 0 and step % cfg.keep_every == 0:
            save(out / f"step_{step:07d}.pt")
        if out_of_time:
            stopped = "time"
            break
    pbar.close()
    return {"step": step, "model": model, "ema": ema, "metrics": metrics, "stopped": stopped}


@contextlib.contextmanager
def _config_errors(what: str, *also):
    """A missing file or a ValueError (or ``also``) inside the block, as a ConfigError naming the setting."""
    try:
        yield
    except (FileNotFoundError, ValueError, *also) as e:
        raise ConfigError(f"{what}: {e}") from None


def dist_env():
    """(rank, world_size, local_rank) from the variables torchrun sets; (0, 1, 0) otherwise."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


def any_rank(flag: bool, device) -> bool:
    """Whether ``flag`` is true on any DDP rank (a collective: every rank must call it)."""
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def log(out: Path, rec: dict, rank: int) -> None:
    """Append ``rec`` as one JSON line to out/log.jsonl (rank 0 only)."""
    if rank == 0:
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
