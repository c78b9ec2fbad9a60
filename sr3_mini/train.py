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

Randomness: every draw of a step (crops, offsets, flips, gamma, eps, then any LR noise and blur) comes from
ONE torch.Generator on the training device, seeded with ``cfg.seed`` and saved in each checkpoint, so resuming at
step k and running to k + n gives the same weights, bit for bit, as an uninterrupted run (on CPU; on CUDA, cuDNN's
autotuned kernels need not be deterministic), float16 loss scaling included. Under DDP every rank holds the same
generator, draws the *global* batch (batch_size x world_size) and keeps its own slice: the run is by construction the
single-process run with the global batch (equal up to the rounding of the gradient all-reduce). The uint8 crop
pool is moved to the device once; cropping, flipping and downsampling run there on whole batches; the loop waits
for the device only every ``log_every`` steps (loss, non-finite check: under DDP every rank stops at the first
non-finite step of any). Only rank 0 writes files.

Nothing lost, nothing silently wrong: every checkpoint gets a log line, and before it is written the run stops
(``stopping.py``) if a loss, a gradient or a weight is not finite, or if the loss diverged (``diverge``); Ctrl-C
and SIGTERM end the step, save it, and raise ``TrainingInterrupted``; log.jsonl keeps one line per step across
resumes. Relies on: train_config (``TrainConfig``), stopping, checkpoint (saving, ``restore_training``), data
(``load_data_once``), diffusion, resize, schedule, unet (``target_of``), sample (``regression_predict``), evaluate
(``validate``), accel, cond_aug; the command line is in ``cli.py``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sr3_mini import accel, cond_aug
from sr3_mini import diffusion as D
from sr3_mini.checkpoint import load_checkpoint, load_weights, make_state, restore_training, save_checkpoint
from sr3_mini.data import from_uint8, load_data_once
from sr3_mini.evaluate import validate
from sr3_mini.resize import downsample, upsample
from sr3_mini.sample import regression_predict
from sr3_mini.schedule import Schedule
from sr3_mini.stopping import DivergedError, NonFiniteLossError, RunStop, TrainingInterrupted, WriteError
from sr3_mini.train_config import ConfigError, TrainConfig
from sr3_mini.unet import UNet, target_of

__all__ = ["TrainConfig", "ConfigError", "NonFiniteLossError", "DivergedError", "TrainingInterrupted", "WriteError",
           "train", "make_adam", "lr_at", "ema_decay_at", "ema_update", "sample_batch", "step_loss", "loss_weights",
           "validate", "dist_env"]

ARCH_FIELDS = ("preset", "unet", "kind", "scale", "schedule_T", "beta_start", "beta_end")  # fixed on resume


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


def step_loss(net, kind: str, y_0, x_up, gamma, eps, p: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of one (micro-)batch. sr3: (6) on y~ of (5), in the network's variable (``target_of(net)``, read
    through DDP and torch.compile: the residual deviation diffuses (y - x_up) / scale); ``weight`` [B] (or None,
    the paper) multiplies each sample's term. regression: MSE of its prediction of y_0."""
    if kind == "regression":
        return D.loss(regression_predict(net, x_up).float(), y_0, p=2)
    y_0 = target_of(net).encode(y_0, x_up)                     # the paper: y_0 itself
    y_t = D.q_sample(y_0, gamma, eps)                          # (5): y~ = sqrt(gamma) y_0 + sqrt(1 - gamma) eps
    eps_hat = net(y_t, x_up, gamma.to(y_0.dtype))              # f_theta(x, y~, gamma); x enters as x_up
    if weight is None:
        return D.loss(eps_hat.float(), eps, p)                 # (6): || f_theta - eps ||_p^p
    root = weight.to(eps.dtype).pow(1 / p).view(-1, *[1] * (eps.ndim - 1))   # w |e|^p = |w^(1/p) e|^p
    return D.loss(root * eps_hat.float(), root * eps, p)


BOUND_WEIGHT_CAP = 20.0


def loss_weights(schedule, gamma: torch.Tensor, weighting: str) -> torch.Tensor | None:
    """Per-sample weights of (6) for ``TrainConfig.loss_weighting``: None for "none" (the paper); for "bound",
    min(k / p(lambda), 20) with p(lambda) = p(gamma) gamma (1 - gamma) the density of the log-SNR
    lambda = log(gamma / (1 - gamma)) that ``sample_gamma`` draws, and k = 1 / (lambda_1 - lambda_T), so that
    uncapped weights average 1 and make every log-SNR count alike on the eps error (the bound's weighting,
    notebook 03 section 5.1). The cap bounds the gradient noise of the rare draws near gamma = 1."""
    if weighting == "none":
        return None
    if weighting != "bound":
        raise ValueError(f"loss_weighting must be none or bound, got {weighting!r}")
    g = gamma.detach()                                         # on its device: no host sync per step
    p_lambda = schedule.gamma_density(g) * g * (1 - g)
    ends = schedule.gammas[[1, -1]].double()                   # gamma_1, gamma_T (on the CPU, from the schedule)
    k = 1 / float(torch.logit(ends[0]) - torch.logit(ends[1]))
    w = (k / p_lambda.clamp_min(torch.finfo(p_lambda.dtype).tiny)).clamp(max=BOUND_WEIGHT_CAP)
    return w.float()


