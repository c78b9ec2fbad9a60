"""A fused GroupNorm + FiLM + SiLU kernel in Triton: an optional speed-up of ``blocks.GroupNorm`` for 16-bit inference.

    out = SiLU(GroupNorm(x) * (1 + scale) + shift)      (ResBlock's second norm; its first and ``norm_out``: no FiLM)

Eager PyTorch makes this three to five passes over the activation, and on CUDA its GroupNorm reads NCHW only, so a
channels_last activation is copied there and back (benchmarks/RESULTS.md, "The GPU fast path"). Here one program per
(sample, group) reads the group's C/G x H x W values twice: pass 1 sums x and x^2 in float32, pass 2 writes

    y = a_c x + d_c,   a_c = w_c rstd (1 + scale_c),   d_c = (b_c - mean w_c rstd)(1 + scale_c) + shift_c

then SiLU, in x's dtype (rounded once: closer to float32 than the 16-bit op chain it replaces). An element sits at
``b s_b + c s_c + p s_p`` with ``p = h W + w``, which holds for NCHW (s_p = 1) and channels_last (s_c = 1) alike,
so no layout is copied; the output has x's memory format. Forward only: ``blocks.GroupNorm`` calls it when no
gradient is needed (sampling), and keeps the PyTorch ops for training and under ``torch.compile`` (whose Inductor
fuses the same ops itself).

Off unless switched on per network: ``accel.fused_group_norm(model)`` sets ``GroupNorm.fused`` on each of its
norms; nothing reads the environment. It has run only under Triton's interpreter on CPU (``TRITON_INTERPRET=1``;
the tests do that), not yet timed on a GPU. Triton is optional: ``triton_gn`` (the kernel's source) is imported
when the kernel first runs, and Triton decides then, once per process, whether ``TRITON_INTERPRET=1`` runs it on
CPU tensors.
"""
from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["usable", "group_norm_film_silu"]

_has_triton: list = []  # [bool] once looked up: usable() runs for every fused GroupNorm call


def usable(x: torch.Tensor) -> bool:
    """Whether ``group_norm_film_silu`` may run on x: Triton installed, x on CUDA (or under the interpreter), not
    inside ``torch.compile``'s tracing, and a layout with ``stride(H) = W stride(W)``."""
    if torch.compiler.is_compiling():
        return False
    if not _has_triton:
        _has_triton.append(importlib.util.find_spec("triton") is not None)
    if not _has_triton[0]:
        return False
    interpret = os.environ.get("TRITON_INTERPRET", "") == "1"
    return (x.is_cuda or interpret) and x.ndim == 4 and x.stride(2) == x.shape[3] * x.stride(3)


def group_norm_film_silu(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                         scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                         silu: bool = False) -> torch.Tensor:
    """``SiLU?(GroupNorm(x) * (1 + scale) + shift)`` in one kernel: ``x [B, C, H, W]`` (NCHW or channels_last),
    ``weight, bias [C]``, ``scale, shift [B, C, 1, 1]`` (any strides) or None -> x's shape, dtype and format."""
    from sr3_mini.triton_gn import gn_film_silu  # here, not at the top: Triton is optional

    B, C, H, W = x.shape
    CG, P = C // groups, H * W
    out = torch.empty_like(x)
    film = scale is not None
    scale = scale.expand(B, C, 1, 1) if film else weight  # unused pointers when there is no FiLM
    shift = shift.expand(B, C, 1, 1) if film else weight
    if film and scale.stride() != shift.stride():
        shift = shift.contiguous()
        scale = scale.contiguous()
    block_c = 1 << max(CG - 1, 0).bit_length()              # next power of two >= C/G
    block_p = min(max(4096 // block_c, 16), 1 << max(P - 1, 0).bit_length())
    block_p = max(block_p, 16)
    gn_film_silu[(B * groups,)](
        x, out, weight, bias, scale, shift, P, groups, CG, float(eps),
        x.stride(0), x.stride(1), x.stride(3), out.stride(0), out.stride(1), out.stride(3),
        scale.stride(0) if film else 0, scale.stride(1) if film else 0,
        FILM=film, SILU=silu, BLOCK_C=block_c, BLOCK_P=block_p)
    return out
