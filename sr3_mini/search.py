"""A search over inference schedules, as the paper tuned its own (section 4: "we ... tune the noise schedule
... with FID"); here with the four measures of ``metrics.scores``, which need no extra network. Not an
equation of SR3: a loop of Algorithm 2 (``sample.super_resolve``) over candidate schedules.
Relies on: sample, schedule, metrics. Its figure is ``viz.plot_schedule_search``.
"""
from __future__ import annotations

import torch

from .metrics import scores as measure
from .sample import super_resolve
from .schedule import Schedule

__all__ = ["schedule_search"]

_BETTER = {"psnr": lambda r: -r["psnr"], "ssim": lambda r: -r["ssim"], "consistency": lambda r: r["consistency"],
           "sharpness": lambda r: abs(r["sharpness"] - 1)}


def schedule_search(model, pairs, steps_list, end_list, metric: str = "psnr",
                    generator: torch.Generator | None = None, *, beta_start: float = 1e-4, make_schedule=None,
                    scale: int = 4, **kwargs) -> list:
    """Quality against the number of steps and the schedule's end point.

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
            scores = {"psnr": [], "ssim": [], "consistency": [], "sharpness": []}
            for x, y in batches:
                y_hat = super_resolve(model, x, schedule=schedule, steps=steps, generator=generator,
                                      scale=scale, **kwargs)
                for k, v in measure(y_hat, y.to(y_hat.device), x.to(y_hat.device), scale).items():
                    scores[k].append(v)
            rows.append({"steps": int(steps), "beta_end": float(end), "gamma_T": schedule.gamma(schedule.T).item(),
                         **{k: torch.cat(v).mean().item() for k, v in scores.items()}})
    return sorted(rows, key=_BETTER[metric])


def _as_batches(pairs) -> list:
    pairs = pairs if isinstance(pairs, (tuple, list)) else list(pairs)
    if len(pairs) == 2 and all(isinstance(p, torch.Tensor) and p.ndim == 4 for p in pairs):
        return [tuple(pairs)]                                      # a single (x, y) batch
    return [tuple(p if p.ndim == 4 else p.unsqueeze(0) for p in pair) for pair in pairs]