def train(cfg: TrainConfig, pool: torch.Tensor | None = None, val: torch.Tensor | None = None) -> dict:
    """Run Algorithm 1 as configured. ``pool`` / ``val``: uint8 training crops [N, 3, S, S] and held-out crops
    (default: from cfg.data or the bundled sets). Returns {"step", "model", "ema", "metrics", "stopped"}, with
    stopped = "steps" or "time". Stops early with an error of ``stopping.py`` that says what is kept; Ctrl-C or
    SIGTERM saves the step reached, then raises ``TrainingInterrupted`` (a KeyboardInterrupt). Under torchrun,
    joins (or creates) the process group. On CUDA, cuDNN autotuning and TF32 matmuls are on for the run only
    (``accel.cuda_tuning``)."""
    cfg.check()
    t_start, (rank, world, local_rank) = time.monotonic(), dist_env()
    name = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    device = torch.device(name, local_rank) if name == "cuda" else torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    own_group = world > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    stop = RunStop()
    try:
        with accel.cuda_tuning(device), stop:
            return _train(cfg, pool, val, device, rank, world, t_start, stop)
    except KeyboardInterrupt as e:                             # a second signal, mid-step: nothing more is saved
        if isinstance(e, TrainingInterrupted) or not stop.deferring:
            raise
        raise TrainingInterrupted(stop.step, stop.kept) from None
    except OSError as e:                                       # a full disk, a folder made read-only
        if isinstance(e, WriteError) or not stop.deferring:
            raise
        raise WriteError(e, stop.step, stop.kept) from None
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(cfg, pool, val, device, rank, world, t_start, stop):
    out, schedule = Path(cfg.out_dir), Schedule.linear(cfg.schedule_T, cfg.beta_start, cfg.beta_end)
    torch.manual_seed(cfg.seed)                                # the same initial weights on every rank
    with _config_errors(f"preset {cfg.preset!r} with unet {cfg.unet}", TypeError):  # or a key UNetConfig lacks
        model = UNet.from_preset(cfg.preset, **cfg.unet)
    if cfg.crop % model.multiple:
        raise ConfigError(f"crop={cfg.crop} must be a multiple of model.multiple={model.multiple}")
    if cfg.init:                                               # a checkpoint's EMA weights (else its raw ones)
        with _config_errors(f"--init {cfg.init} (its weights must fit this run's --preset and --unet)"):
            init = load_checkpoint(cfg.init)
            load_weights(model, init)
        if init["kind"] != cfg.kind:                           # allowed (a start is a start), but rarely meant
            warnings.warn(f"--init {cfg.init} is a {init['kind']!r} checkpoint and this run trains {cfg.kind!r}: "
                          f"its weights learned another task (to continue that one, pass --kind {init['kind']})")
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
        stop.step, stop.kept = step, (resume, step)
    elif (out / "last.pt").exists():
        raise FileExistsError(f"{out / 'last.pt'} exists: pass --resume to continue it, or choose another --out")
    if pool is None:
        with _config_errors("--data"):                         # not a folder, no usable photo
            pool, val = load_data_once(rank, world, folder=cfg.data, crop=cfg.crop, val_size=cfg.val_size,
                                       cache_dir=out / "crop_cache", workers=cfg.num_workers)
        if cfg.data and cfg.val_every and cfg.val_size and not len(val):   # load_data trains on a lone photo
            warnings.warn(f"--data {cfg.data} has one usable photo: it is trained on, so none is held out and "
                          "validation is off (add photos to the folder, or pass --val-every 0)")
    if cfg.crop > min(pool.shape[-2:]):
        raise ConfigError(f"crop={cfg.crop} is larger than the training crops ({pool.shape[-2]}x{pool.shape[-1]}); "
                          "choose a smaller crop, or train on a folder of photos (--data)")
    stop.deferring = True                                      # from the first write on, a signal ends the step
    if rank == 0:                                              # the first write of the run: every check is done
        try:
            out.mkdir(parents=True, exist_ok=True)
            _replace_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
        except OSError as e:
            raise ConfigError(f"cannot write to --out-dir {out}: {e} (choose a writable folder)") from None
        trim_log(out / "log.jsonl", step)
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
    best = math.inf                                            # the lowest loss logged: the divergence yardstick
    bar = {} if cfg.progress and rank == 0 else {"disable": True}   # when on, tqdm still obeys TQDM_DISABLE
    pbar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, **bar)

    def halt(error):
        pbar.close()
        raise error

    def check_finite():                                        # collective under DDP: every rank calls it
        first = bad_step
        if world > 1:                                          # all ranks stop at the first bad step of any
            first = torch.where(bad_step < 0, cfg.steps + 1, bad_step)     # steps + 1: none here
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        first = int(first.item())
        if 0 <= first <= cfg.steps:
            halt(NonFiniteLossError(first, stop.kept))

    def save(path):                                            # never a poisoned state: checked first
        check_finite()                                         # the losses and gradients up to this step
        if not _finite(model, ema):                            # an update can overflow weights its inputs did not
            halt(NonFiniteLossError(step, stop.kept, "weights"))
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
        stop.kept = (str(path), step)

    model.train()
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step + 1, cfg)
        for micro in range(cfg.grad_accum):
            y_0, gamma, eps = (t[rank * B:(rank + 1) * B] for t in sample_batch(pool, B * world, cfg, schedule, g))
            x = cond_aug.augment(downsample(y_0, cfg.scale), cfg.cond_noise, cfg.cond_blur, g, rank, world)
            x_up = upsample(x, cfg.scale)                     # x = downsample(y_0) (corrupted); the network sees x_up
            if cfg.channels_last:
                y_0, x_up, eps = (t.contiguous(memory_format=torch.channels_last) for t in (y_0, x_up, eps))
            with ddp.no_sync() if world > 1 and micro < cfg.grad_accum - 1 else contextlib.nullcontext():
                with amp:
                    loss = step_loss(net, cfg.kind, y_0, x_up, gamma, eps, cfg.loss_p,
                                     loss_weights(schedule, gamma, cfg.loss_weighting)) / cfg.grad_accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        scaler.unscale_(opt)                                   # true gradients for the clip and its norm
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        scaler.step(opt)                                       # fp16: skipped when a gradient overflowed
        scaler.update()
        opt.zero_grad(set_to_none=True)
        step += 1
        stop.step = step
        ema_update(ema, model, ema_decay_at(step, cfg))
        # every micro-batch's loss since the last log is in loss_sum: one NaN or inf keeps it non-finite
        finite = torch.isfinite(loss_sum) & (torch.isfinite(grad_norm) | scaler.is_enabled())  # fp16: scaler's
        bad_step = torch.where((bad_step < 0) & ~finite, step, bad_step)
        pbar.update(1)
        out_of_time, interrupted = time.monotonic() > deadline, stop.received is not None
        if world > 1:                                          # all ranks stop at the same step, a logged one
            out_of_time, interrupted = any_rank((out_of_time, interrupted), device) \
                if step % cfg.log_every == 0 else (False, False)
        last = step == cfg.steps or out_of_time or interrupted
        saving, keeping = step % cfg.save_every == 0 or last, cfg.keep_every > 0 and step % cfg.keep_every == 0
        if step % cfg.log_every == 0 or saving or keeping:    # every checkpoint has its log line, guards first
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
            if cfg.diverge and rec["loss"] > cfg.diverge * best:    # the same on every rank: an all-reduced loss
                halt(DivergedError(step, rec["loss"], best, cfg.diverge, stop.kept))
            best = min(best, rec["loss"])
        if cfg.val_every > 0 and val is not None and len(val) and (step % cfg.val_every == 0 or last) \
                and not interrupted:                           # a signal asks to stop: no validation
            check_finite()
            if rank == 0:
                metrics = validate(ema, cfg, val, schedule, out / f"val_{step:07d}.png")
                log(out, {"step": step, **metrics}, rank)
        if saving:
            save(out / "last.pt")
        if keeping:
            save(out / f"step_{step:07d}.pt")
        if (out_of_time or interrupted) and step < cfg.steps:
            stopped = "signal" if interrupted else "time"
            break
    pbar.close()
    if stopped == "signal":
        raise TrainingInterrupted(step, stop.kept)
    return {"step": step, "model": model, "ema": ema, "metrics": metrics, "stopped": stopped}


