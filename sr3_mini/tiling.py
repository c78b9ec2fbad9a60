"""Images of any size for Algorithm 2: padding to the network's multiple, tiles blended inside every step, and
an estimate of what a run will cost before it starts. Not in SR3.

The LR image is reflect-padded so that its upsampled size is a multiple of ``model.multiple``, and the output
cropped back. Large images are tiled *inside every refinement step*: f_theta runs on overlapping tiles of y_t
and x_up, the tiles' eps are blended with weights that fall off towards tile edges, and one step (10) is taken
on the whole image with whole-image noise z (as MultiDiffusion, Bar-Tal et al. 2023). So there is one sample,
not a patchwork of independent ones, and no seams: the overlap is a quarter of the tile, which is why a tile
must be at least 4 x ``model.multiple``.
Relies on: sample (super_resolve, regression_predict), resize, schedule.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from einops import rearrange

from .resize import upsample
from .sample import regression_predict, super_resolve
from .schedule import Schedule

__all__ = ["Tiled", "upscale_image", "estimate_cost"]

# float32 [3, H, W] images alive at once in a tiled step: x_up, y_t, z, eps and its blend, the step's temporaries
FULL_IMAGES = 10
PROBE = 128   # side of the patch timed by estimate_cost (a whole tile's attention could itself be too large)


class Tiled(torch.nn.Module):
    """f_theta(y_t, x_up, gamma) evaluated on overlapping ``tile`` x ``tile`` windows (HR pixels, multiples of
    ``model.multiple``) whose eps are blended: [B, 3, H, W] -> [B, 3, H, W]. Images that fit run whole.
    What it predicts is the wrapped model's: ``unet.target_of`` reads it through ``.model``."""

    def __init__(self, model, tile: int, batch: int = 4):
        super().__init__()
        self.model, self.multiple, self.batch = model, model.multiple, batch
        if tile < 4 * self.multiple:
            raise ValueError(f"a tile of {tile} HR pixels leaves no overlap between tiles (seams): it must be at "
                             f"least 4 x model.multiple = {4 * self.multiple}")
        self.tile = tile // self.multiple * self.multiple
        self.overlap = self.tile // 4 // self.multiple * self.multiple
        self.train(model.training)   # super_resolve restores this mode afterwards: keep the model's own

    def starts(self, size: int) -> list:
        """Where the tiles along one side of ``size`` pixels begin (all multiples of model.multiple)."""
        if size <= self.tile:
            return [0]
        stride = self.tile - self.overlap
        return list(range(0, size - self.tile, stride)) + [size - self.tile]

    def _ramp(self, n: int, device) -> torch.Tensor:
        """1-D blending weight: rises linearly over the overlap at both ends, > 0 everywhere."""
        i = torch.arange(n, device=device, dtype=torch.float32)
        return (torch.minimum(i + 1, n - i) / (self.overlap + 1)).clamp(max=1)

    def forward(self, y_t, x_up, gamma):
        B, _, H, W = y_t.shape
        if H <= self.tile and W <= self.tile:
            return self.model(y_t, x_up, gamma)
        th, tw = min(self.tile, H), min(self.tile, W)
        w = self._ramp(th, y_t.device)[:, None] * self._ramp(tw, y_t.device)[None, :]
        eps, weight = torch.zeros_like(y_t), torch.zeros(H, W, device=y_t.device, dtype=y_t.dtype)
        boxes = [(i, j) for i in self.starts(H) for j in self.starts(W)]
        gamma = torch.as_tensor(gamma, device=y_t.device).reshape(-1).expand(B)
        for k in range(0, len(boxes), self.batch):
            chunk = boxes[k:k + self.batch]
            # n tiles of a [B, 3, th, tw] batch -> one batch [n B, 3, th, tw] for the network
            crop = lambda z: rearrange([z[..., i:i + th, j:j + tw] for i, j in chunk], "n b c h w -> (n b) c h w")  # noqa: E731
            out = self.model(crop(y_t), crop(x_up), gamma.repeat(len(chunk))).to(y_t.dtype)
            for (i, j), eps_tile in zip(chunk, rearrange(out, "(n b) c h w -> n b c h w", n=len(chunk))):
                eps[..., i:i + th, j:j + tw] += eps_tile * w
                weight[i:i + th, j:j + tw] += w
        return eps / weight                          # sum_tiles w eps_tile / sum_tiles w


