"""How SR3's outputs are scored: PSNR, SSIM, consistency (Saharia et al. 2021, section 4), and a sharpness
measure that needs no pretrained network.

Saharia et al. report PSNR and SSIM while stressing that neither tracks human judgement (a blurry regression
output beats a sharp SR3 sample on both), plus *consistency*: the MSE between the LR input x and the output
downsampled the same way x was made (``sr3_mini.resize.downsample``). FID and the 2AFC fool rate need an
Inception network or people; ``sharpness`` stands in for "is the detail there", relative to the ground truth.

Conventions, the same for every function here:
  * images are ``[B, 3, H, W]`` (a single ``[3, H, W]`` is treated as B = 1) with values in [-1, 1];
  * per-image results come back as ``[B]``; ``reduction="mean"`` gives their mean (a 0-d tensor);
  * arithmetic is float64 (metrics are small; float32 sums drift), results in float64 too;
  * no gradients are tracked.
Relies on: ``resize`` (the downsampling that makes x).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .resize import downsample

__all__ = ["psnr", "ssim", "consistency", "sharpness", "high_frequency_share", "diversity", "grain", "scores"]


@torch.no_grad()
def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, reduction: str = "none") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, per image ``[B]``.

    ``data_range=2`` is the width of [-1, 1], so the value equals the usual PSNR of the same images mapped to
    [0, 1] (or to [0, 255] with data_range 255). Identical images give +inf.
    """
    a, b = _pair(a, b)
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return _reduce(10 * torch.log10(data_range ** 2 / mse), reduction)


