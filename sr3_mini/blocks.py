"""The building blocks of SR3's U-Net f_theta(x, y_t, gamma): section 2.4 and Table 1 of the paper.

Saharia et al., "Image Super-Resolution via Iterative Refinement" (2021), section 2.4 ("Architecture" in
``notebooks/EQUATIONS.md``): SR3 takes the DDPM U-Net and (a) replaces its residual blocks by those of
BigGAN (Brock et al., 2019), (b) rescales skip connections by 1/sqrt(2), (c) uses more residual blocks per
resolution. The paper leaves the details open; we follow the score-SDE code (Song et al., 2021,
``ResnetBlockBigGANpp``), which SR3's authors cite for these changes, and ADM's "scale-shift norm"
(Dhariwal & Nichol, 2021) for injecting the noise level gamma.

- ``gamma_embedding``: sinusoidal features of the continuous noise level gamma (WaveGrad / SR3 condition on
  gamma, not on t).
- ``ResBlock``: BigGAN residual block, optional 2x up/down-sampling of both branches inside the block, FiLM
  of gamma, output (skip + h) / sqrt(2).
- ``Attention``: DDPM self-attention over the H*W positions, with the same 1/sqrt(2) skip rescale.
- ``EmbedSequential``: a chain of blocks that all receive the gamma embedding.
- ``GroupNorm``: ``nn.GroupNorm`` that keeps 16-bit activations in 16 bits, with the FiLM and SiLU that follow it
  (one fused kernel from ``kernels.py`` on the norms that ``accel.fused_group_norm`` switched on).

Shapes: feature maps ``[B, C, H, W]``, embeddings ``[B, E]``. Sibling module: ``unet.py`` wires these up.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sr3_mini import kernels

__all__ = ["gamma_embedding", "log_snr_embedding", "sinusoids", "group_norm", "GroupNorm", "ResBlock", "Attention",
           "EmbedSequential"]

SKIP_SCALE = 1 / math.sqrt(2)  # section 2.4: "skip connections rescaled by 1/sqrt(2)"


def gamma_embedding(gamma: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features of the noise level: ``gamma [B] -> [B, dim]`` (DDPM/Transformer positional code).

    DDPM embeds the integer t in 0..1000; SR3 conditions on the continuous gamma in (0, 1] instead, so we embed
    ``scale * gamma`` (scale=1000 puts it on DDPM's range, where the frequencies 1 .. 1/10000 resolve both
    neighbouring gamma near 1 and the coarse noise range). Computed in the dtype of ``gamma``.
    """
    return sinusoids(scale * gamma, dim)


# log-SNR range mapped onto DDPM's 0..1000 by ``log_snr_embedding``: SR3's training schedule (linear betas
# 1e-6 .. 1e-2, T = 2000) spans log-SNR -10.0 (gamma_T = 4.5e-5) .. 13.8 (gamma_1 = 1 - 1e-6)
LOG_SNR_RANGE = (-12.0, 16.0)


