"""Images of any size for Algorithm 2: padding to the network's multiple, tiles blended inside every step, and
an estimate of what a run will cost before it starts. Not in SR3.

The LR image is reflect-padded so that its upsampled size is a multiple of ``model.multiple``, and the output
cropped back. Large images are tiled *inside every refinement step*: f_theta runs on overlapping tiles of y_t
and x_up, the tiles' eps are blended with weights that fall off towards tile edges, and one step (10) is taken
on the whole image with whole-image noise z (as MultiDiffusion, Bar-Tal et al. 2023). So there is one sample,
not a patchwork of independent ones, and no seams: the overlap is a quarter of the tile, which is why a tile
must be at least 4 x ``model.multiple``.
Relies on: sample (super_resolve, regression_predict), resize, schedule, blocks (Attention), accel.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from einops import rearrange

from .accel import memory_format
from .blocks import Attention
from .resize import keep_grey, upsample
from .sample import regression_predict, super_resolve
from .schedule import Schedule

__all__ = ["Tiled", "upscale_image", "estimate_cost"]

# float32 [3, H, W] images alive at once in a tiled step: x_up, y_t, z, eps and its blend, the step's temporaries
FULL_IMAGES = 10
PROBE = 128   # side of the patch timed by estimate_cost (a whole tile's attention could itself be too large)
# float32 [B, heads, tokens, tokens] matrices alive at once in a self-attention layer where PyTorch's SDPA takes
# its math path (scores and their softmax; measured on CPU: 2.3-2.5x one matrix). blocks.Attention hands SDPA
# contiguous q, k, v, for which the flash / memory-efficient kernels of the CPU and CUDA build no matrix: there
# the layer keeps q, k, v and its output, ATTN_COPIES [B, tokens, channels] tensors. Other devices (MPS) are
# counted with the matrices, an upper bound.
ATTN_MATRICES = 2.5
ATTN_COPIES = 4


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
        y = keep_grey(x, y)                                   # greyscale in, greyscale out, as super_resolve
    else:
        y = super_resolve(net, x_pad, schedule=schedule, steps=steps, generator=generator, scale=scale,
                          progress=progress, var_y0=getattr(model, "var_y0", None),
                          **({"variance": variance} if variance else {}))
    return y[..., :scale * h, :scale * w]


def estimate_cost(model, x_shape, scale: int, steps: int, tile: int = 128, batch: int = 4) -> dict:
    """What ``upscale_image`` of an LR batch of ``x_shape`` [B, 3, h, w] will ask for, before it runs:
    ``{"gib": memory, "seconds": time, "tiles": tiles per step}``, within ~3x (tests/test_cost.py).

    One forward of a PROBE x PROBE patch (after a warm-up call) is timed and watched: hooks count its
    convolutions' FLOPs and the tokens of every self-attention layer. Both scale exactly to a tile (convolutions
    ~ pixels, attention ~ tokens^2), so time = the probe's time x (a tile's FLOPs / the probe's) x tiles x steps,
    for one tile too. Memory: FULL_IMAGES float32 copies of the image, one batch of tiles' activations (every
    level's feature maps, kept for the skips) and the largest attention layer's own: on CPU and CUDA ATTN_COPIES
    [batch, tokens, channels] tensors; elsewhere ATTN_MATRICES float32 [batch, heads, tokens, tokens], which grow
    with the square of the tile's pixels (at 60,000 tokens one is 13 GiB).
    """
    B, _, h, w = x_shape
    pad_h, pad_w = _padding(model, x_shape, scale)
    H, W = scale * (h + pad_h), scale * (w + pad_w)
    net = Tiled(model, tile * scale, batch)
    th, tw = min(net.tile, H), min(net.tile, W)
    tiles = len(net.starts(H)) * len(net.starts(W))
    side = min(th, tw, max(PROBE, model.multiple))
    probe_seconds, conv_flops, attention = _probe(model, B, side)
    r = th * tw / side ** 2                                 # the tile's pixels per probe pixel
    attn_flops = lambda n: sum(4 * B * (tokens * n) ** 2 * channels for tokens, channels, _ in attention)  # noqa: E731
    seconds = probe_seconds * (conv_flops * r + attn_flops(r)) / (conv_flops + attn_flops(1)) * tiles * steps
    n = min(tiles, batch)                                  # tiles in one forward
    c = model.config
    per_pixel = sum(c.channels * m * (c.num_res_blocks + 2) / 4 ** k for k, m in enumerate(c.channel_mults))
    activations = n * B * th * tw * per_pixel * 4
    if next(model.parameters()).device.type in ("cpu", "cuda"):     # flash / memory-efficient SDPA: no matrix
        matrices = max((ATTN_COPIES * n * B * tokens * r * channels * 4 for tokens, channels, _ in attention), default=0)
    else:
        matrices = max((ATTN_MATRICES * n * B * heads * (tokens * r) ** 2 * 4 for tokens, _, heads in attention),
                       default=0)
    gib = (FULL_IMAGES * B * 3 * H * W * 4 + activations + matrices) / 2 ** 30
    return {"gib": gib, "seconds": seconds, "tiles": tiles}


def _probe(model, B: int, side: int):
    """One timed forward of a [B, 3, side, side] patch (after an untimed one: first calls set up kernels).
    Returns (seconds, the FLOPs of its convolutions, [(tokens, channels, heads) of each attention layer])."""
    conv_flops, attention = [0], []

    def conv_hook(m, _, out):
        conv_flops[0] += 2 * out.numel() * m.in_channels // m.groups * math.prod(m.kernel_size)

    def attn_hook(m, args):
        attention.append((args[0].shape[-2] * args[0].shape[-1], args[0].shape[1], m.heads))
    p = next(model.parameters())
    # in the layout the sampler gives the network (accel.SamplingNet): it changes speed, and which SDPA path runs
    probe = torch.zeros(B, 3, side, side, device=p.device).contiguous(memory_format=memory_format(p.device))
    gamma = torch.full((B,), 0.5, device=p.device)
    with torch.no_grad():
        model(probe, probe, gamma)
        hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        hooks += [m.register_forward_pre_hook(attn_hook) for m in model.modules() if isinstance(m, Attention)]
        try:
            _sync(p.device)
            start = time.perf_counter()
            model(probe, probe, gamma)
            _sync(p.device)
            seconds = time.perf_counter() - start
        finally:
            for hook in hooks:
                hook.remove()
    return seconds, max(conv_flops[0], 1), attention


def _sync(device) -> None:
    """Wait for the device's queued work: CUDA returns before it computes, and would be timed at ~0 s."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
