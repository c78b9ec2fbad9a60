"""The denoiser f_theta(x, y_t, gamma) of SR3: a DDPM U-Net with BigGAN residual blocks (section 2.4, Table 1).

Saharia et al., "Image Super-Resolution via Iterative Refinement" (2021). The network predicts the noise eps of
equation (5), ``y_t = sqrt(gamma) y_0 + sqrt(1 - gamma) eps``, and is trained with loss (6); the sampler uses
its output in (8)-(10). Architecture (section 2.4 of ``notebooks/EQUATIONS.md``):

- the LR image x, bicubic-upsampled to the HR size (``x_up``, made by ``sr3_mini.resize.upsample``), is
  **concatenated with y_t along channels, in the order [y_t, x_up]**, as the very first operation: 3 + 3 = 6
  input channels to ``conv_in``;
- the network sees the continuous noise level gamma, never t (``blocks.gamma_embedding`` then an MLP);
- DDPM's layout (Ho et al., 2020): per resolution ``num_res_blocks`` residual blocks on the way down and
  ``num_res_blocks + 1`` on the way up, the up path concatenating the stored down-path activations; a middle
  of ResBlock-Attention-ResBlock; self-attention at the resolutions in ``attn_resolutions``;
- SR3's changes: BigGAN residual blocks that also do the 2x down/up-sampling between resolutions, skip
  connections rescaled by 1/sqrt(2) (``blocks.py``), more blocks per resolution (Table 1 presets below).

Shapes: ``y_t, x_up [B, 3, H, W]``, ``gamma [B]`` (or a scalar) ``-> eps_hat [B, 3, H, W]``, H and W multiples
of ``model.multiple``. The network casts its inputs to its own dtype (a ``model.half()`` takes float32 y_t and
x_up); the v head uses the caller's y_t. ``target_of(model)``: what a network predicts, read from its config
through any wrapper. Relies on ``blocks.py`` and ``diffusion.Target``; never on the schedule or the sampler.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sr3_mini.blocks import (Attention, EmbedSequential, ResBlock, gamma_embedding, group_norm,
                              log_snr_embedding)
from sr3_mini.diffusion import Target

__all__ = ["UNetConfig", "UNet", "PRESETS", "target_of"]


@dataclass
class UNetConfig:
    """Hyper-parameters of the U-Net. Table 1 gives ``channels``, ``channel_mults``, ``num_res_blocks``.

    The choices the paper leaves open, and ours:
    - ``attn_resolutions``: feature-map sizes with self-attention, evaluated once for ``image_size`` (the
      training size) and then fixed per level, so the same model runs on larger images at inference. DDPM
      puts attention at 16x16; so do we (plus the middle block, always).
    - ``attn_head_channels``: 64 channels per head (ADM); keeps heads FlashAttention-sized on GPUs.
    - ``emb_mult``: gamma embedding width = 4 x ``channels`` (DDPM).
    - ``gamma_scale``: gamma is embedded as ``gamma_scale * gamma`` (see ``blocks.gamma_embedding``).
    - ``embedding``: ``"gamma"`` (SR3 conditions on gamma) embeds ``gamma_scale * gamma``; ``"log_snr"`` (a named
      deviation, VDM's conditioning on log-SNR) embeds log(gamma / (1 - gamma)) on the same 0..1000 range, so
      that every decade of noise gets the same share of it (``blocks.log_snr_embedding``).
    - ``dropout``: 0.2 for 16->128 (paper), 0 otherwise.
    - ``head``: how the last conv's output F becomes eps_hat. ``"eps"`` (the paper): eps_hat = F. ``"v"`` (a
      named deviation, Salimans & Ho 2022's v-parameterisation): eps_hat = sqrt(1 - gamma) y_t + sqrt(gamma) F,
      so F estimates v = sqrt(gamma) eps - sqrt(1 - gamma) y_0. f_theta still returns eps_hat and the loss is
      still (6), so (6)-(10) are unchanged; what changes is the function the layers must learn. At high noise
      (gamma -> 0) eps is almost y_t itself, and (8) turns an error in eps_hat into sqrt((1 - gamma)/gamma)
      times that error in y_0_hat (x150 at gamma_T = 4.4e-5): with ``"eps"`` the layers must reproduce y_t to
      0.1 %, with ``"v"`` the identity is exact and F is a smooth regression-like target (-y_0 there). It adds
      no parameter.
    - ``target``: what y_0 (and so y_t) is. ``"y"`` (the paper): the HR image. ``"residual"`` (a named
      deviation, the residual of SRDiff, Li et al. 2022): y_0 = (y - x_up) / ``residual_scale``, the detail that
      bicubic upsampling misses; the sampler returns x_up + residual_scale * y_0 and the regression baseline
      x_up + residual_scale * F. Equations (1)-(10) are unchanged; only the variable they describe is. Why: the
      low frequencies then come exactly from x (consistency), and the network spends its capacity on detail.
      ``residual_scale`` = 0.25 maps the residual's spread on photos (std 0.07-0.13 in [-1, 1] units) to 0.3-0.5,
      near an image's, for which the noise schedule was made. The layers never read these two fields: the
      trainer and the sampler do, through ``target_of(model)`` (a ``diffusion.Target``); they live here so that
      every checkpoint says what its network predicts.
    """

    channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 4, 8, 8)
    num_res_blocks: int = 3
    attn_resolutions: tuple[int, ...] = (16,)
    image_size: int = 128
    dropout: float = 0.0
    image_channels: int = 3
    attn_head_channels: int = 64
    norm_groups: int = 32
    emb_mult: int = 4
    gamma_scale: float = 1000.0
    embedding: str = "gamma"     # "gamma" (paper) | "log_snr" (deviation, see above)
    head: str = "eps"            # "eps" (paper) | "v" (deviation, see above)
    checkpointing: bool = False  # recompute each block in backward (torch.utils.checkpoint): less memory
    target: str = "y"            # "y" (paper) | "residual" (deviation, see above)
    residual_scale: float = 0.25

    def __post_init__(self):
        # JSON round-trips (checkpoints) turn tuples into lists
        self.channel_mults = tuple(self.channel_mults)
        self.attn_resolutions = tuple(self.attn_resolutions)
        if self.embedding not in ("gamma", "log_snr"):
            raise ValueError(f"embedding must be 'gamma' (the paper) or 'log_snr', got {self.embedding!r}")
        if self.head not in ("eps", "v"):
            raise ValueError(f"head must be 'eps' (the paper) or 'v', got {self.head!r}")
        Target(self.target, self.residual_scale)   # raises on an unknown target or a scale <= 0


# Table 1 of the paper (channel dim, depth multipliers, ResNet blocks; the parameter count is in the comment),
# two CPU-sized presets and one for a lent GPU. Attention resolutions are our choice (DDPM's 16x16), tuned to hit
# Table 1's counts.
PRESETS: dict[str, dict] = {
    # 550M; dropout 0.2 is the paper's 16->128 setting
    "sr3_16_128": dict(channels=128, channel_mults=(1, 2, 4, 8, 8), num_res_blocks=3,
                       attn_resolutions=(16,), image_size=128, dropout=0.2),
    # 625M
    "sr3_64_256": dict(channels=128, channel_mults=(1, 2, 4, 4, 8, 8), num_res_blocks=3,
                       attn_resolutions=(16,), image_size=256),
    # 625M
    "sr3_64_512": dict(channels=64, channel_mults=(1, 2, 4, 8, 8, 16, 16), num_res_blocks=3,
                       attn_resolutions=(16,), image_size=512),
    # 150M; the paper's appendix lists these 8 multipliers
    "sr3_256_1024": dict(channels=16, channel_mults=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=2,
                         attn_resolutions=(16,), image_size=1024),
    # the study note's Table 1 lists 7 multipliers for the same model
    "sr3_256_1024_note": dict(channels=16, channel_mults=(1, 2, 4, 8, 32, 32, 32), num_res_blocks=2,
                              attn_resolutions=(16,), image_size=1024),
    # the bundled 16->64 model: trains on 64x64 crops on a 2-core CPU. Compute at 64x64 costs channels^2, so
    # the widths stay at 16 for the two finest levels and the parameters (2.9M) sit at 8x8 and 4x4
    "mini": dict(channels=16, channel_mults=(1, 1, 2, 4, 8), num_res_blocks=1,
                 attn_resolutions=(8,), image_size=64, norm_groups=8),
    # the 16->64 model for a lent GPU (scripts/gpu_session.sh): 8.5M, 64 channels at full resolution, two blocks per
    # level. The bundled mini underfits (data/MODEL_CARD.md, "Over- or under-fitting?"); this one is meant for a GPU's
    # minutes (not yet run on one). Its size is bounded by the repository's: 17 MB in float16
    "gpu64": dict(channels=64, channel_mults=(1, 1, 2, 2), num_res_blocks=2,
                  attn_resolutions=(8,), image_size=64, norm_groups=16),
    # unit tests: milliseconds per forward on 16x16
    "tiny": dict(channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                 image_size=16, norm_groups=8, attn_head_channels=16),
}


class UNet(nn.Module):
    """f_theta(x, y_t, gamma) -> eps_hat: ``model(y_t, x_up, gamma)``, see the module docstring.

    Initialisation: PyTorch defaults, except the last conv of every residual branch (ResBlock ``conv2``,
    Attention ``proj``) and ``conv_out``, which start at zero as in DDPM and score-SDE: the untrained model
    outputs eps_hat = 0 and every block starts as its (rescaled) skip path.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else UNetConfig()
        levels = len(c.channel_mults)
        self.multiple = 2 ** (levels - 1)
        emb_dim = c.emb_mult * c.channels
        g = c.norm_groups
        # levels whose feature map (at the training size) is in attn_resolutions
        attn_levels = {i for i in range(levels) if c.image_size // 2**i in c.attn_resolutions}

        self.gamma_mlp = nn.Sequential(nn.Linear(c.channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # [y_t, x_up] concatenated along channels: 2 * 3 = 6 inputs
        self.conv_in = nn.Conv2d(2 * c.image_channels, c.channels, 3, padding=1)

        def unit(in_ch, out_ch, level, resample=None):
            blocks = [ResBlock(in_ch, out_ch, emb_dim, c.dropout, resample, g)]
            if level in attn_levels and resample is None:
                blocks.append(Attention(out_ch, c.attn_head_channels, g))
            return EmbedSequential(*blocks)

        ch = c.channels
        skip_chs = [ch]  # channels of every activation the down path stores for the up path
        self.down = nn.ModuleList()
        for i, mult in enumerate(c.channel_mults):
            for _ in range(c.num_res_blocks):
                self.down.append(unit(ch, c.channels * mult, i))
                ch = c.channels * mult
                skip_chs.append(ch)
            if i < levels - 1:  # BigGAN: down-sampling is a residual block
                self.down.append(unit(ch, ch, i, "down"))
                skip_chs.append(ch)

        self.mid = EmbedSequential(ResBlock(ch, ch, emb_dim, c.dropout, None, g),
                                   Attention(ch, c.attn_head_channels, g),
                                   ResBlock(ch, ch, emb_dim, c.dropout, None, g))

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(c.channel_mults))):
            for _ in range(c.num_res_blocks + 1):  # one more than on the way down, as DDPM
                self.up.append(unit(ch + skip_chs.pop(), c.channels * mult, i))
                ch = c.channels * mult
            if i > 0:
                self.up.append(unit(ch, ch, i, "up"))

        self.norm_out = group_norm(ch, g)
        self.conv_out = nn.Conv2d(ch, c.image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UNet":
        """A model of preset ``name`` (see ``PRESETS``), with any ``UNetConfig`` field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(UNetConfig(**{**PRESETS[name], **overrides}))

    def _gamma(self, gamma, batch: int, device: torch.device) -> torch.Tensor:
        """gamma as a ``[B]`` tensor: a python float, 0-dim or 1-element tensor is broadcast to B."""
        gamma = torch.as_tensor(gamma, device=device)
        if gamma.numel() == 1:
            return gamma.reshape(1).expand(batch)
        if gamma.numel() != batch:
            raise ValueError(f"gamma must be a scalar or have {batch} entries, got shape {tuple(gamma.shape)}")
        return gamma.reshape(batch)

    def _run(self, block: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.config.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def forward(self, y_t: torch.Tensor, x_up: torch.Tensor, gamma) -> torch.Tensor:
        """eps_hat = f_theta(x, y_t, gamma): ``y_t, x_up [B, 3, H, W]``, gamma ``[B]`` or scalar -> ``[B, 3, H, W]``."""
        if y_t.shape != x_up.shape:
            raise ValueError(f"y_t {tuple(y_t.shape)} and x_up {tuple(x_up.shape)} must have the same shape")
        if y_t.ndim != 4 or y_t.shape[1] != self.config.image_channels:
            raise ValueError(f"expected y_t of shape [B, {self.config.image_channels}, H, W], got {tuple(y_t.shape)}")
        H, W = y_t.shape[-2:]
        if H % self.multiple or W % self.multiple:
            raise ValueError(f"H and W must be multiples of {self.multiple} (2**(levels - 1)), got {H}x{W}")
        dtype = self.conv_in.weight.dtype
        # the sinusoid is computed in at least float32 (gamma may come as float64; fp16 would blur it)
        gamma = self._gamma(gamma, y_t.shape[0], y_t.device).to(torch.promote_types(dtype, torch.float32))
        if self.config.embedding == "log_snr":
            emb = log_snr_embedding(gamma, self.config.channels).to(dtype)
        else:
            emb = gamma_embedding(gamma, self.config.channels, self.config.gamma_scale).to(dtype)
        # every ResBlock applies SiLU before its FiLM projection (DDPM): done once here
        emb = F.silu(self.gamma_mlp(emb))

        # section 2.4: concatenate [y_t, x_up] along channels, in the network's dtype (float16 for model.half());
        # y_t itself stays the caller's, for the v head below
        h = self.conv_in(torch.cat([y_t, x_up], dim=1).to(dtype))
        hs = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            if block[0].resample is None:  # up-sampling blocks take no skip
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(block, h, emb)
        out = self.conv_out(self.norm_out(h, silu=True))   # SiLU(GroupNorm(h)), blocks.GroupNorm
        if self.config.head == "eps":
            return out                                     # the paper: the network output is eps_hat
        # head "v" (deviation): eps_hat = sqrt(1 - gamma) y_t + sqrt(gamma) v_hat, in gamma's (>= float32) dtype
        # with the caller's y_t, also under autocast or model.half(): a 16-bit y_t or eps_hat would lose ~4e-3,
        # which (8) multiplies by ~150 at gamma_T
        g = gamma[:, None, None, None]
        return (1 - g).sqrt() * y_t + g.sqrt() * out.to(g.dtype)


# Where wrappers keep the network they wrap: DataParallel and DistributedDataParallel (.module), torch.compile's
# OptimizedModule (._orig_mod), tiling.Tiled and accel.SamplingNet (.model).
WRAPPED = ("module", "_orig_mod", "model")


def target_of(model) -> Target:
    """What ``model`` predicts: the ``diffusion.Target`` of its config (``UNetConfig.target`` and
    ``residual_scale``), read from the first object that has a ``config`` among ``model`` and the networks it
    wraps (``WRAPPED``). The one place where this is decided: the trainer, the sampler, the regression baseline
    and the evaluation all ask here. Raises a TypeError when no config is found: a wrapper that hides it would
    otherwise be sampled in the wrong variable, silently."""
    seen, m = [], model
    while m is not None and not any(m is s for s in seen):
        config = getattr(m, "config", None)
        if config is not None:
            if not (hasattr(config, "target") and hasattr(config, "residual_scale")):
                raise TypeError(f"the config of {type(m).__name__} ({type(config).__name__}) says nothing about "
                                "what the network predicts: it needs the fields target and residual_scale "
                                "(a UNetConfig)")
            target = Target(config.target, config.residual_scale)      # raises on values it does not know
            return target if target.kind == "residual" else Target()   # the paper's: no scale
        seen.append(m)
        m = next((getattr(m, a) for a in WRAPPED if getattr(m, a, None) is not None), None)
    chain = " -> ".join(type(s).__name__ for s in seen)
    raise TypeError(f"cannot tell what {chain} predicts (the image y or the residual): no config (UNetConfig) on it "
                    f"or on a network it wraps (looked through .{', .'.join(WRAPPED)}). Give the network or its "
                    "wrapper a config, e.g. `config = UNetConfig()` for the paper's target")
