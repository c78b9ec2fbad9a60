"""Resizing, in one place: how the LR input x is made from y, and how x is upsampled for the network.

Saharia et al. (2021), section 4: low-resolution inputs are made by bicubic downsampling with anti-aliasing,
and the network is conditioned on x bicubic-upsampled to the target size and concatenated with y_t (§2.4).
The data pipeline, the consistency metric and the sampler all call these two functions, so "the
downsampling used to make the input" is by construction the same everywhere.

The two directions use different cubic kernels, on purpose. Both are Keys' cubic convolution
K(s) = (a+2)|s|^3 - (a+3)|s|^2 + 1 for |s| < 1, a|s|^3 - 5a|s|^2 + 8a|s| - 4a for 1 <= |s| < 2:
- ``downsample``: a = -0.5, the kernel stretched by ``scale`` (anti-aliasing), truncated and renormalised at
  the borders: PIL's ``Image.resize(BICUBIC)``, with which SR datasets (SR3's included) are made.
- ``upsample``: a = -0.75 (PyTorch's and OpenCV's bicubic), edge pixels repeated at the borders. It is the
  sharper kernel: on the 16 held-out photos x_up is 0.1 dB closer to y than with a = -0.5 (24.85 vs 24.74 dB);
  the two differ by 6e-3 on average (at most 0.13). The bundled models were trained on this x_up, so changing
  it would change their input.
tests/test_resize.py checks both against these kernels written out in float64, and downsample against PIL.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["downsample", "upsample", "keep_grey"]


def downsample(y: torch.Tensor, scale: int) -> torch.Tensor:
    """HR -> LR: bicubic with anti-aliasing, ``[B, C, H, W] -> [B, C, H/scale, W/scale]`` (or ``[C, H, W]``),
    clamped to [-1, 1] like a saved image. H and W must be divisible by ``scale``."""
    scale = _scale(scale)
    y4 = _batched(y, "y")
    h, w = y4.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"y is {h}x{w}; its height and width must be multiples of scale={scale}")
    x = F.interpolate(y4, size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    x = x.clamp(-1, 1)
    return x if y.ndim == 4 else x[0]


def upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """LR -> HR size: plain bicubic (no anti-aliasing needed when enlarging), clamped to [-1, 1].
    ``[B, C, h, w] -> [B, C, h*scale, w*scale]`` (or ``[C, h, w]``)."""
    scale = _scale(scale)
    x4 = _batched(x, "x")
    x_up = F.interpolate(x4, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)
    return x_up if x.ndim == 4 else x_up[0]


def keep_grey(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` [B, 3, H, W] with its channels set to their mean for each image whose input ``x`` [B, 3, h, w] has three
    equal channels (greyscale in, greyscale out: the sampler's noise would otherwise tint it)."""
    grey = (x[:, :1] == x[:, 1:]).flatten(1).all(1).to(y.device)     # [B]
    return torch.where(grey[:, None, None, None], y.mean(1, keepdim=True).expand_as(y), y)


def _scale(scale) -> int:
    if isinstance(scale, bool) or int(scale) != scale or int(scale) < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def _batched(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim not in (3, 4):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a [B, C, H, W] or [C, H, W] tensor, got {shape}")
    return t if t.ndim == 4 else t.unsqueeze(0)
