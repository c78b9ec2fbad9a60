"""The equations of SR3 as pure functions: (1), (3)-(6), (8)-(10) of ``notebooks/EQUATIONS.md``, and the variable
they act on (``Target``).

Saharia et al., "Image Super-Resolution via Iterative Refinement" (2021), sections 2.1-2.3.

Each function takes exactly the scalars that appear in its equation (alpha_t, gamma_t, gamma_{t-1}), so any
schedule works: ask ``sr3_mini.schedule.Schedule`` for them. Randomness is never drawn here: the caller passes
``noise`` (eps or z), so every number can be checked by hand.

Shapes: images are ``[B, C, H, W]`` (any tensor whose first axis is the batch works). Each scalar is a Python
number, a 0-d tensor, or a per-sample ``[B]`` tensor broadcast over the remaining axes. Coefficients are formed
in the precision of the scalars (float64 for Python numbers and the schedule's tensors) *on the CPU*, then cast
to the image's dtype: no float64 tensor reaches an accelerator (Apple's MPS has no float64). A scalar coefficient
then stays a 0-d CPU tensor, which broadcasts against an image on any device without a host-to-device copy;
per-sample CPU values are moved to the image's device, and values already on an accelerator stay there, in their
own dtype. Inputs are never modified. Ranges are checked on Python numbers and CPU tensors; on an accelerator the
check is skipped, since it would stall the device on every call.

``Target`` is not an equation of the paper: it says what y_0 is. The paper's y_0 is the HR image y
(``Target()``); the residual deviation (``UNetConfig.target = "residual"``, after SRDiff) diffuses
y_0 = (y - x_up) / scale instead. The equations are the same for both; ``unet.target_of(model)`` says which
one a network was trained on, and the trainer, the sampler and the regression baseline change variables with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["q_step", "q_sample", "posterior", "loss", "predict_y0", "p_mean", "p_sample_step", "TARGETS", "Target",
           "to_residual", "from_residual"]


def q_step(y_prev: torch.Tensor, alpha_t, noise: torch.Tensor) -> torch.Tensor:
    """One forward step, equation (1): a draw from q(y_t | y_{t-1}) = N(sqrt(alpha_t) y_{t-1}, (1 - alpha_t) I)."""
    _same_shape(y_prev, noise, "y_prev", "noise")
    a = _coef(alpha_t, y_prev, "alpha_t", low=0, high=1, high_ok=False)
    # (1): y_t = sqrt(alpha_t) y_{t-1} + sqrt(1 - alpha_t) eps
    return _cast(a.sqrt(), y_prev) * y_prev + _cast((1 - a).sqrt(), y_prev) * noise


def q_sample(y_0: torch.Tensor, gamma, noise: torch.Tensor) -> torch.Tensor:
    """Jump straight to noise level gamma, equations (3) and (5): a draw from N(sqrt(gamma) y_0, (1 - gamma) I)."""
    _same_shape(y_0, noise, "y_0", "noise")
    g = _coef(gamma, y_0, "gamma", low=0, high=1, high_ok=True)
    # (5): y~ = sqrt(gamma) y_0 + sqrt(1 - gamma) eps
    return _cast(g.sqrt(), y_0) * y_0 + _cast((1 - g).sqrt(), y_0) * noise


def posterior(y_0: torch.Tensor, y_t: torch.Tensor, alpha_t, gamma_t, gamma_prev):
    """The forward posterior q(y_{t-1} | y_0, y_t) = N(mean, variance I), equation (4).

    Returns ``(mean, variance)``: ``mean`` is shaped like ``y_t``; ``variance`` is a tensor broadcastable to it
    (``[B, 1, 1, 1]`` when a scalar was per-sample, 0-d otherwise).
    """
    _same_shape(y_0, y_t, "y_0", "y_t")
    a, g, g_prev = _reverse_coefs(y_t, alpha_t, gamma_t, gamma_prev)
    # (4): mu = sqrt(gamma_{t-1})(1 - alpha_t)/(1 - gamma_t) y_0 + sqrt(alpha_t)(1 - gamma_{t-1})/(1 - gamma_t) y_t
    c0 = g_prev.sqrt() * (1 - a) / (1 - g)
    ct = a.sqrt() * (1 - g_prev) / (1 - g)
    mean = _cast(c0, y_t) * y_0 + _cast(ct, y_t) * y_t
    # (4): sigma^2 = (1 - gamma_{t-1})(1 - alpha_t)/(1 - gamma_t)
    variance = _cast((1 - g_prev) * (1 - a) / (1 - g), y_t)
    return mean, variance


def loss(eps_pred: torch.Tensor, eps: torch.Tensor, p: int = 1) -> torch.Tensor:
    """The objective (6), || f_theta(x, y~, gamma) - eps ||_p^p, averaged over all elements (a constant
    rescaling of the sum). p = 2 is DDPM's (minimised by the posterior mean); p = 1 by a median (notebook 03)."""
    _same_shape(eps_pred, eps, "eps_pred", "eps")
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    # (6): E || f_theta - eps ||_p^p
    return (eps_pred - eps).abs().pow(p).mean()


