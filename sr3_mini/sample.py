"""Algorithm 2 of SR3, inference by iterative refinement: equations (7)-(10) of ``shared/paper/EQUATIONS.md``.

Saharia et al., "Image Super-Resolution via Iterative Refinement" (2021), section 2.3:

    y_T ~ N(0, I)                                                                             (7)
    for t = T, ..., 1:
        z ~ N(0, I) if t > 1, else z = 0
        y_{t-1} = 1/sqrt(alpha_t) (y_t - (1 - alpha_t)/sqrt(1 - gamma_t) f_theta(x, y_t, gamma_t)) + sigma_t z   (10)
    return y_0

with sigma_t^2 = 1 - alpha_t as in the paper, or the posterior variance of (4) (``super_resolve``'s default, a
named deviation: see its docstring). The step is
``diffusion.p_sample_step``; this module draws the noise, loops, records a ``Trajectory``, calls the network.
Also: deterministic DDIM (Song et al. 2021, eta = 0; not in SR3), ``super_resolve`` (raw LR x -> bicubic x_up ->
sample) and a ``cascade`` of x4 stages (the paper's section 4). Images of any size: ``tiling.py``; the search
over inference schedules: ``evaluate.py``.

f_theta is any callable ``f(y_t, x_up, gamma) -> eps``, y_t and x_up ``[B, 3, H, W]`` (the U-Net concatenates
them along channels), gamma ``[B]``. It sees gamma, not t, so any ``Schedule`` works for inference. Every random
number comes from ``generator`` (drawn on its device, then moved): a seed reproduces a sample exactly.
Relies on: diffusion, schedule, resize.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import diffusion as D
from .accel import AUTOCAST, SamplingNet
from .resize import upsample
from .schedule import Schedule, positive_int
from .variance import VARIANCES, reverse_variance

__all__ = ["Trajectory", "Stage", "default_inference_schedule", "sample_loop", "ddim_loop", "super_resolve",
           "residual_scale", "cascade"]


@dataclass
class Trajectory:
    """Snapshots of one sampling run, noisiest first, on the CPU in float32, for figure grids and widgets.
    Snapshot k: step ``t[k]``, ``gamma[k]``, the image ``y_t[k]`` entering that step and the prediction (8)
    ``y0_hat[k]`` made there (clipped if the sampler clips). Stacks are ``[K, B, 3, H, W]``. The last snapshot
    is always t = 0, gamma = 1: the output itself (``y_t[-1]`` equals what the sampler returned)."""
    t: list
    gamma: list
    y_t: torch.Tensor
    y0_hat: torch.Tensor

    def __len__(self) -> int:
        return len(self.t)


@dataclass
class Stage:
    """One x``scale`` stage of a cascade: its network, inference schedule (None: the default) and steps."""
    model: object
    schedule: Schedule | None = None
    steps: int = 100
    scale: int = 4


def default_inference_schedule(steps: int = 100) -> Schedule:
    """SR3's training schedule (linear beta 1e-6 -> 1e-2, T = 2000) respaced to ``steps`` gammas. Chosen over
    the SR3 community's linear 1e-4 -> 0.1 inference schedule because it ends at gamma_T ~ 4.5e-5 (pure noise)
    for every ``steps``, while that one reaches pure noise only near 100 steps (gamma_T = 0.6 at 10 steps)."""
    return Schedule.linear(2000, 1e-6, 1e-2).respaced(steps)


def sample_loop(f_theta, x_up: torch.Tensor, schedule: Schedule, *, generator: torch.Generator | None = None,
                variance: str = "paper", clip: bool = False, y_T: torch.Tensor | None = None,
                return_trajectory: bool = False, trajectory_steps=None, every: int | None = None,
                progress: bool = True, autocast: str | None = None, var_y0=None):
    """Algorithm 2: ancestral sampling of p_theta(y_0 | x), (7) then (10) for t = T..1 (``p_sample_step``).

    x_up ``[B, 3, H, W]``: the LR image already upsampled. Returns y_0 ``[B, 3, H, W]`` (not clamped), or
    ``(y_0, Trajectory)`` with ``return_trajectory``, snapshots at ``trajectory_steps`` (a list of t) or every
    ``every`` steps (default: ~10). ``variance``: "paper" (1 - alpha_t), "posterior" ((4)) or "analytic" (the
    KL-optimal sigma~^2 + c^2 v(gamma) of ``variance.py``, a deviation; ``var_y0``: the network's v). ``clip=False``
    is the paper's (10); ``clip=True`` is the deviation most implementations make: y^_0 of (8) is clamped to
    [-1, 1] and y_{t-1} drawn around the posterior mean (4) at the clamped y^_0 (equal to (9) when nothing is
    clamped); ``clip=(low, high)`` clamps to those bounds (tensors broadcast against y_t: the residual target's
    per-pixel data range). ``y_T`` injects the starting noise; ``autocast="bf16"`` runs only f_theta under autocast."""
    _choice(variance, "variance", VARIANCES)
    if variance == "analytic":
        reverse_variance("analytic", 0.5, 0.5, 0.9, var_y0)               # fails now, not at the first step

    def step(y_t, eps, t, a, g, g_prev, want_y0):
        z = _randn(y_t.shape, generator, y_t.device) if t > 1 else None   # z = 0 at the last step (t = 1)
        if clip is False and variance != "analytic":
            y0_hat = D.predict_y0(y_t, eps, g) if want_y0 else None        # (8), for the trajectory only
            return D.p_sample_step(y_t, eps, a, g, g_prev, z, variance), y0_hat  # (10)
        y0_hat = D.predict_y0(y_t, eps, g)                                 # (8)
        y0_hat = y0_hat if clip is False else _clamp(y0_hat, clip)         # clamped to the data range
        mean, var_post = D.posterior(y0_hat, y_t, a, g, g_prev)            # (4) at the (clamped) y^_0
        if z is None:
            return mean, y0_hat
        if variance == "analytic":                                         # sigma~^2 + c^2 v(gamma_t)
            return mean + math.sqrt(reverse_variance(variance, a, g, g_prev, var_y0)) * z, y0_hat
        var = var_post if variance == "posterior" else 1 - a               # (10): sigma_t^2 = 1 - alpha_t
        return mean + torch.as_tensor(var, dtype=y_t.dtype).sqrt() * z, y0_hat

    return _refine(f_theta, x_up, schedule, step, generator, y_T, return_trajectory, trajectory_steps, every,
                   progress, autocast, "SR3 (DDPM)")


def ddim_loop(f_theta, x_up: torch.Tensor, schedule: Schedule, *, generator: torch.Generator | None = None,
              clip: bool = False, y_T: torch.Tensor | None = None, return_trajectory: bool = False,
              trajectory_steps=None, every: int | None = None, progress: bool = True,
              autocast: str | None = None):
    """Deterministic DDIM sampling (Song, Meng & Ermon 2021, eta = 0); an extra, not part of SR3.
    Each step predicts y^_0 by (8) and jumps to gamma_{t-1} along the predicted noise, (5) with eps = eps^.
    Only y_T is random (from ``generator``, or given); the rest is a deterministic function of y_T and x.
    Arguments and return value as ``sample_loop``."""
    def step(y_t, eps, t, a, g, g_prev, want_y0):
        y0_hat = D.predict_y0(y_t, eps, g)                                  # (8)
        if clip is not False:
            y0_hat = _clamp(y0_hat, clip)
        # DDIM (eta = 0) = (5) at gamma_{t-1}: y_{t-1} = sqrt(gamma_{t-1}) y^_0 + sqrt(1 - gamma_{t-1}) eps^
        return D.q_sample(y0_hat, g_prev, eps), y0_hat

    return _refine(f_theta, x_up, schedule, step, generator, y_T, return_trajectory, trajectory_steps, every,
                   progress, autocast, "DDIM")


def super_resolve(model, x: torch.Tensor, schedule: Schedule | None = None, steps: int = 100,
                  generator: torch.Generator | None = None, variance: str = "posterior", clip: bool = True,
                  sampler: str = "ddpm", return_trajectory: bool = False, progress: bool = True,
                  autocast: str | None = None, scale: int = 4, compile=False, var_y0=None, **trajectory_kw):
    """Super-resolve a raw LR batch ``x`` ``[B, 3, h, w]`` in [-1, 1] -> ``[B, 3, scale*h, scale*w]`` in [-1, 1].

    x_up = ``resize.upsample(x, scale)`` conditions ``sample_loop`` (``sampler="ddpm"``, Algorithm 2) or
    ``ddim_loop``. ``schedule=None``: ``default_inference_schedule(steps)``; a given schedule is used as is
    (e.g. ``train_schedule.respaced(50)``). ``variance="posterior"`` here, a named deviation (``"paper"``, the
    1 - alpha_t of (10), is one argument away): on a respaced schedule the paper's variance adds 4x the posterior's
    at the last random step, and that noise stays in the output as grain; measured on the bundled model over three
    seeds, the posterior gives higher PSNR, SSIM and consistency on both held-out sets (data/MODEL_CARD.md,
    notebook 07 section 5). ``variance="analytic"``: the KL-optimal variance of ``variance.py`` with the
    network's v(gamma) (``var_y0``, default ``model.var_y0``, attached by ``load_pretrained``).
    ``clip=True`` here, unlike ``sample_loop``: clamping y^_0 keeps a
    small, briefly trained model in range, which is why most SR3 implementations do it; ``clip=False`` is the
    paper's (10). A model with the residual target (``UNetConfig.target``, a deviation) samples r and returns
    x_up + scale r, with y^_0 clamped so that the image stays in [-1, 1]; its trajectory is shown in image
    space. The output (and the trajectory's last snapshot) is clamped to [-1, 1]. The model runs in eval
    mode (restored after) on its own device, in its memory format, compiled if ``compile`` (True, or "auto": on
    CUDA only; then as CUDA graphs), see ``accel.SamplingNet``; the result comes back on x's. ``trajectory_kw``:
    ``trajectory_steps``, ``every``, ``y_T``, passed to the loop."""
    steps = positive_int(steps, "steps")
    _choice(sampler, "sampler", ("ddpm", "ddim"))
    _choice(variance, "variance", VARIANCES)
    var_y0 = var_y0 if var_y0 is not None else getattr(model, "var_y0", None)
    _check_image(x)
    x_up = upsample(x, scale)
    H, W = x_up.shape[-2:]
    multiple = getattr(model, "multiple", 1)
    if H % multiple or W % multiple:
        raise ValueError(f"the upsampled size {H}x{W} must be a multiple of model.multiple={multiple}; "
                         f"pad x to a multiple of {multiple}/{scale} first")
    schedule = default_inference_schedule(steps) if schedule is None else schedule
    params = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    x_up = x_up.to(params.device) if params is not None else x_up
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()   # dropout off: a sample depends only on x and the generator
    kw = dict(generator=generator, clip=clip, return_trajectory=return_trajectory, progress=progress,
              autocast=autocast, **trajectory_kw)
    s = residual_scale(model)
    if s is not None and clip:   # residual target: y^_0 is clamped so that x_up + s y^_0 stays in [-1, 1]
        kw["clip"] = ((-1 - x_up) / s, (1 - x_up) / s)
    try:
        if sampler == "ddpm":
            out = sample_loop(SamplingNet(model, x_up.device, compile), x_up, schedule, variance=variance,
                              var_y0=var_y0, **kw)
        else:
            out = ddim_loop(SamplingNet(model, x_up.device, compile), x_up, schedule, **kw)
    finally:
        if was_training:
            model.train()
    y, traj = out if return_trajectory else (out, None)
    if not torch.isfinite(y).all():   # rather than black pixels: clamp would turn inf into +-1 and keep NaN
        raise FloatingPointError("the sample is not finite (NaN or inf): the network overflowed; try without "
                                 "autocast, or check the checkpoint")
    if s is not None:            # residual target: back to an image, y = x_up + s r
        y = D.from_residual(y, x_up.to(y.dtype), s)
        if traj is not None:     # the trajectory is shown in image space too: x_up + s y_t, x_up + s y^_0
            up = x_up.float().cpu()
            traj.y_t, traj.y0_hat = up + s * traj.y_t, up + s * traj.y0_hat
    y = y.clamp(-1, 1).to(x.device)
    if traj is None:
        return y
    traj.y_t[-1] = traj.y0_hat[-1] = y.detach().float().cpu()
    return y, traj


def _check_image(x) -> None:
    """An LR batch [B, 3, h, w] of floats in [-1, 1], finite: what every image of sr3_mini is."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be an LR batch [B, 3, h, w], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float image in [-1, 1], got dtype {x.dtype} (for uint8 0..255 pixels, "
                         "use data.from_uint8)")
    if not torch.isfinite(x).all():
        raise ValueError("x holds NaN or inf values")
    low, high = x.min().item(), x.max().item()
    if low < -1.01 or high > 1.01:                              # 0.01: room for an unclamped bicubic overshoot
        raise ValueError(f"x must lie in [-1, 1], got values in [{low:.4g}, {high:.4g}] (0..255 pixels: "
                         "v / 127.5 - 1; 0..1: 2 v - 1)")
    if low >= 0 and high > 0.5:
        warnings.warn(f"x lies in [{low:.3g}, {high:.3g}]: is it a 0..1 image? sr3_mini images are in [-1, 1] "
                      "(map with 2 v - 1)", stacklevel=3)


def residual_scale(model) -> float | None:
    """The network's residual scale when it predicts the residual target (UNetConfig.target), else None."""
    config = getattr(model, "config", None)
    return float(config.residual_scale) if getattr(config, "target", "y") == "residual" else None


def cascade(stages, x: torch.Tensor, generator: torch.Generator | None = None, return_all: bool = False,
            **kwargs):
    """Chain ``Stage``s (the paper's 64 -> 256 -> 1024 cascade, section 4): each output is the next LR input.
    ``kwargs`` go to every ``super_resolve`` (variance, clip, sampler, progress, autocast); one generator feeds
    all stages. Returns the final image, or every stage's output with ``return_all``."""
    stages = list(stages)
    if not stages:
        raise ValueError("a cascade needs at least one stage")
    if "return_trajectory" in kwargs:
        raise ValueError("cascade does not return trajectories; call super_resolve per stage for those")
    outputs = []
    for stage in stages:
        x = super_resolve(stage.model, x, schedule=stage.schedule, steps=stage.steps, generator=generator,
                          scale=stage.scale, **kwargs)
        outputs.append(x)
    return outputs if return_all else x


def _refine(f_theta, x_up, schedule, step, generator, y_T, return_trajectory, trajectory_steps, every,
            progress, autocast, desc):
    """The loop shared by both samplers: y_T, then ``step`` for t = T..1, recording snapshots."""
    if not isinstance(x_up, torch.Tensor) or x_up.ndim != 4:
        raise ValueError(f"x_up must be a [B, C, H, W] tensor, got {getattr(x_up, 'shape', type(x_up))}")
    _choice(autocast, "autocast", [None, *AUTOCAST])
    dtype = torch.float64 if x_up.dtype == torch.float64 else torch.float32   # the equations never run in 16 bit
    x_up = x_up.to(dtype)
    T = schedule.T
    record = _record_steps(T, trajectory_steps, every) if return_trajectory else set()
    snaps = []
    with torch.no_grad():
        if y_T is None:
            y_t = _randn(x_up.shape, generator, x_up.device).to(dtype)         # (7): y_T ~ N(0, I)
        elif y_T.shape != x_up.shape:
            raise ValueError(f"y_T must have the shape of x_up {tuple(x_up.shape)}, got {tuple(y_T.shape)}")
        else:
            y_t = y_T.to(x_up.device, dtype)
        bar = {} if progress else {"disable": True}                 # when on, tqdm still obeys TQDM_DISABLE
        for t in tqdm(range(T, 0, -1), desc=desc, leave=False, **bar):
            a, g, g_prev = schedule.alpha(t).item(), schedule.gamma(t).item(), schedule.gamma(t - 1).item()
            eps = _f_theta(f_theta, y_t, x_up, g, autocast)
            y_prev, y0_hat = step(y_t, eps, t, a, g, g_prev, t in record)
            if t in record:
                snaps.append((t, g, y_t.float().cpu(), y0_hat.float().cpu()))
            y_t = y_prev
    if not return_trajectory:
        return y_t
    snaps.append((0, 1.0, y_t.float().cpu(), y_t.float().cpu()))
    ts, gs, ys, y0s = zip(*snaps)
    return y_t, Trajectory(list(ts), list(gs), torch.stack(ys), torch.stack(y0s))


def _f_theta(f_theta, y_t, x_up, gamma_t: float, autocast):
    """eps^ = f_theta(x, y_t, gamma_t) with gamma as a [B] tensor; the network alone may run under autocast."""
    gamma = torch.full((y_t.shape[0],), gamma_t, dtype=y_t.dtype, device=y_t.device)
    ctx = torch.autocast(y_t.device.type, dtype=AUTOCAST[autocast]) if autocast else contextlib.nullcontext()
    with ctx:
        eps = f_theta(y_t, x_up, gamma)
    return eps.to(y_t.dtype)


def _randn(shape, generator, device):
    """N(0, I) from ``generator`` on its own device, then moved: a CPU generator gives a CUDA run the same noise."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


def _record_steps(T: int, trajectory_steps, every) -> set:
    if trajectory_steps is not None:
        steps = {int(t) for t in trajectory_steps}
        if any(t < 0 or t > T for t in steps):
            raise ValueError(f"trajectory_steps must lie in 0..T = 0..{T}, got {sorted(steps)}")
        return steps
    every = max(1, T // 10) if every is None else positive_int(every, "every")
    return set(range(T, 0, -every))


def _clamp(y0_hat: torch.Tensor, clip) -> torch.Tensor:
    """y^_0 clamped to [-1, 1] (clip=True) or to per-pixel bounds (clip=(low, high))."""
    return y0_hat.clamp(-1, 1) if clip is True else y0_hat.clamp(*clip)


def _choice(v, name: str, choices) -> None:
    if v not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {v!r}")
