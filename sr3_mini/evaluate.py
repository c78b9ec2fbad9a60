"""Scoring models on held-out (x, y) pairs: the one loop behind ``sr3-mini evaluate``, ``scripts/measure_quality.py``,
``benchmarks/quality.py`` and the search over inference schedules.

Not an equation of SR3 but how its claims are checked (Saharia et al. 2021, section 4): bicubic, the regression
baseline and SR3 super-resolve the same LR inputs x = downsample(y); each output is scored against the photo y by
``metrics`` (PSNR, SSIM, consistency, sharpness, grain). SR3 is drawn once per seed, each image with its own
generator seeded with the seed (so a result does not depend on the other images), and with two seeds or more the
draws also give ``metrics.diversity``: 1 for a sampler of p(y|x), 0 for a predictor of its mean. A metric is
added in ``metrics.py`` and in ``METRICS`` here, and nowhere else.

Relies on: sample (Algorithm 2, the regression baseline's one pass), unet (``target_of``), metrics, data, resize,
schedule.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import metrics as M
from .data import bundled_eval_images, data_dir, load_image, save_image
from .resize import downsample, upsample
from . import diffusion as D
from .sample import regression_predict, super_resolve
from .schedule import Schedule
from .unet import target_of
from .variance import VarianceTable

__all__ = ["METRICS", "Sampler", "held_out", "sr3_draws", "score", "evaluate", "means", "estimate_var_y0",
           "denoiser_calibration",
           "validate",
           "schedule_search"]

# per-image measures of one output, and the measures of a set of draws (need >= 2 seeds)
METRICS = ("psnr", "ssim", "consistency", "sharpness", "grain")
DRAW_METRICS = ("diversity",)


@dataclass(frozen=True)
class Sampler:
    """One setting of ``super_resolve``: the loop (``"ddpm"``, Algorithm 2, or ``"ddim"``), the variance of (10)
    and the number of steps of the model's training schedule respaced."""
    sampler: str = "ddpm"
    variance: str = "posterior"
    steps: int = 100

    @property
    def label(self) -> str:
        if self.sampler == "ddpm":
            return f"DDPM {self.steps} {self.variance}"
        return f"{'DPM-Solver++(2M)' if self.sampler == 'dpm2m' else self.sampler.upper()} {self.steps}"