@contextlib.contextmanager
def _config_errors(what: str, *also):
    """A missing file or a ValueError (or ``also``) inside the block, as a ConfigError naming the setting."""
    try:
        yield
    except (FileNotFoundError, ValueError, *also) as e:
        raise ConfigError(f"{what}: {e}") from None


def _finite(*modules) -> bool:
    """Whether every floating-point weight and buffer of ``modules`` is finite (one wait for the device)."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def dist_env():
    """(rank, world_size, local_rank) from the variables torchrun sets; (0, 1, 0) otherwise."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


def any_rank(flags, device) -> tuple:
    """For each flag, whether it is true on any DDP rank (a collective: every rank must call it)."""
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def log(out: Path, rec: dict, rank: int) -> None:
    """Append ``rec`` as one JSON line to out/log.jsonl (rank 0 only)."""
    if rank == 0:
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


def trim_log(path: Path, step: int) -> None:
    """Keep the lines of a log.jsonl up to ``step``, where the run (re)starts (0: afresh): it logs the later steps
    again, and each step must have one line. A torn line (a kill mid-write) goes too. Rewritten atomically."""
    def step_of(line):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            return None
    lines = path.read_text().splitlines() if path.exists() else []
    keep = [line for line in lines if (s := step_of(line)) is not None and s <= step]
    if keep != lines:
        _replace_text(path, "".join(line + "\n" for line in keep))


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a crash leaves the old file or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