@torch.no_grad()
def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, reduction: str = "none",
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity of Wang et al. (2004) with their Gaussian window, per image ``[B]``.

    Window: Gaussian with sigma = 1.5 truncated at 3.5 sigma (11 x 11), population (co)variances,
    C1 = (k1 R)^2, C2 = (k2 R)^2 with R = ``data_range`` (2 for [-1, 1]). RGB: SSIM of each channel, then the
    mean over channels. Border convention, that of ``skimage.metrics.structural_similarity(...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=0)``: the SSIM map is averaged
    only where the whole window lies inside the image (scikit-image filters a reflect-padded image and then
    crops the 5-pixel border, which is the same thing), so images must be at least 11 x 11.
    """
    a, b = _pair(a, b)
    B, C, H, W = a.shape
    k = _gaussian_window(sigma, a.device)
    if H < k.numel() or W < k.numel():
        raise ValueError(f"ssim needs images of at least {k.numel()}x{k.numel()}, got {H}x{W}")

    def blur(z):  # separable Gaussian, valid region only: [B, C, H, W] -> [B*C, 1, H-10, W-10]
        z = z.reshape(B * C, 1, H, W)
        return F.conv2d(F.conv2d(z, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2                        # sigma_a^2 = E[a^2] - E[a]^2 (population)
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b                        # sigma_ab
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    # SSIM = (2 mu_a mu_b + C1)(2 sigma_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2))
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return _reduce(s.reshape(B, -1).mean(dim=1), reduction)


@torch.no_grad()
def consistency(x: torch.Tensor, y_hat: torch.Tensor, scale: int = 4, reduction: str = "none") -> torch.Tensor:
    """The paper's consistency: MSE between the LR input ``x`` ``[B, 3, h, w]`` and the output ``y_hat``
    ``[B, 3, h*scale, w*scale]`` downsampled exactly as x was made (``resize.downsample``), per image ``[B]``.

    Units: plain MSE of pixel values scaled to [0, 1] (the [-1, 1] MSE divided by 4). The paper tabulates
    "MSE (x 1e-5)" without stating its pixel scale; we assume [0, 1], so multiply by 1e5 to put a value beside
    the paper's column. 0 means the output is exactly consistent with its input.
    """
    x, _ = _pair(x, x)
    y_hat, _ = _pair(y_hat, y_hat)
    x_hat = downsample(y_hat, scale)
    if x_hat.shape != x.shape:
        raise ValueError(f"downsample(y_hat, {scale}) has shape {tuple(x_hat.shape)} but x has {tuple(x.shape)}")
    # ([-1, 1] difference / 2)^2 is the squared difference on the [0, 1] scale
    return _reduce(((x_hat - x) / 2).pow(2).mean(dim=(1, 2, 3)), reduction)


@torch.no_grad()
def high_frequency_share(y: torch.Tensor, cutoff: float = 0.125) -> torch.Tensor:
    """Fraction of an image's spectral power above ``cutoff`` cycles/pixel, per image ``[B]``.

    Computed on luminance (Rec. 601 weights), mean removed, under a 2-D Hann window (so the image border does
    not add a spurious cross of high frequencies); the radial frequency of each FFT bin is
    sqrt(f_y^2 + f_x^2) in cycles per pixel (Nyquist = 0.5). ``cutoff=0.125`` is the Nyquist frequency of a
    x4 LR image in HR pixels: the band the input cannot carry, which the super-resolver must invent.
    """
    y, _ = _pair(y, y)
    power, radius = _spectrum(y)
    total = power.sum(dim=(1, 2))
    return (power * (radius > cutoff)).sum(dim=(1, 2)) / total.clamp_min(1e-30)


@torch.no_grad()
def sharpness(y_hat: torch.Tensor, y_ref: torch.Tensor, cutoff: float = 0.125,
              reduction: str = "none") -> torch.Tensor:
    """How much fine detail ``y_hat`` has relative to the ground truth ``y_ref``, per image ``[B]``:
    ``high_frequency_share(y_hat) / high_frequency_share(y_ref)``.

    1.0 means as much energy above the cutoff as the HR image (not that the detail is the right detail: PSNR
    and SSIM judge that); a bicubic upsample or a regression output is below 1; noise or ringing goes above 1.
    A flat reference (no detail at all) gives inf or nan.
    """
    y_hat, y_ref = _pair(y_hat, y_ref)
    return _reduce(high_frequency_share(y_hat, cutoff) / high_frequency_share(y_ref, cutoff), reduction)


@torch.no_grad()
def grain(y_hat: torch.Tensor, y: torch.Tensor, patch: int = 32, flat_std: float = 14 / 255, cutoff: float = 0.125,
          reduction: str = "none") -> torch.Tensor:
    """Noise left on flat areas, per image ``[B]``: over the ``patch`` x ``patch`` tiles of the photo ``y`` whose
    standard deviation is under ``flat_std`` (on the 0..1 scale: 14/255 by default), the spectral power of
    ``y_hat`` above ``cutoff`` cycles/pixel divided by the photo's own there. 1 = as much fine energy on flat
    areas as the photo; a sampler that leaves grain gives more, one that smooths gives less. NaN for an image
    with no flat tile. Power on luminance under a Hann window, as ``high_frequency_share``."""
    y_hat, y = _pair(y_hat, y)
    B, C, H, W = y.shape
    if H < patch or W < patch:                                             # no whole tile: nothing to score
        return _reduce(torch.full((B,), float("nan"), dtype=y.dtype, device=y.device), reduction)
    tiles = lambda t: t[..., :H // patch * patch, :W // patch * patch].unfold(2, patch, patch).unfold(3, patch, patch)
    a, b = tiles(y_hat), tiles(y)                                          # [B, C, nh, nw, patch, patch]
    flat = (b / 2).std(dim=(1, 4, 5)) < flat_std                           # [B, nh, nw]; std on the 0..1 scale
    power = lambda t: _high_power(t.permute(0, 2, 3, 1, 4, 5).reshape(-1, C, patch, patch), cutoff).view(B, *flat.shape[1:])
    num = (power(a) * flat).sum(dim=(1, 2))
    den = (power(b) * flat).sum(dim=(1, 2))
    out = torch.where(flat.any(dim=(1, 2)), num / den.clamp_min(1e-30), torch.full_like(num, float("nan")))
    return _reduce(out, reduction)


@torch.no_grad()
def diversity(samples: torch.Tensor, y: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Does a sampler draw from p(y|x) or average it? Per image ``[B]``:

        diversity = mean_{a != b} MSE(sample_a, sample_b) / mean_a MSE(sample_a, y)

    ``samples`` ``[S, B, C, H, W]``: S >= 2 draws for each of B inputs (same x, different seeds); ``y`` the
    photos ``[B, C, H, W]``. For an exact sampler of p(y|x) the photo and every sample are independent draws of
    the same distribution, so numerator and denominator both equal 2 tr Var[y | x] in expectation: the ratio is
    1. A deterministic predictor (regression, the posterior mean) gives 0; samples noisier than the posterior
    give more than 1. Any channel count (the toy problem's images too); float64 arithmetic.
    """
    if not isinstance(samples, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("samples and y must be tensors")
    if samples.ndim != y.ndim + 1 or samples.shape[1:] != y.shape or samples.shape[0] < 2:
        raise ValueError(f"samples must be [S >= 2, *y.shape] = [S, {', '.join(map(str, y.shape))}], got "
                         f"{tuple(samples.shape)}")
    s, y = samples.detach().to(torch.float64), y.detach().to(torch.float64)
    S, dims = s.shape[0], tuple(range(2, s.ndim))
    centred = s - s.mean(dim=0, keepdim=True)
    # sum over pairs a != b of ||s_a - s_b||^2 = 2 S sum_a ||s_a - mean||^2; there are S (S - 1) ordered pairs
    between = 2 * S * centred.pow(2).mean(dim=dims).sum(dim=0) / (S * (S - 1))     # [B]
    to_photo = (s - y).pow(2).mean(dim=dims).mean(dim=0)                          # [B]
    return _reduce(between / to_photo.clamp_min(1e-30), reduction)


def scores(y_hat: torch.Tensor, y: torch.Tensor, x: torch.Tensor, scale: int = 4) -> dict:
    """The four measures of an output ``y_hat`` against the photo ``y`` and its LR input ``x``, per image:
    ``{"psnr", "ssim", "consistency", "sharpness"} -> [B]`` tensors (what the CLI, ``schedule_search`` and the
    benchmarks report)."""
    return {"psnr": psnr(y_hat, y), "ssim": ssim(y_hat, y), "consistency": consistency(x, y_hat, scale),
            "sharpness": sharpness(y_hat, y)}


def _spectrum(y: torch.Tensor):
    """``(power [B, H, W], radius [H, W])``: the spectral power of the luminance (Rec. 601 weights, mean removed,
    under a 2-D Hann window) and each FFT bin's radial frequency sqrt(f_y^2 + f_x^2) in cycles per pixel."""
    H, W = y.shape[-2:]
    lum = (0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2])                  # [B, H, W]
    lum = lum - lum.mean(dim=(1, 2), keepdim=True)
    hann = torch.outer(torch.hann_window(H, periodic=False, dtype=y.dtype, device=y.device),
                       torch.hann_window(W, periodic=False, dtype=y.dtype, device=y.device))
    power = torch.fft.fft2(lum * hann).abs().pow(2)                               # [B, H, W]
    fy = torch.fft.fftfreq(H, dtype=y.dtype, device=y.device)
    fx = torch.fft.fftfreq(W, dtype=y.dtype, device=y.device)
    return power, (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt()                    # cycles / pixel


def _high_power(y: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Spectral power of the luminance above ``cutoff`` cycles/pixel, per image."""
    power, radius = _spectrum(y)
    return (power * (radius > cutoff)).sum(dim=(1, 2))


def _gaussian_window(sigma: float, device) -> torch.Tensor:
    radius = int(3.5 * sigma + 0.5)                        # truncate = 3.5 sigma, as scipy.ndimage and skimage
    r = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    return k / k.sum()


def _pair(a: torch.Tensor, b: torch.Tensor):
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError("images must be tensors")
    a, b = (t.unsqueeze(0) if t.ndim == 3 else t for t in (a, b))
    if a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] (or [3, H, W]), got {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.detach().to(torch.float64), b.detach().to(torch.float64)


def _reduce(v: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return v
    if reduction == "mean":
        return v.mean()
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")