def predict_y0(y_t: torch.Tensor, eps: torch.Tensor, gamma_t) -> torch.Tensor:
    """Equation (8), (5) solved for y_0: y^_0 = (y_t - sqrt(1 - gamma_t) eps) / sqrt(gamma_t)."""
    _same_shape(y_t, eps, "y_t", "eps")
    g = _coef(gamma_t, y_t, "gamma_t", low=0, high=1, high_ok=True)
    # (8): y^_0 = 1/sqrt(gamma_t) (y_t - sqrt(1 - gamma_t) f_theta)
    return (y_t - _cast((1 - g).sqrt(), y_t) * eps) * _cast(g.rsqrt(), y_t)


def p_mean(y_t: torch.Tensor, eps: torch.Tensor, alpha_t, gamma_t) -> torch.Tensor:
    """Equation (9): mu_theta = (y_t - (1 - alpha_t)/sqrt(1 - gamma_t) eps) / sqrt(alpha_t), which is the
    posterior mean (4) with y_0 replaced by y^_0 of (8)."""
    _same_shape(y_t, eps, "y_t", "eps")
    a = _coef(alpha_t, y_t, "alpha_t", low=0, high=1, high_ok=False)
    g = _coef(gamma_t, y_t, "gamma_t", low=0, high=1, high_ok=False)
    # (9): mu_theta = 1/sqrt(alpha_t) (y_t - (1 - alpha_t)/sqrt(1 - gamma_t) f_theta)
    return (y_t - _cast((1 - a) / (1 - g).sqrt(), y_t) * eps) * _cast(a.rsqrt(), y_t)


def p_sample_step(y_t: torch.Tensor, eps: torch.Tensor, alpha_t, gamma_t, gamma_prev,
                  noise: torch.Tensor | None, variance: str = "paper") -> torch.Tensor:
    """One step of iterative refinement, equation (10): y_{t-1} = mu_theta + sigma_t z.

    ``variance="paper"``: sigma_t^2 = 1 - alpha_t, as SR3 (and DDPM) use. ``variance="posterior"``: sigma_t^2 is
    the posterior variance of (4). ``noise`` is z ~ N(0, I); the caller passes zeros (or None) at t = 1.
    ``gamma_prev`` (gamma_{t-1}) enters only through the posterior variance, but is checked in both cases.
    """
    if variance not in ("paper", "posterior"):
        raise ValueError(f"variance must be 'paper' or 'posterior', got {variance!r}")
    a, g, g_prev = _reverse_coefs(y_t, alpha_t, gamma_t, gamma_prev)
    mean = p_mean(y_t, eps, a, g)
    if noise is None:
        return mean
    _same_shape(y_t, noise, "y_t", "noise")
    if variance == "paper":
        var = 1 - a                                     # (10): sigma_t^2 = 1 - alpha_t
    else:
        var = (1 - g_prev) * (1 - a) / (1 - g)          # (4): sigma^2 of the posterior
    # (10): y_{t-1} = mu_theta(x, y_t, gamma_t) + sqrt(sigma_t^2) z_t
    return mean + _cast(var.sqrt(), y_t) * noise


# ---- helpers: broadcasting and range checks ---------------------------------------------------------------
def _reverse_coefs(y_t, alpha_t, gamma_t, gamma_prev):
    a = _coef(alpha_t, y_t, "alpha_t", low=0, high=1, high_ok=False)
    g = _coef(gamma_t, y_t, "gamma_t", low=0, high=1, high_ok=False)
    g_prev = _coef(gamma_prev, y_t, "gamma_prev", low=0, high=1, high_ok=True)
    if _checkable(g) and _checkable(g_prev) and bool((g >= g_prev).any()):
        raise ValueError("gamma must decrease with t: need gamma_t < gamma_prev (gamma_{t-1}); got "
                         f"gamma_t={_show(g)}, gamma_prev={_show(g_prev)}")
    return a, g, g_prev


