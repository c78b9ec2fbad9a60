"""The peer of sr3_mini's U-Net: Hugging Face diffusers' ``UNet2DModel`` built with SR3's widths and blocks.

What people would pick instead of ``sr3_mini.unet.UNet`` is diffusers' ``UNet2DModel``. This module builds one
of the same shape from a ``UNetConfig``, so the benchmark (``run.py``) compares implementations, not models:

| sr3_mini (``UNetConfig``)                        | diffusers ``UNet2DModel``                           |
|--------------------------------------------------|-----------------------------------------------------|
| ``channels * channel_mults``                     | ``block_out_channels``                              |
| ``num_res_blocks`` (+1 on the way up)            | ``layers_per_block`` (+1 on the way up, the same)   |
| BigGAN resampling ResBlocks (section 2.4)        | ``Resnet{Down,Up}sampleBlock2D``; in the attention  |
|                                                  | levels ``down/upsample_type = "resnet"``            |
| FiLM ``GroupNorm(h) * (1 + scale) + shift``      | ``resnet_time_scale_shift = "scale_shift"``         |
| attention at ``attn_resolutions`` + middle       | ``AttnDown/UpBlock2D`` at those levels + mid block  |
| ``attn_head_channels``                           | ``attention_head_dim``                              |
| ``norm_groups``, GroupNorm eps 1e-6, ``dropout`` | ``norm_num_groups``, ``norm_eps``, ``dropout``      |
| ``[y_t, x_up]``: 6 inputs, eps: 3 outputs        | ``in_channels=6``, ``out_channels=3``               |

Left as diffusers has them (no effect on cost): skip connections are not rescaled by 1/sqrt(2) (diffusers
divides by ``output_scale_factor = 1``), the timestep sinusoid order, SiLU of the embedding in every block,
and no GroupNorm before the middle attention (diffusers drops it with ``scale_shift``: 2 x C parameters).
Shapes: ``PeerUNet(y_t, x_up, gamma)`` takes ``y_t, x_up [B, 3, H, W]``, ``gamma [B]`` ``-> [B, 3, H, W]``,
the call signature of ``UNet``. diffusers is the optional ``bench`` extra: only ``benchmarks/`` imports it.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["diffusers_kwargs", "PeerUNet", "build_peer", "num_params"]


def diffusers_kwargs(config) -> dict:
    """``UNet2DModel(**kwargs)`` arguments matching an sr3_mini ``UNetConfig``."""
    c = config
    if c.head != "eps":
        raise ValueError(f"the diffusers peer has the paper's eps head only, not head={c.head!r}")
    levels = len(c.channel_mults)
    attn = [c.image_size // 2**i in c.attn_resolutions for i in range(levels)]  # as UNet picks its levels
    widths = [c.channels * m for m in c.channel_mults]
    if any(w % c.norm_groups for w in widths):
        raise ValueError(f"diffusers needs every width {widths} to be a multiple of norm_groups={c.norm_groups}")
    return dict(
        sample_size=c.image_size,
        in_channels=2 * c.image_channels,   # [y_t, x_up] concatenated
        out_channels=c.image_channels,
        block_out_channels=tuple(widths),
        layers_per_block=c.num_res_blocks,
        # Down/UpBlock2D would resample with a strided / transposed conv: the Resnet* blocks are BigGAN's
        down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn)),
        downsample_type="resnet",
        upsample_type="resnet",
        resnet_time_scale_shift="scale_shift",
        add_attention=True,                 # the middle block's attention
        attention_head_dim=c.attn_head_channels,
        norm_num_groups=c.norm_groups,
        norm_eps=1e-6,
        dropout=c.dropout,
        time_embedding_dim=c.emb_mult * c.channels,
    )


class PeerUNet(nn.Module):
    """diffusers' ``UNet2DModel`` behind sr3_mini's call signature ``(y_t, x_up, gamma) -> eps_hat``.

    gamma is fed as diffusers' (float) timestep ``gamma_scale * gamma``, the value sr3_mini embeds.
    """

    def __init__(self, config):
        super().__init__()
        from diffusers import UNet2DModel  # the optional `bench` extra

        self.config = config
        self.multiple = 2 ** (len(config.channel_mults) - 1)
        self.net = UNet2DModel(**diffusers_kwargs(config))

    def forward(self, y_t: torch.Tensor, x_up: torch.Tensor, gamma) -> torch.Tensor:
        gamma = torch.as_tensor(gamma, device=y_t.device, dtype=torch.float32).reshape(-1).expand(y_t.shape[0])
        return self.net(torch.cat([y_t, x_up], dim=1), self.config.gamma_scale * gamma).sample


def build_peer(config) -> PeerUNet:
    """The diffusers model of the same widths, blocks and attention as ``UNet(config)``."""
    return PeerUNet(config)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