def held_out(name: str = "eval", size: int | None = None, multiple: int = 16) -> tuple[list, torch.Tensor]:
    """``(names, y)``: the HR photos of a held-out set as ``[N, 3, H, W]`` in [-1, 1]. ``name``: ``"eval"``
    (``data/eval``), ``"other"`` (``data/eval_other``) or a folder of images of one size. ``size``: centre crops
    of that size (cheaper sampling); otherwise each photo is cropped to a multiple of ``multiple``."""
    if name == "eval":
        names, ys = zip(*bundled_eval_images())
    else:
        folder = data_dir() / "eval_other" if name == "other" else Path(name)
        if not folder.is_dir():
            raise ValueError(f"held-out set must be 'eval', 'other' or a folder, got {name!r}")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not paths:
            raise ValueError(f"no .png/.jpg image in {folder}")
        names, ys = [p.name for p in paths], [load_image(p) for p in paths]
    out = []
    for y in ys:
        H, W = y.shape[-2:]
        h, w = (size, size) if size else (H // multiple * multiple, W // multiple * multiple)
        if h > H or w > W or h < multiple:
            raise ValueError(f"a photo of {H}x{W} cannot give a {h}x{w} crop")
        top, left = (H - h) // 2, (W - w) // 2
        out.append(y[:, top:top + h, left:left + w])
    if len({tuple(y.shape) for y in out}) > 1:
        raise ValueError("the photos differ in size: pass size= to take centre crops")
    return list(names), torch.stack(out)


def sr3_draws(model, x: torch.Tensor, setting: Sampler = Sampler(), seeds=(0,), scale: int = 4,
              progress: bool = False, **kwargs) -> torch.Tensor:
    """SR3 samples ``[S, B, 3, H, W]`` for LR ``x`` ``[B, 3, h, w]``: one per seed, each image with its own
    generator seeded with the seed (as ``sr3-mini evaluate --seed`` does). ``kwargs`` go to ``super_resolve``."""
    draws = []
    for seed in seeds:
        draws.append(torch.cat([super_resolve(model, x[i:i + 1], steps=setting.steps, sampler=setting.sampler,
                                              variance=setting.variance, scale=scale, progress=progress,
                                              generator=torch.Generator().manual_seed(int(seed)), **kwargs)
                                for i in range(len(x))]))
    return torch.stack(draws)


def score(outputs: torch.Tensor, y: torch.Tensor, x: torch.Tensor, scale: int = 4) -> dict:
    """Per-image scores ``{metric: [B]}`` of outputs ``[B, 3, H, W]`` or draws ``[S, B, 3, H, W]``: each metric
    of ``METRICS`` averaged over the draws, and ``diversity`` when there are two draws or more."""
    draws = outputs if outputs.ndim == 5 else outputs[None]
    y, x = y.to(draws.device), x.to(draws.device)
    per_draw = [{**M.scores(d, y, x, scale), "grain": M.grain(d, y)} for d in draws]
    out = {k: torch.stack([r[k] for r in per_draw]).mean(dim=0) for k in METRICS}
    if len(draws) >= 2:
        out["diversity"] = M.diversity(draws, y)
    return out


def evaluate(y: torch.Tensor, sr3=None, regression=None, settings=(Sampler(),), seeds=(0,), scale: int = 4,
             names=None, progress=None, **kwargs) -> list:
    """Score bicubic, the regression baseline (if given) and SR3 under each sampler setting (if given) on the
    photos ``y`` ``[N, 3, H, W]``, x = downsample(y). Returns one row per (image, method):
    ``{"image", "method", "setting", metric: value}``; SR3's metrics are means over the seeds, its diversity
    over them. ``progress``: a callable ``(label) -> None`` told before each SR3 setting. ``kwargs`` go to
    ``super_resolve``."""
    names = names or [str(i) for i in range(len(y))]
    x = downsample(y, scale)
    outputs = [("bicubic", "", upsample(x, scale).clamp(-1, 1))]
    if regression is not None:
        with torch.no_grad():
            outputs.append(("regression", "", torch.cat([regression_predict(regression, upsample(x[i:i + 1], scale))
                                                         for i in range(len(x))]).float().clamp(-1, 1)))
    rows = []
    for method, setting, out in outputs:
        rows += _rows(names, method, setting, score(out, y, x, scale))
    for setting in (settings if sr3 is not None else ()):
        if progress:
            progress(setting.label)
        draws = sr3_draws(sr3, x, setting, seeds, scale, **kwargs)
        rows += _rows(names, "SR3", setting.label, score(draws, y, x, scale))
    return rows


def means(rows: list) -> dict:
    """``{(method, setting): {metric: mean over images}}``; NaN entries (grain of an image without a flat
    area) are left out of their mean."""
    groups = {}
    for r in rows:
        groups.setdefault((r["method"], r["setting"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {}
        for k in (*METRICS, *DRAW_METRICS):
            vals = [r[k] for r in rs if k in r and r[k] == r[k]]
            if vals:
                out[key][k] = sum(vals) / len(vals)
    return out


@torch.no_grad()
def estimate_var_y0(model, y: torch.Tensor, scale: int = 4, log_snr=None, repeats: int = 1,
                    generator: torch.Generator | None = None, clip: bool = True, batch: int = 64) -> VarianceTable:
    """Measure v(gamma) = mean E||y_0 - y^_0||^2 of ``model`` on HR crops ``y`` ``[N, 3, H, W]`` (training data,
    never held-out photos): y_t by (5), y^_0 by (8), clamped as ``super_resolve`` clamps it (``clip``). The model's
    own variable: for a residual-target network, y_0 = (y - x_up) / residual_scale. ``log_snr``: the grid
    (default 33 points from -10 to 10, gamma from 4.5e-5 to 0.99995)."""
    grid = [float(v) for v in (log_snr if log_snr is not None else torch.linspace(-10, 10, 33))]
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    target, out = target_of(model), []
    with _eval_mode(model):
        for lam in grid:
            gamma = 1 / (1 + math.exp(-lam))
            err, n = 0.0, 0
            for _ in range(repeats):
                for x_up, y_0, _, y0_hat in _denoised(model, y, gamma, scale, generator, batch):
                    if clip:
                        low, high = target.bounds(x_up)
                        y0_hat = torch.maximum(torch.minimum(y0_hat, torch.as_tensor(high)), torch.as_tensor(low))
                    err += (y0_hat - y_0).double().pow(2).sum().item()
                    n += y_0.numel()
            out.append(err / n)
    return VarianceTable(grid, out)


@torch.no_grad()
def denoiser_calibration(model, y: torch.Tensor, gammas=(0.99, 0.9, 0.7, 0.5, 0.3, 0.1, 0.03, 0.01), scale: int = 4,
                         generator: torch.Generator | None = None, batch: int = 64) -> list:
    """Is the network's y^_0 too smooth? Per noise level gamma, on HR crops ``y`` (training data), in the model's
    own variable (the residual for a residual-target network):

    - ``slope`` = E[y^_0 . y_0] / E[y^_0 . y^_0], and ``slope_hf`` the same on the detail above the LR Nyquist
      frequency (y minus its down- and upsampled self). The posterior mean E[y_0 | y_t, x] has slope 1 exactly
      (y_0 - E[y_0 | y_t, x] is orthogonal to any function of y_t and x); a denoiser that shrinks its estimate,
      as a median does on sparse detail, has slope > 1.
    - ``energy_hf``: the detail energy of y^_0 over that of y_0 (what the denoiser keeps);
    - ``mse`` = mean (y^_0 - y_0)^2 and ``tweedie`` = (1 - gamma)/gamma (1 - mean eps^2): equal for the optimal
      denoiser, ``mse`` > ``tweedie`` when eps^ overshoots.
    Returns one dict per gamma."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    detail = lambda t: t - upsample(downsample(t, scale), scale)
    rows = []
    with _eval_mode(model):
        for gamma in gammas:
            sums = dict(yy=0.0, hh=0.0, dyy=0.0, dhh=0.0, d00=0.0, err=0.0, e2=0.0, n=0)
            for _, y_0, eps_hat, y0_hat in _denoised(model, y, gamma, scale, generator, batch):
                y0_hat, y_0 = y0_hat.double(), y_0.double()
                dh, d0 = detail(y0_hat), detail(y_0)
                sums["yy"] += (y0_hat * y_0).sum().item()
                sums["hh"] += (y0_hat * y0_hat).sum().item()
                sums["dyy"] += (dh * d0).sum().item()
                sums["dhh"] += (dh * dh).sum().item()
                sums["d00"] += (d0 * d0).sum().item()
                sums["err"] += (y0_hat - y_0).pow(2).sum().item()
                sums["e2"] += eps_hat.double().pow(2).sum().item()
                sums["n"] += y_0.numel()
            n = sums["n"]
            rows.append({"gamma": float(gamma), "slope": sums["yy"] / sums["hh"], "slope_hf": sums["dyy"] / sums["dhh"],
                         "energy_hf": sums["dhh"] / sums["d00"], "mse": sums["err"] / n,
                         "tweedie": (1 - gamma) / gamma * (1 - sums["e2"] / n)})
    return rows


@torch.no_grad()
def validate(ema, cfg, y: torch.Tensor, schedule: Schedule, png: Path | None = None) -> dict:
    """Training validation: PSNR of the EMA model (and of bicubic, for reference) and consistency on the held-out
    batch y [V, 3, H, W] in [-1, 1]; ``cfg`` a ``train.TrainConfig`` (kind, scale, val_steps, seed, autocast); sr3
    samples with ``schedule.respaced(cfg.val_steps)`` and a fixed seed.
    Writes a grid to ``png``: columns LR (nearest) | bicubic | output | HR, one row per image (at most 4)."""
    x = downsample(y, cfg.scale)
    x_up = upsample(x, cfg.scale)
    if cfg.kind == "regression":
        y_hat = regression_predict(ema, x_up).float().clamp(-1, 1)
    else:
        y_hat = super_resolve(ema, x, schedule=schedule.respaced(cfg.val_steps), scale=cfg.scale, progress=False,
                              generator=torch.Generator().manual_seed(cfg.seed),
                              autocast=None if cfg.autocast == "none" else cfg.autocast).float()
    metrics = {"val_psnr": M.psnr(y_hat, y).mean().item(), "val_psnr_bicubic": M.psnr(x_up, y).mean().item(),
               "val_consistency": M.consistency(x, y_hat, cfg.scale).mean().item()}
    if png is not None:
        lr = torch.nn.functional.interpolate(x, scale_factor=cfg.scale, mode="nearest")
        save_image(torch.cat([torch.cat(list(t[:4]), dim=1) for t in (lr, x_up, y_hat, y)], dim=2), png)
    return metrics


@contextlib.contextmanager
def _eval_mode(model):
    """The model in eval mode (dropout off) inside the block, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _denoised(model, y: torch.Tensor, gamma: float, scale: int, generator: torch.Generator, batch: int):
    """For each batch of HR crops ``y``: ``(x_up, y_0, eps_hat, y0_hat)`` at noise level ``gamma``, in the
    model's own variable (``target_of(model).encode``): y_t by (5) with eps from ``generator``, y^_0 by (8)."""
    target, device = target_of(model), next(model.parameters()).device
    for i in range(0, len(y), batch):
        y_b = y[i:i + batch].float()
        x_up = upsample(downsample(y_b, scale), scale)
        y_0 = target.encode(y_b, x_up)
        eps = torch.randn(y_0.shape, generator=generator)
        y_t = D.q_sample(y_0, gamma, eps)                                          # (5)
        g = torch.full((len(y_0),), float(gamma))
        eps_hat = model(y_t.to(device), x_up.to(device), g.to(device)).float().cpu()
        yield x_up, y_0, eps_hat, D.predict_y0(y_t, eps_hat, gamma)                # (8)


def _rows(names, method, setting, scores: dict) -> list:
    return [{"image": n, "method": method, "setting": setting, **{k: v[i].item() for k, v in scores.items()}}
            for i, n in enumerate(names)]


_BETTER = {"psnr": lambda r: -r["psnr"], "ssim": lambda r: -r["ssim"], "consistency": lambda r: r["consistency"],
           "sharpness": lambda r: abs(r["sharpness"] - 1)}


def schedule_search(model, pairs, steps_list, end_list, metric: str = "psnr",
                    generator: torch.Generator | None = None, *, beta_start: float = 1e-4, make_schedule=None,
                    scale: int = 4, **kwargs) -> list:
    """Quality against the number of steps and the schedule's end point, as the paper tuned its inference
    schedules (section 4, there by FID; here by the measures of ``score``).

    Cell (steps, end) samples with ``make_schedule(steps, end)``, by default ``Schedule.linear(steps,
    beta_start, end)`` (end = beta_T). ``pairs``: one ``(x [B,3,h,w], y [B,3,H,W])`` batch or an iterable of
    pairs. Every cell starts from the same generator state (seed 0 if none given), so cells differ only by their
    schedule. ``kwargs`` go to ``super_resolve`` (progress defaults to off). Returns one dict per cell,
    ``{steps, beta_end, gamma_T, psnr, ssim, consistency, sharpness}`` (means over all images), best first by
    ``metric`` (sharpness: closest to 1; consistency: lowest)."""
    if metric not in _BETTER:
        raise ValueError(f"metric must be one of {sorted(_BETTER)}, got {metric!r}")
    make_schedule = make_schedule or (lambda steps, end: Schedule.linear(steps, beta_start, end))
    batches = _as_batches(pairs)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    start = generator.get_state()
    kwargs.setdefault("progress", False)
    rows = []
    for steps in steps_list:
        for end in end_list:
            schedule = make_schedule(steps, end)
            generator.set_state(start)
            cell = {k: [] for k in _BETTER}
            for x, y in batches:
                y_hat = super_resolve(model, x, schedule=schedule, steps=steps, generator=generator,
                                      scale=scale, **kwargs)
                s = score(y_hat, y.to(y_hat.device), x.to(y_hat.device), scale)
                for k in cell:
                    cell[k].append(s[k])
            rows.append({"steps": int(steps), "beta_end": float(end), "gamma_T": schedule.gamma(schedule.T).item(),
                         **{k: torch.cat(v).mean().item() for k, v in cell.items()}})
    return sorted(rows, key=_BETTER[metric])


def _as_batches(pairs) -> list:
    pairs = pairs if isinstance(pairs, (tuple, list)) else list(pairs)
    if len(pairs) == 2 and all(isinstance(p, torch.Tensor) and p.ndim == 4 for p in pairs):
        return [tuple(pairs)]                                      # a single (x, y) batch
    return [tuple(p if p.ndim == 4 else p.unsqueeze(0) for p in pair) for pair in pairs]