def _coef(v, like: torch.Tensor, name: str, low: float, high: float, high_ok: bool) -> torch.Tensor:
    """A scalar or per-sample [B] value as a tensor broadcastable against ``like`` ([B, ...]), range-checked."""
    if isinstance(v, torch.Tensor):
        t = v.detach() if not v.requires_grad else v
        if not t.is_floating_point():
            t = t.to(torch.float64 if t.device.type == "cpu" else torch.float32)
    else:
        try:
            t = torch.tensor(float(v), dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or a tensor, got {type(v).__name__}") from None
    if t.ndim == 1 and like.ndim >= 1:
        if t.shape[0] not in (1, like.shape[0]):
            raise ValueError(f"{name} has {t.shape[0]} values but the batch has {like.shape[0]} samples; "
                             "give a scalar or one value per sample")
        t = t.reshape(t.shape[0], *([1] * (like.ndim - 1)))
    elif t.ndim > 1 and not (t.ndim == like.ndim and t.shape[0] in (1, like.shape[0])
                             and all(d == 1 for d in t.shape[1:])):  # already broadcast, [B, 1, 1, 1]
        raise ValueError(f"{name} must be a scalar or a per-sample [B] tensor, got shape {tuple(t.shape)}")
    if _checkable(t):
        bad = ~torch.isfinite(t) | (t <= low) | ((t > high) if high_ok else (t >= high))
        if bool(bad.any()):
            rng = f"({low:g}, {high:g}]" if high_ok else f"({low:g}, {high:g})"
            raise ValueError(f"{name} must lie in {rng}; got {_show(t)}")
    return t


def _checkable(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not t.requires_grad


def _cast(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A coefficient in the image's dtype, ready to broadcast against ``like``. A 0-d coefficient stays on the
    CPU: PyTorch hands a 0-d CPU tensor to an accelerator's kernel as a scalar argument, so the sampler's
    per-step coefficients (Python numbers) cost no host-to-device copy, which would synchronise the stream every
    step. Per-sample values go to ``like``'s device (where the trainer's gamma already is). The dtype first: a
    float64 value is rounded on the CPU, once, and never reaches an accelerator."""
    dtype = like.dtype if like.is_floating_point() else c.dtype if like.device.type == "cpu" else torch.float32
    c = c.to(dtype)
    return c if c.ndim == 0 and c.device.type == "cpu" else c.to(like.device)


def _show(t: torch.Tensor) -> str:
    flat = t.reshape(-1)
    return f"{flat.item():.6g}" if flat.numel() == 1 else f"values in [{flat.min().item():.6g}, {flat.max().item():.6g}]"


def _same_shape(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError(f"{na} and {nb} must be tensors")
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")


# Not equations of the paper: the residual target (UNetConfig.target = "residual", a named deviation after SRDiff).
# The equations above then describe r = (y - x_up) / scale instead of y; these two functions change variables.
def to_residual(y: torch.Tensor, x_up: torch.Tensor, scale: float) -> torch.Tensor:
    """r = (y - x_up) / scale: the detail that bicubic upsampling of x misses, scaled to an image's spread."""
    _same_shape(y, x_up, "y", "x_up")
    return (y - x_up) / scale


def from_residual(r: torch.Tensor, x_up: torch.Tensor, scale: float) -> torch.Tensor:
    """y = x_up + scale * r, the inverse of ``to_residual``."""
    _same_shape(r, x_up, "r", "x_up")
    return x_up + scale * r


TARGETS = ("y", "residual")


@dataclass(frozen=True)
class Target:
    """What y_0 of the equations is, for images y and upsampled LR inputs x_up ``[B, 3, H, W]``.

    ``Target()`` or ``Target("y")``: the paper's, y_0 = y; every method is the identity. ``Target("residual",
    scale)``: the deviation, y_0 = (y - x_up) / scale (``to_residual``; ``scale`` is ignored for "y").
    ``encode(y, x_up)`` -> y_0; ``decode(y_0, x_up)`` -> y; ``bounds(x_up, low, high)`` -> the range of y_0 whose
    image lies in [low, high] (floats for "y", per-pixel tensors for "residual"), where a sampler clamps y^_0.
    """
    kind: str = "y"
    scale: float = 1.0

    def __post_init__(self):
        if self.kind not in TARGETS:
            raise ValueError(f"target must be 'y' (the paper) or 'residual', got {self.kind!r}")
        if not self.scale > 0:
            raise ValueError(f"residual_scale must be > 0, got {self.scale!r}")

    def encode(self, y: torch.Tensor, x_up: torch.Tensor) -> torch.Tensor:
        return y if self.kind == "y" else to_residual(y, x_up, self.scale)

    def decode(self, y_0: torch.Tensor, x_up: torch.Tensor) -> torch.Tensor:
        return y_0 if self.kind == "y" else from_residual(y_0, x_up, self.scale)

    def bounds(self, x_up: torch.Tensor, low: float = -1.0, high: float = 1.0) -> tuple:
        if self.kind == "y":
            return low, high
        return (low - x_up) / self.scale, (high - x_up) / self.scale   # encode is increasing: the ends map to ends
