"""Algorithm 2 of SR3, inference by iterative refinement: equations (7)-(10) of ``notebooks/EQUATIONS.md``.

Saharia et al., "Image Super-Resolution via Iterative Refinement" (2021), section 2.3:

    y_T ~ N(0, I)                                                                             (7)
    for t = T, ..., 1:
        z ~ N(0, I) if t > 1, else z = 0
        y_{t-1} = 1/sqrt(alpha_t) (y_t - (1 - alpha_t)/sqrt(1 - gamma_t) f_theta(x, y_t, gamma_t)) + sigma_t z   (10)
    return y_0

with sigma_t^2 = 1 - alpha_t as in the paper, or the posterior variance of (4) (``super_resolve``'s default, a
named deviation: see its docstring). ``refine`` is that loop for any step function; the steps are data,
``SAMPLERS``: ``"ddpm"`` (``ddpm_step``, the step above, ``diffusion.p_sample_step``), ``"ddim"``
(``ddim_step``, deterministic DDIM, Song et al. 2021, eta = 0; not in SR3) and ``"dpm2m"`` (``dpm2m_step``,
DPM-Solver++(2M): the same ODE as DDIM, to second order; not in SR3). A new sampler is one function with
the signature of ``Step`` and one entry in ``SAMPLERS``. Also: ``super_resolve`` (raw LR x -> bicubic x_up ->
sample, in the network's variable: ``unet.target_of``), the regression baseline's one pass
(``regression_predict``) and a ``cascade`` of x4 stages (the paper's section 4). Images of any size:
``tiling.py``; scoring and the search over inference schedules: ``evaluate.py``.

f_theta is any callable ``f(y_t, x_up, gamma) -> eps``, y_t and x_up ``[B, 3, H, W]`` (the U-Net concatenates
them along channels), gamma ``[B]``. It sees gamma, not t, so any ``Schedule`` works for inference. Every random
number comes from ``generator`` (drawn on its device, then moved): a seed reproduces a sample exactly.
Relies on: diffusion, schedule, resize, unet (``target_of``), accel, variance, cond_aug.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import cond_aug, diffusion as D
from .accel import AUTOCAST, SamplingNet
from .resize import keep_grey, upsample
from .schedule import Schedule, positive_int
from .unet import WRAPPED, target_of
from .variance import VARIANCES, require_var_y0, reverse_variance

__all__ = ["Trajectory", "Stage", "Step", "ddpm_step", "ddim_step", "dpm2m_step", "SAMPLERS", "refine",
           "default_inference_schedule", "sample_loop", "ddim_loop", "super_resolve", "LR_OVERSHOOT",
           "REGRESSION_GAMMA", "regression_predict", "cascade"]

# super_resolve clamps LR values up to this beyond [-1, 1]: resampling overshoots at edges (bicubic, antialias:
# [-1.07, 1.14] on the held-out photos). Further out (0..255 pixels) it refuses
LR_OVERSHOOT = 0.25


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
    """One x``scale`` stage of a cascade: network, inference schedule (None: default), steps, corruption of x."""
    model: object
    schedule: Schedule | None = None
    steps: int = 100
    scale: int = 4
    cond_noise: float = 0.0
    cond_blur: float = 0.0


def default_inference_schedule(steps: int = 100) -> Schedule:
    """SR3's training schedule (linear beta 1e-6 -> 1e-2, T = 2000) respaced to ``steps`` gammas. Chosen over
    the SR3 community's linear 1e-4 -> 0.1 inference schedule because it ends at gamma_T ~ 4.5e-5 (pure noise)
    for every ``steps``, while that one reaches pure noise only near 100 steps (gamma_T = 0.6 at 10 steps)."""
    return Schedule.linear(2000, 1e-6, 1e-2).respaced(steps)


@dataclass
class Step:
    """What a step function is told about the step from t to t - 1. Every sampler is one function

        step(y_t, eps_hat, k: Step) -> (y_{t-1}, y^_0)

    with y_t, eps_hat = f_theta(x, y_t, gamma_t) and y_{t-1} ``[B, C, H, W]``; y^_0 is the prediction (8) the step
    made (clamped if it clamps), or None when ``want_y0`` is False. ``eps_hat`` belongs to the step: it may keep
    it in ``memory`` (a multistep solver does), since ``refine`` hands out a new tensor every step."""
    t: int                  # T, ..., 1
    alpha: float            # alpha_t
    gamma: float            # gamma_t
    gamma_prev: float       # gamma_{t-1} (1 at t = 1)
    clip: tuple | None      # (low, high) for y^_0: numbers or tensors that broadcast against y_t; None: no clamp
    variance: str           # sigma_t^2 of (10) for a stochastic step: "paper", "posterior" or "analytic"
    var_y0: object          # v(gamma), for "analytic" (variance.py)
    want_y0: bool           # the trajectory records y^_0 at this step
    noise: Callable         # noise() -> z ~ N(0, I) shaped like y_t, from the run's generator
    memory: dict            # one per run, empty at t = T: what a multistep sampler keeps between its steps


def ddpm_step(y_t: torch.Tensor, eps: torch.Tensor, k: Step):
    """Algorithm 2's step: y_{t-1} = mu_theta + sigma_t z, (10), with z = 0 at t = 1 (``p_sample_step``).
    ``k.clip`` (a deviation most implementations make) clamps y^_0 of (8) and draws y_{t-1} around the posterior
    mean (4) at the clamped y^_0 (equal to (9) when nothing is clamped). ``k.variance``: "paper" (1 - alpha_t),
    "posterior" ((4)) or "analytic" (sigma~^2 + c^2 v(gamma), ``variance.py``, a deviation)."""
    z = k.noise() if k.t > 1 else None                                    # z = 0 at the last step (t = 1)
    if k.clip is None and k.variance != "analytic":
        y0_hat = D.predict_y0(y_t, eps, k.gamma) if k.want_y0 else None     # (8), for the trajectory only
        return D.p_sample_step(y_t, eps, k.alpha, k.gamma, k.gamma_prev, z, k.variance), y0_hat  # (10)
    y0_hat = D.predict_y0(y_t, eps, k.gamma)                              # (8)
    y0_hat = y0_hat if k.clip is None else y0_hat.clamp(*k.clip)          # clamped to the data range
    mean, var_post = D.posterior(y0_hat, y_t, k.alpha, k.gamma, k.gamma_prev)   # (4) at the (clamped) y^_0
    if z is None:
        return mean, y0_hat
    if k.variance == "analytic":                                          # sigma~^2 + c^2 v(gamma_t)
        return mean + math.sqrt(reverse_variance("analytic", k.alpha, k.gamma, k.gamma_prev, k.var_y0)) * z, y0_hat
    var = var_post if k.variance == "posterior" else 1 - k.alpha          # (10): sigma_t^2 = 1 - alpha_t
    return mean + torch.as_tensor(var, dtype=y_t.dtype).sqrt() * z, y0_hat


def ddim_step(y_t: torch.Tensor, eps: torch.Tensor, k: Step):
    """Deterministic DDIM (Song, Meng & Ermon 2021, eta = 0); an extra, not part of SR3: y^_0 by (8) (clamped to
    ``k.clip`` if given), then (5) at gamma_{t-1} along the predicted noise. Draws nothing; ignores the variance."""
    y0_hat = D.predict_y0(y_t, eps, k.gamma)                              # (8)
    y0_hat = y0_hat if k.clip is None else y0_hat.clamp(*k.clip)
    # DDIM (eta = 0) = (5) at gamma_{t-1}: y_{t-1} = sqrt(gamma_{t-1}) y^_0 + sqrt(1 - gamma_{t-1}) eps^
    return D.q_sample(y0_hat, k.gamma_prev, eps), y0_hat


def dpm2m_step(y_t: torch.Tensor, eps: torch.Tensor, k: Step):
    """DPM-Solver++(2M) (Lu et al. 2022), an extra, not part of SR3: a second-order multistep solver of the same
    probability-flow ODE that DDIM discretises with Euler's method, one network call per step. In the half
    log-SNR lambda = log(sqrt(gamma) / sqrt(1 - gamma)), with h = lambda_{t-1} - lambda_t, DDIM's step is

        y_{t-1} = sqrt(1 - gamma_{t-1}) / sqrt(1 - gamma_t) y_t + sqrt(gamma_{t-1}) (1 - e^{-h}) D

    with D = y^_0; this solver puts in D the linear extrapolation of the last two y^_0 along lambda,
    D = (1 + 1/(2r)) y^_0 - 1/(2r) y^_0_previous, r = h_previous / h (first and last step: D = y^_0, DDIM)."""
    y0_hat = D.predict_y0(y_t, eps, k.gamma)                              # (8)
    y0_hat = y0_hat if k.clip is None else y0_hat.clamp(*k.clip)
    if k.t == 1:                                                          # to gamma = 1: h = inf, y_0 = y^_0
        return y0_hat, y0_hat
    lam = lambda g: 0.5 * (math.log(g) - math.log1p(-g))                  # half log-SNR
    h = lam(k.gamma_prev) - lam(k.gamma)
    d = y0_hat
    if "y0_hat" in k.memory:                                              # second order from the second step on
        r = k.memory["h"] / h
        d = (1 + 0.5 / r) * y0_hat - (0.5 / r) * k.memory["y0_hat"]
    k.memory.update(y0_hat=y0_hat, h=h)
    y_prev = math.sqrt((1 - k.gamma_prev) / (1 - k.gamma)) * y_t - math.sqrt(k.gamma_prev) * math.expm1(-h) * d
    return y_prev, y0_hat


SAMPLERS = {"ddpm": ddpm_step, "ddim": ddim_step, "dpm2m": dpm2m_step}


def refine(f_theta, x_up: torch.Tensor, schedule: Schedule, step="ddpm", *, generator: torch.Generator | None = None,
           clip=False, variance: str = "paper", var_y0=None, y_T: torch.Tensor | None = None,
           return_trajectory: bool = False, trajectory_steps=None, every: int | None = None, progress: bool = True,
           autocast: str | None = None):
    """Iterative refinement with any step: y_T ~ N(0, I) (7), then for t = T..1 eps^ = f_theta(x, y_t, gamma_t)
    and ``step(y_t, eps^, Step(...))`` -> y_{t-1} (see ``Step``). ``step``: a name in ``SAMPLERS`` or a function.

    x_up ``[B, 3, H, W]``: the LR image already upsampled. Returns y_0 ``[B, 3, H, W]`` (not clamped), or
    ``(y_0, Trajectory)`` with ``return_trajectory``, snapshots at ``trajectory_steps`` (a list of t) or every
    ``every`` steps (default: ~10). All in the variable f_theta was trained on (``super_resolve`` changes it).
    ``clip``: False (the paper's (8)), True (y^_0 clamped to [-1, 1]) or ``(low, high)`` (numbers or tensors
    that broadcast against y_t, e.g. the residual target's per-pixel range). ``variance``, ``var_y0``: of (10),
    for the steps that draw (``ddpm_step``). ``y_T`` injects the starting noise; ``autocast="bf16"`` runs only
    f_theta under autocast: the equations run in float32 (float64 for a float64 x_up)."""
    if not isinstance(x_up, torch.Tensor) or x_up.ndim != 4:
        raise ValueError(f"x_up must be a [B, C, H, W] tensor, got {getattr(x_up, 'shape', type(x_up))}")
    desc = step if isinstance(step, str) else getattr(step, "__name__", "refine")   # the progress bar's label
    if isinstance(step, str):
        _choice(step, "sampler", SAMPLERS)
        step = SAMPLERS[step]
    _choice(variance, "variance", VARIANCES)
    if variance == "analytic":
        require_var_y0(var_y0)                                             # now, not at the first step
    _choice(autocast, "autocast", [None, *AUTOCAST])
    clip = None if clip is False or clip is None else (-1.0, 1.0) if clip is True else tuple(clip)
    if clip is not None and len(clip) != 2:
        raise ValueError(f"clip must be False, True or (low, high), got {len(clip)} values")
    dtype = torch.float64 if x_up.dtype == torch.float64 else torch.float32   # the equations never run in 16 bit
    x_up = x_up.to(dtype)
    T = schedule.T
    record = _record_steps(T, trajectory_steps, every) if return_trajectory else set()
    snaps, memory = [], {}
    noise = lambda: _randn(x_up.shape, generator, x_up.device)              # noqa: E731  (y_t's shape and device)
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
            y_prev, y0_hat = step(y_t, eps, Step(t, a, g, g_prev, clip, variance, var_y0, t in record, noise, memory))
            if t in record:
                snaps.append((t, g, y_t.float().cpu(), y0_hat.float().cpu()))
            y_t = y_prev
    if not return_trajectory:
        return y_t
    snaps.append((0, 1.0, y_t.float().cpu(), y_t.float().cpu()))
    ts, gs, ys, y0s = zip(*snaps)
    return y_t, Trajectory(list(ts), list(gs), torch.stack(ys), torch.stack(y0s))


def sample_loop(f_theta, x_up: torch.Tensor, schedule: Schedule, **kwargs):
    """Algorithm 2: ancestral sampling of p_theta(y_0 | x), (7) then (10) for t = T..1: ``refine`` with
    ``ddpm_step``. Keyword arguments as ``refine`` (variance "paper" and clip=False, the paper's, by default)."""
    return refine(f_theta, x_up, schedule, "ddpm", **kwargs)


def ddim_loop(f_theta, x_up: torch.Tensor, schedule: Schedule, **kwargs):
    """Deterministic DDIM sampling (eta = 0, not part of SR3): ``refine`` with ``ddim_step``. Only y_T is random
    (from ``generator``, or given); the rest is a deterministic function of y_T and x. Keywords as ``refine``."""
    return refine(f_theta, x_up, schedule, "ddim", **kwargs)


def super_resolve(model, x: torch.Tensor, schedule: Schedule | None = None, steps: int = 100,
                  generator: torch.Generator | None = None, variance: str = "posterior", clip=True,
                  sampler: str = "ddpm", return_trajectory: bool = False, progress: bool = True,
                  autocast: str | None = None, scale: int | None = None, compile=False, var_y0=None,
                  cond_noise: float = 0.0, cond_blur: float = 0.0, **trajectory_kw):
    """Super-resolve a raw LR batch ``x`` ``[B, 3, h, w]`` in [-1, 1] -> ``[B, 3, scale*h, scale*w]`` in [-1, 1].

    ``x``: float32 or float64; values up to LR_OVERSHOOT beyond [-1, 1] are clamped. ``scale``: the model's own
    (``model.scale``, from ``load_model``; else 4); another raises. A greyscale x (three equal channels, as
    ``data.load_image`` makes of an L file) comes back greyscale: the output's channels are set to their mean.

    x_up = ``resize.upsample(x, scale)`` conditions ``refine`` with the step ``SAMPLERS[sampler]`` ("ddpm",
    Algorithm 2, or "ddim"). ``schedule=None``: ``default_inference_schedule(steps)``; a given schedule is used as
    is (e.g. ``train_schedule.respaced(50)``). ``variance="posterior"`` here, a named deviation (``"paper"``, the
    1 - alpha_t of (10), is one argument away): on a respaced schedule the paper's variance adds 4x the posterior's
    at the last random step, and that noise stays in the output as grain; measured on the bundled model over three
    seeds, the posterior gives higher PSNR, SSIM and consistency on both held-out sets (data/MODEL_CARD.md,
    notebook 07 section 5). ``variance="analytic"``: the KL-optimal variance of ``variance.py`` with the
    network's v(gamma) (``var_y0``, default ``model.var_y0``, attached by ``load_pretrained``).

    The network's variable is ``unet.target_of(model)`` (read through DataParallel, DDP, torch.compile and
    ``tiling.Tiled``; a callable without a config raises): the paper's y, or the residual deviation, sampled as
    r = (y - x_up) / s and returned as x_up + s r; the trajectory is shown in image space either way. ``clip`` is
    in image space: ``True`` (the default here, unlike ``refine``) clamps y^_0 so that the image stays in
    [-1, 1], ``(low, high)`` so that it stays in [low, high] (honoured for both targets), ``False`` is the
    paper's (10); clamping keeps a small, briefly trained model in range, which is why most SR3 implementations
    do it. The output (and the trajectory's last snapshot) is clamped to [-1, 1]. The model runs in eval mode
    (restored after) on its own device, in its memory format, compiled if ``compile`` (True, or "auto": on CUDA
    only; then as CUDA graphs), see ``accel.SamplingNet``; the result comes back on x's. ``cond_noise``,
    ``cond_blur``: x blurred, plus s eps (drawn first), conditions the network (``cond_aug.corrupt``; a deviation).
    ``trajectory_kw``: ``trajectory_steps``, ``every``, ``y_T``, passed to ``refine``."""
    steps = positive_int(steps, "steps")
    _choice(sampler, "sampler", SAMPLERS)
    _choice(variance, "variance", VARIANCES)
    target = target_of(model)
    var_y0 = var_y0 if var_y0 is not None else getattr(model, "var_y0", None)
    scale = _check_scale(model, scale)
    _check_image(x)
    x = x.clamp(-1, 1)                                    # the overshoot of resampling (LR_OVERSHOOT)
    x_up = upsample(cond_aug.corrupt(x, cond_noise, generator, cond_blur), scale)    # both 0: x itself
    H, W = x_up.shape[-2:]
    multiple = getattr(model, "multiple", 1)
    if H % multiple or W % multiple:
        raise ValueError(f"the upsampled size {H}x{W} must be a multiple of model.multiple={multiple}; "
                         f"pad x to a multiple of {multiple}/{scale} first")
    schedule = default_inference_schedule(steps) if schedule is None else schedule
    params = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    x_up = x_up.to(params.device) if params is not None else x_up
    if clip is not False and clip is not None:   # image-space bounds -> bounds of the network's y^_0
        clip = target.bounds(x_up, *((-1.0, 1.0) if clip is True else clip))
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()   # dropout off: a sample depends only on x and the generator
    try:
        out = refine(SamplingNet(model, x_up.device, compile), x_up, schedule, sampler, generator=generator,
                     clip=clip, variance=variance, var_y0=var_y0, return_trajectory=return_trajectory,
                     progress=progress, autocast=autocast, **trajectory_kw)
    finally:
        if was_training:
            model.train()
    y, traj = out if return_trajectory else (out, None)
    if not torch.isfinite(y).all():   # rather than black pixels: clamp would turn inf into +-1 and keep NaN
        raise FloatingPointError("the sample is not finite (NaN or inf): the network overflowed; try without "
                                 "autocast, or check the checkpoint")
    y = target.decode(y, x_up.to(y.dtype)).clamp(-1, 1).to(x.device)     # the residual target: y = x_up + s r
    y = keep_grey(x, y)                                                   # greyscale stays grey
    if traj is None:
        return y
    up = x_up.float().cpu().expand_as(traj.y_t)                           # the trajectory in image space too
    traj.y_t, traj.y0_hat = target.decode(traj.y_t, up), target.decode(traj.y0_hat, up)
    traj.y_t[-1] = traj.y0_hat[-1] = y.detach().float().cpu()
    return y, traj


# The regression baseline (the paper's section 4) shares the U-Net and its signature f_theta(y_t, x_up, gamma): it is
# always fed y_t = 0 and this constant gamma (1 = "no noise": (5) at gamma = 1 is y_0 itself), and its output is
# y_0, in the network's variable (``target_of``).
REGRESSION_GAMMA = 1.0


def regression_predict(model, x_up: torch.Tensor) -> torch.Tensor:
    """The regression baseline's prediction of y from the upsampled input ``x_up`` [B, 3, H, W]: one forward
    pass with y_t = 0 and gamma = REGRESSION_GAMMA, decoded by ``target_of(model)`` (x_up + scale F for the
    residual target; wrappers are read through). Returns [B, 3, H, W] (unclamped)."""
    target = target_of(model)
    y_t = torch.zeros_like(x_up)
    gamma = torch.full((x_up.shape[0],), REGRESSION_GAMMA, device=x_up.device, dtype=x_up.dtype)
    return target.decode(model(y_t, x_up, gamma), x_up)


def _check_scale(model, scale) -> int:
    """``scale``, or the model's own (``.scale``, read through ``unet.WRAPPED``) when None, else 4. Another than
    the model's raises: a x4 network asked for x3 would return a x3 image quietly."""
    own, m = None, model
    for _ in range(8):                                    # wrappers of wrappers, never a cycle
        own = own or (m.scale if isinstance(getattr(m, "scale", None), int) else None)
        m = next((getattr(m, a) for a in WRAPPED if getattr(m, a, None) is not None), m)
    scale = (own or 4) if scale is None else positive_int(scale, "scale")
    if own is not None and scale != own:
        raise ValueError(f"the model was trained for x{own}, not scale={scale}; leave scale out to use its own")
    return scale


def _check_image(x) -> None:
    """An LR batch [B, 3, h, w] of floats in [-1, 1] (up to LR_OVERSHOOT beyond), finite, not empty."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be an LR batch [B, 3, h, w], got {shape}")
    if x.numel() == 0:
        raise ValueError(f"x is empty: {tuple(x.shape)}; super_resolve needs at least one image of at least 1 x 1")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float image in [-1, 1], got dtype {x.dtype} (for uint8 0..255 pixels, "
                         "use data.from_uint8)")
    if not torch.isfinite(x).all():
        raise ValueError("x holds NaN or inf values")
    low, high = x.min().item(), x.max().item()
    if low < -1 - LR_OVERSHOOT or high > 1 + LR_OVERSHOOT:
        raise ValueError(f"x must lie in [-1, 1] (resampling's overshoot up to {LR_OVERSHOOT:g} beyond is clamped), "
                         f"got values in [{low:.4g}, {high:.4g}] (0..255 pixels: v / 127.5 - 1; 0..1: 2 v - 1)")
    if low >= 0 and high > 0.5:
        warnings.warn(f"x lies in [{low:.3g}, {high:.3g}]: is it a 0..1 image? sr3_mini images are in [-1, 1] "
                      "(map with 2 v - 1)", stacklevel=3)


def cascade(stages, x: torch.Tensor, generator: torch.Generator | None = None, return_all: bool = False, **kwargs):
    """Chain ``Stage``s (the paper's 64 -> 256 -> 1024 cascade, section 4): each output is the next LR input.
    ``kwargs`` go to every ``super_resolve`` (variance, clip, sampler, progress, autocast); one generator feeds
    all stages. Returns the final image, or every stage's output with ``return_all``."""
    stages = list(stages)
    if not stages:
        raise ValueError("a cascade needs at least one stage")
    if "return_trajectory" in kwargs:
        raise ValueError("cascade does not return trajectories; call super_resolve per stage for those")
    outputs = []
    for s in stages:
        x = super_resolve(s.model, x, schedule=s.schedule, steps=s.steps, generator=generator, scale=s.scale,
                          cond_noise=s.cond_noise, cond_blur=s.cond_blur, **kwargs)
        outputs.append(x)
    return outputs if return_all else x


def _f_theta(f_theta, y_t, x_up, gamma_t: float, autocast):
    """eps^ = f_theta(x, y_t, gamma_t) with gamma as a [B] tensor; the network alone may run under autocast.
    Always a new tensor: a CUDA graph (or any network reusing its output buffer) overwrites what it returned at
    its next call, and a multistep step keeps eps^ across steps."""
    gamma = torch.full((y_t.shape[0],), gamma_t, dtype=y_t.dtype, device=y_t.device)
    ctx = torch.autocast(y_t.device.type, dtype=AUTOCAST[autocast]) if autocast else contextlib.nullcontext()
    with ctx:
        eps = f_theta(y_t, x_up, gamma)
    return eps.to(y_t.dtype, copy=True)


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


def _choice(v, name: str, choices) -> None:
    if v not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {v!r}")
