"""Classifier-free guidance (Ho & Salimans, 2022): one network that knows x and one that does not, mixed.

Not part of SR3 (the paper conditions on x only by concatenation and never guides); here to compare ways of
conditioning on the toy problem with an exact p(y | x) (``toy.py``, notebook 10 section 7).

Training: with probability p each example's condition is replaced by a *null* condition (``drop_condition``),
so one f_theta learns both E[eps | y_t, x] and E[eps | y_t]. For SR3's concatenated x_up the null condition is
an all-zero x_up: a flat mid-grey image, which is also a possible (if rare) real input; a learned null token would
need a second input and is not used here.

Sampling: the guided prediction, with guidance weight w >= 0 (w = 0: the conditional model alone),

    eps_w(y_t, x, gamma) = (1 + w) eps(y_t, x, gamma) - w eps(y_t, null, gamma)

is eps of the score of p(y_t | x)^(1 + w) / p(y_t)^w = p(y_t) p(x | y_t)^(1 + w): the likelihood of x sharpened,
as if x were measured with less noise. It is handed to any sampler in place of f_theta. Shapes as the
sampler's f: ``y_t [B, C, H, W]``, ``x_up [B, C, H, W]``, ``gamma [B]``.
"""
from __future__ import annotations

import torch

__all__ = ["null_condition", "drop_condition", "guided"]


def null_condition(x_up: torch.Tensor) -> torch.Tensor:
    """The condition that says "no x": zeros shaped like ``x_up``."""
    return torch.zeros_like(x_up)


def drop_condition(x_up: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x_up [B, ...]`` with each example replaced by ``null_condition`` with probability ``p`` (training)."""
    if not 0 <= p <= 1:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    drop = torch.rand(x_up.shape[0], generator=generator, device=generator.device if generator else "cpu")
    drop = (drop < p).to(x_up.device).reshape(-1, *[1] * (x_up.ndim - 1))
    return torch.where(drop, null_condition(x_up), x_up)


def guided(f, w: float, f_unconditional=None):
    """The guided f_theta of the module docstring: ``f(y_t, x_up, gamma)`` conditional, ``f_unconditional``
    (default: ``f`` with ``null_condition(x_up)``) the one without x, ``w`` the guidance weight (>= 0)."""
    if not w >= 0:
        raise ValueError(f"the guidance weight w must be >= 0, got {w!r}")
    f_u = f_unconditional if f_unconditional is not None else (lambda y_t, x_up, g: f(y_t, null_condition(x_up), g))

    def f_w(y_t, x_up, gamma):
        eps_c = f(y_t, x_up, gamma)
        if w == 0:
            return eps_c
        return (1 + w) * eps_c - w * f_u(y_t, x_up, gamma)
    return f_w
