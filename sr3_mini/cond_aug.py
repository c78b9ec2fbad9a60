"""Conditioning augmentation (Ho, Saharia et al. 2021, "Cascaded Diffusion Models"): corrupt the LR input.

Not part of SR3. In a cascade (notebook 08) a later stage is fed an earlier stage's *output*, not a downsampled photo:
its fine detail is invented, and a stage trained only on clean inputs takes that detail as fact and sharpens it.
Conditioning augmentation corrupts the LR input x during training, so that the network learns not to trust x's
finest detail; at sampling the same corruption, at a chosen level, is put on the earlier stage's output.

The two corruptions of Ho et al., in their simplest form: Gaussian **noise**, x + s eps with s ~ U(0, s_max) per
example, in the [-1, 1] units of x; and Gaussian **blur** of x with a standard deviation b ~ U(0, b_max) per example,
in pixels of x (they blur for their highest-resolution stage). Both act on the LR image before it is upsampled.
A named deviation: Ho et al. also feed the level to the network, so that one model serves every level at sampling;
the U-Net here sees only gamma, so it must judge the corruption from x itself.

Training: ``TrainConfig.cond_noise`` = s_max, ``cond_blur`` = b_max (``train.py`` calls ``augment``, which draws
for the global batch). Sampling: ``super_resolve(..., cond_noise=s, cond_blur=b)`` or ``Stage(...)`` with the same
fields corrupts its x at those fixed levels (``corrupt``). Shapes: x ``[B, C, h, w]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["noise", "blur", "augment", "corrupt"]


def _check(level: float, what: str) -> None:
    if not 0 <= level < math.inf:
        raise ValueError(f"{what} must be a finite number >= 0, got {level!r}")


def noise(shape, s_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """s eps of shape ``shape`` = ``[B, ...]``, with one s ~ U(0, s_max) per example and eps ~ N(0, I), drawn from
    ``generator`` (on its device) in that order: the training noise."""
    _check(s_max, "s_max")
    dev = generator.device if generator is not None else "cpu"
    s = s_max * torch.rand(shape[0], generator=generator, device=dev)                # s ~ U(0, s_max)
    eps = torch.randn(tuple(shape), generator=generator, device=dev)                 # eps ~ N(0, I)
    return s.view(-1, *[1] * (len(shape) - 1)) * eps


def blur(x: torch.Tensor, b) -> torch.Tensor:
    """x ``[B, C, h, w]`` blurred by a Gaussian of standard deviation ``b`` pixels (a number, or one per example
    ``[B]``; 0 leaves an example unchanged), separably, with reflected borders. The kernel reaches 3 b_max."""
    B, C, h, w = x.shape
    b = torch.as_tensor(b, dtype=torch.float64).expand(B).cpu()
    r = max(1, math.ceil(3 * float(b.max())))
    if r >= min(h, w):
        raise ValueError(f"a blur of {float(b.max())} pixels is too wide for an image of {h}x{w}")
    k = torch.arange(-r, r + 1, dtype=torch.float64)
    kernel = torch.exp(-k**2 / (2 * b.clamp_min(1e-6)[:, None] ** 2))                 # [B, 2r + 1]
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype).to(x.device)
    kernel = kernel.repeat_interleave(C, dim=0)                                       # one per (example, channel)
    y = F.pad(x.reshape(1, B * C, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, kernel.view(B * C, 1, 1, -1), groups=B * C)                       # along rows
    y = F.conv2d(y, kernel.view(B * C, 1, -1, 1), groups=B * C)                       # along columns
    return y.reshape(B, C, h, w)


def augment(x: torch.Tensor, s_max: float = 0.0, b_max: float = 0.0, generator: torch.Generator | None = None,
            rank: int = 0, world: int = 1) -> torch.Tensor:
    """Training: this rank's slice ``x [B, ...]`` of a global batch of ``world`` x B, blurred by b ~ U(0, b_max),
    then plus ``noise`` of s_max. Every rank draws the whole batch's levels and noise (noise first, then blur), so
    that ranks stay in step. Both 0: returns x and draws nothing."""
    _check(b_max, "b_max")
    B, sl = x.shape[0], slice(rank * x.shape[0], (rank + 1) * x.shape[0])
    z = noise((B * world, *x.shape[1:]), s_max, generator)[sl] if s_max > 0 else None
    if b_max > 0:
        dev = generator.device if generator is not None else "cpu"
        x = blur(x, b_max * torch.rand(B * world, generator=generator, device=dev)[sl])  # b ~ U(0, b_max)
    return x if z is None else x + z.to(x.device, x.dtype)


def corrupt(x: torch.Tensor, s: float = 0.0, generator: torch.Generator | None = None, b: float = 0.0) -> torch.Tensor:
    """Sampling: x blurred by b pixels, plus s eps with eps ~ N(0, I) drawn from ``generator`` (on its device, then
    moved to x's). Both 0 returns x itself and draws nothing."""
    _check(s, "the conditioning noise")
    _check(b, "the conditioning blur")
    x = blur(x, b) if b > 0 else x
    if s == 0:
        return x
    dev = generator.device if generator is not None else x.device
    return x + s * torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
