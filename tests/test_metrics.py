"""metrics.py against independent references: scikit-image's PSNR and SSIM on the same arrays, and the
defining properties of consistency and sharpness."""
import math

import pytest
import torch

from sr3_mini.metrics import consistency, high_frequency_share, psnr, sharpness, ssim
from sr3_mini.resize import downsample, upsample


def textured(B=3, H=48, W=40, seed=0, dtype=torch.float64):
    """Images in [-1, 1] with structure at every scale (coarse blobs + fine grain), not just white noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.randn(B, 3, H // 8, W // 8, generator=g, dtype=dtype),
                                             size=(H, W), mode="bicubic", align_corners=False)
    fine = torch.randn(B, 3, H, W, generator=g, dtype=dtype)
    return (0.6 * coarse + 0.3 * fine).tanh()


def noisy(y, level, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (y + level * torch.randn(y.shape, generator=g, dtype=y.dtype)).clamp(-1, 1)


def test_psnr_matches_skimage_and_closed_form():
    skm = pytest.importorskip("skimage.metrics")
    a = textured()
    b = noisy(a, 0.1)
    ours = psnr(a, b)
    assert ours.shape == (3,)
    for i in range(3):
        ref = skm.peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=2.0)
        assert abs(ours[i].item() - ref) < 1e-6
        # the same number on the [0, 1] scale with data_range 1
        ref01 = skm.peak_signal_noise_ratio(((a[i] + 1) / 2).numpy(), ((b[i] + 1) / 2).numpy(), data_range=1.0)
        assert abs(ours[i].item() - ref01) < 1e-6
    assert abs(psnr(a, b, reduction="mean").item() - ours.mean().item()) < 1e-12
    assert psnr(a[:1], a[:1]).item() == math.inf
    assert abs(psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.2)).item()
               - 10 * math.log10(4 / 0.04)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_matches_skimage_gaussian_window(dtype):
    skm = pytest.importorskip("skimage.metrics")
    a = textured(dtype=dtype)
    b = noisy(a, 0.2).to(dtype)
    ours = ssim(a, b)
    assert ours.shape == (3,)
    for i in range(3):
        ref = skm.structural_similarity(a[i].double().numpy(), b[i].double().numpy(), gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=False, data_range=2.0, channel_axis=0)
        assert abs(ours[i].item() - ref) < 1e-4
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))
    assert 0 < ssim(a, b, reduction="mean").item() < 1


def test_ssim_single_image_and_bad_sizes():
    a = textured(B=1)
    assert ssim(a[0], a[0]).shape == (1,)
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(1, 3, 10, 30), torch.zeros(1, 3, 10, 30))
    with pytest.raises(ValueError, match="same shape"):
        ssim(a, a[..., :-1])
    with pytest.raises(ValueError, match="reduction"):
        psnr(a, a, reduction="sum")


def test_consistency_zero_for_the_truth_and_units():
    y = textured(B=2, H=32, W=32)
    x = downsample(y, 4)
    assert torch.all(consistency(x, y) == 0)
    # units: a flat image downsamples to itself, so an output 0.2 too bright everywhere (0.1 on the [0, 1]
    # scale) has consistency 0.1^2 = 0.01
    flat = torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
    assert abs(consistency(downsample(flat, 4), flat + 0.2).item() - 0.01) < 1e-12
    assert consistency(x, upsample(x, 4), reduction="mean").item() > 0
    with pytest.raises(ValueError, match="shape"):
        consistency(x, y, scale=2)


def test_sharpness_bicubic_is_blurrier_and_truth_is_one():
    y = textured(B=2, H=64, W=64)
    bicubic = upsample(downsample(y, 4), 4)
    assert torch.allclose(sharpness(y, y), torch.ones(2, dtype=torch.float64))
    s_bic = sharpness(bicubic, y)
    assert torch.all(s_bic < 0.5), s_bic
    assert torch.all(sharpness(noisy(y, 0.3), y) > 1)
    share = high_frequency_share(y)
    assert torch.all((share > 0) & (share < 1))
    # white noise spreads its power evenly over the band [-0.5, 0.5]^2: the share above 0.125 is ~1 - pi/16
    white = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert abs(high_frequency_share(white).item() - (1 - math.pi * 0.125 ** 2)) < 0.03


def test_diversity_is_one_for_exact_draws_zero_for_the_mean_and_above_one_for_extra_noise():
    from sr3_mini.metrics import diversity
    g = torch.Generator().manual_seed(0)
    mean = textured(B=4, H=16, W=16)
    draw = lambda S, sd: mean + sd * torch.randn((S, *mean.shape), generator=g, dtype=mean.dtype)
    y = draw(1, 0.2)[0]                                   # the "photo": one more draw of the same distribution
    exact = diversity(draw(8, 0.2), y)
    assert exact.shape == (4,)
    assert ((exact - 1).abs() < 0.1).all(), exact          # 3,072 pixels per image: error ~ 3 %
    assert diversity(mean.expand(3, *mean.shape), y, reduction="mean") < 1e-20
    assert diversity(draw(8, 0.4), y, reduction="mean") > 1.4   # 2 (0.16) / (0.16 + 0.04) = 1.6
    # brute force over ordered pairs
    s = draw(3, 0.3)
    num = sum(((s[a] - s[b]) ** 2).mean(dim=(1, 2, 3)) for a in range(3) for b in range(3) if a != b) / 6
    den = sum(((s[a] - y) ** 2).mean(dim=(1, 2, 3)) for a in range(3)) / 3
    torch.testing.assert_close(diversity(s, y), num / den)
    with pytest.raises(ValueError, match="S >= 2"):
        diversity(s[:1], y)


def test_grain_counts_only_flat_tiles_and_is_one_for_the_photo():
    from sr3_mini.metrics import grain
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(2, 3, 64, 64, dtype=torch.float64)
    y[:, :, :, 32:] = textured(B=2, H=64, W=32)            # right half textured, left half flat ...
    y[:, :, :, :32] += 0.01 * torch.randn(2, 3, 64, 32, generator=g, dtype=torch.float64)   # ... with faint noise
    assert torch.allclose(grain(y, y), torch.ones(2, dtype=torch.float64))
    noisier = y.clone()
    noisier[:, :, :, :32] += 0.01 * torch.randn(2, 3, 64, 32, generator=g, dtype=torch.float64)
    assert (grain(noisier, y) > 1.5).all()                 # twice the noise power on the flat half: ~2
    textured_only = y.clone()
    textured_only[:, :, :, 32:] *= 3                       # changing the textured half does not count
    assert torch.allclose(grain(textured_only, y), torch.ones(2, dtype=torch.float64))
    assert grain(textured(B=1, H=64, W=64), textured(B=1, H=64, W=64)).isnan().all()   # no flat tile
    assert grain(y[:, :, :16, :16], y[:, :, :16, :16]).isnan().all()                   # smaller than a tile