def log_snr_embedding(gamma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the log-SNR ``lambda = log(gamma / (1 - gamma))``: ``gamma [B] -> [B, dim]``.

    A named deviation (``UNetConfig.embedding = "log_snr"``; VDM, Kingma et al. 2021, conditions on log-SNR).
    Why: ``1000 * gamma`` puts a decade of noise at each end in a sliver of the input. gamma = 1e-4 .. 1e-3
    moves it by 0.9, as much as gamma = 0.5 .. 0.5009; at the quiet end SNR 1000 .. 10000 (noise std 0.03 ..
    0.01, the texture's own scale) moves it by 0.9 too, and only the fastest sinusoid sees that. Here every
    unit of log-SNR moves the input by 1000 / 28 = 36, equally at every noise level."""
    lo, hi = LOG_SNR_RANGE
    g = gamma.clamp(1e-12, 1 - 1e-7)                 # gamma = 1 exactly (no noise) would give log-SNR = inf
    lam = torch.log(g) - torch.log1p(-g)
    return sinusoids((lam - lo) * (1000.0 / (hi - lo)), dim)


def sinusoids(s: torch.Tensor, dim: int) -> torch.Tensor:
    """``[sin(s f_k), cos(s f_k)]`` for dim/2 frequencies f_k from 1 to 1/10000 (Transformer code): ``[B] -> [B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) / max(half - 1, 1)
                      * torch.arange(half, device=s.device, dtype=s.dtype))
    angles = s[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters, same checkpoints), then optionally FiLM and SiLU, in one call::

        forward(x, scale=None, shift=None, silu=False) = SiLU?(GroupNorm(x) * (1 + scale) + shift)

    ``x [B, C, H, W]``, ``scale, shift [B, C, 1, 1]``. float32/float64 ``x``: nn.GroupNorm, ``addcmul``, SiLU, bit for
    bit the plain ops. bf16/fp16 ``x`` (autocast, or a float16 model): GroupNorm runs in x's dtype with autocast
    off and the affine weights cast to it (PyTorch still accumulates mean and variance in float32). Why: autocast
    runs GroupNorm in float32, so every elementwise op up to the next convolution moved 4-byte values, and on CUDA
    under channels_last each call also copied to NCHW: 45 % of the bf16 sampling step's GPU time was such copies
    (benchmarks/RESULTS.md, "The GPU fast path"). With ``fused`` (off by default; ``accel.fused_group_norm(model)``
    switches it per network), without autograd, on CUDA: one fused Triton kernel (``kernels.group_norm_film_silu``)
    reads x once in its own memory format and writes the result.
    """

    fused = False  # an execution choice, not a weight: never in the state dict

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
                silu: bool = False) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            no_grad = not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            if self.fused and no_grad and kernels.usable(x):
                return kernels.group_norm_film_silu(x, self.num_groups, self.weight, self.bias, self.eps,
                                                    scale, shift, silu)
            with torch.autocast(x.device.type, enabled=False):
                h = F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        else:
            h = super().forward(x)
        if scale is not None:
            h = torch.addcmul(shift, h, 1 + scale)  # FiLM: GroupNorm(h) * (1 + scale) + shift, one fused pass
        return F.silu(h) if silu else h


def group_norm(channels: int, groups: int = 32) -> GroupNorm:
    """GroupNorm with ``groups`` groups as in DDPM, fewer (gcd) when ``channels`` is not a multiple (small presets)."""
    return GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """BigGAN residual block with FiLM of the noise level (section 2.4; BigGAN fig. 15; score-SDE, ADM).

    ``x [B, in_ch, H, W], emb [B, E] -> [B, out_ch, H', W']`` with ``H' = H/2, H, 2H`` for ``resample =
    "down", None, "up"``::

        h = SiLU(GroupNorm(x));  resample h and x     (BigGAN: resampling inside the block, both branches)
        h = Conv3x3(h)
        scale, shift = Linear(emb)                    (FiLM / ADM scale-shift norm of gamma)
        h = GroupNorm(h) * (1 + scale) + shift
        h = Conv3x3(Dropout(SiLU(h)))                 (zero-initialised: the block starts as skip(x) / sqrt(2))
        return (skip(x) + h) / sqrt(2)                (skip = 1x1 conv when in_ch != out_ch)

    Down-sampling is 2x2 average pooling and up-sampling nearest-neighbour, as in BigGAN and score-SDE's
    ``fir=False`` variant. ``emb`` must already be passed through SiLU (``unet.py`` does it once for all blocks).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0,
                 resample: str | None = None, groups: int = 32):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.resample = resample
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch, groups)
        # the paper uses dropout 0.2 for 16->128 only; no module at all when it is 0
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        # DDPM / score-SDE zero-init the last conv of a residual branch, so each block starts as skip / sqrt(2)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def _resample(self, t: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(t, 2)
        if self.resample == "up":
            return F.interpolate(t, scale_factor=2.0, mode="nearest")
        return t

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x, silu=True)  # SiLU not in place: autograd would save a clone of its input
        h = self.conv1(self._resample(h))
        x = self._resample(x)
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h, scale, shift, silu=True)  # SiLU(GroupNorm(h) * (1 + scale) + shift): FiLM of gamma
        h = self.conv2(self.dropout(h))
        # section 2.4: (skip + h) / sqrt(2); in place on conv2's output, which its backward does not need
        return h.add_(self.skip(x)).mul_(SKIP_SCALE)


class Attention(nn.Module):
    """DDPM self-attention block over the ``H*W`` positions, with the 1/sqrt(2) skip rescale (section 2.4).

    ``x [B, C, H, W] -> [B, C, H, W]``: ``(x + Proj(SDPA(q, k, v))) / sqrt(2)`` where ``q, k, v`` come from one
    1x1 conv of ``GroupNorm(x)`` and are split into ``C // head_channels`` heads. ``Proj`` is zero-initialised.
    ``emb`` is accepted and ignored so that every block in ``EmbedSequential`` has the same call signature.
    """

    def __init__(self, channels: int, head_channels: int = 64, groups: int = 32):
        super().__init__()
        self.heads = max(channels // head_channels, 1)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        H, W = x.shape[-2:]
        qkv = self.qkv(self.norm(x))  # [B, 3 C, H, W]: q, k, v stacked along channels, C = heads x d
        # contiguous: rearranged from NCHW, d is the slowest axis, and SDPA then falls back to its math kernel,
        # which builds the [H*W, H*W] matrix (740 MB for one 96x96 head on the CPU, against 14 MB)
        q, k, v = rearrange(qkv, "b (qkv heads d) h w -> qkv b heads (h w) d", qkv=3, heads=self.heads).contiguous()
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, [B, heads, H*W, d]
        h = self.proj(rearrange(h, "b heads (h w) d -> b (heads d) h w", h=H, w=W))
        return h.add_(x).mul_(SKIP_SCALE)


class EmbedSequential(nn.Sequential):
    """``nn.Sequential`` whose blocks all take ``(h, emb)``: a ResBlock, optionally followed by Attention."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self:
            h = block(h, emb)
        return h