def _padding(model, x_shape, scale: int) -> tuple:
    """(pad_h, pad_w): LR padding so that scale * (h + pad) is a multiple of model.multiple."""
    q = model.multiple // math.gcd(model.multiple, scale)
    return -x_shape[-2] % q, -x_shape[-1] % q


def upscale_image(model, kind: str, x: torch.Tensor, scale: int, steps: int = 100,
                  generator: torch.Generator | None = None, tile: int = 128, progress: bool = True,
                  schedule: Schedule | None = None, variance: str | None = None):
    """LR ``x`` [B, 3, h, w] of any size -> [B, 3, scale*h, scale*w]: SR3 (Algorithm 2, ``super_resolve``) or,
    for a ``kind="regression"`` model, its single forward pass. ``tile``: tile side in LR pixels.
    ``schedule``: the inference schedule (default: ``super_resolve``'s; the CLI passes the checkpoint's own
    training schedule respaced to ``steps``). ``variance``: of (10), "paper" or "posterior" (default:
    ``super_resolve``'s)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = _padding(model, x.shape, scale)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"   # reflection needs pad < size
    x_pad = F.pad(x, (0, pad_w, 0, pad_h), mode=mode) if pad_h or pad_w else x
    net = Tiled(model, tile * scale)
    if kind == "regression":
        device = next(model.parameters()).device
        with torch.no_grad():
            y = regression_predict(net, upsample(x_pad, scale).to(device)).clamp(-1, 1).to(x.device)
    else:
        y = super_resolve(net, x_pad, schedule=schedule, steps=steps, generator=generator, scale=scale,
                          progress=progress, var_y0=getattr(model, "var_y0", None),
                          **({"variance": variance} if variance else {}))
    return y[..., :scale * h, :scale * w]


def estimate_cost(model, x_shape, scale: int, steps: int, tile: int = 128, batch: int = 4) -> dict:
    """What ``upscale_image`` of an LR batch of ``x_shape`` [B, 3, h, w] will ask for, before it runs:
    ``{"gib": memory, "seconds": time, "tiles": tiles per step}``. Memory: FULL_IMAGES float32 copies of the
    image plus one batch of tiles' activations (every level's feature maps, kept for the skips), a rough
    figure (within ~2x). Time: one timed forward of a PROBE x PROBE patch, scaled by pixels to a tile, times
    tiles x steps; measured only when the image needs more than one tile (one tile costs about what its first
    step shows)."""
    B, _, h, w = x_shape
    pad_h, pad_w = _padding(model, x_shape, scale)
    H, W = scale * (h + pad_h), scale * (w + pad_w)
    net = Tiled(model, tile * scale, batch)
    th, tw = min(net.tile, H), min(net.tile, W)
    tiles = len(net.starts(H)) * len(net.starts(W))
    c = model.config
    per_pixel = sum(c.channels * m * (c.num_res_blocks + 2) / 4 ** k for k, m in enumerate(c.channel_mults))
    activations = min(tiles, batch) * B * th * tw * per_pixel * 4
    gib = (FULL_IMAGES * B * 3 * H * W * 4 + activations) / 2 ** 30
    seconds = 0.0
    if tiles > 1:
        p = next(model.parameters())
        side = min(th, tw, max(PROBE, model.multiple))
        probe = torch.zeros(B, 3, side, side, device=p.device)
        with torch.no_grad():
            start = time.perf_counter()
            model(probe, probe, torch.full((B,), 0.5, device=p.device))
            seconds = (time.perf_counter() - start) * th * tw / side ** 2 * tiles * steps   # convolutions: ~ pixels
    return {"gib": gib, "seconds": seconds, "tiles": tiles}
