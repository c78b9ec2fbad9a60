"""sr3_mini.resize against independent computations: Keys' cubic kernel written out in float64 (the
anti-aliased PIL form for downsample, PyTorch's a = -0.75 form for upsample), PIL's own resize, and the
shapes, dtypes, range and argument checks."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sr3_mini import resize
from sr3_mini.resize import downsample, upsample

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def keys(s: float, a: float) -> float:
    """Keys' cubic convolution kernel (1981) with parameter a."""
    s = abs(s)
    if s < 1:
        return (a + 2) * s**3 - (a + 3) * s**2 + 1
    if s < 2:
        return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
    return 0.0


def down_matrix(n: int, scale: int, a: float = -0.5) -> np.ndarray:
    """[n/scale, n] weights of anti-aliased downsampling (PIL): the kernel stretched by ``scale`` around the
    output pixel's centre (i + 1/2) scale in input coordinates, cut at the borders and renormalised."""
    W = np.zeros((n // scale, n))
    for i in range(n // scale):
        centre, support = (i + 0.5) * scale, 2 * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n)
        w = np.array([keys((j + 0.5 - centre) / scale, a) for j in range(lo, hi)])
        W[i, lo:hi] = w / w.sum()
    return W


def up_matrix(n: int, scale: int, a: float = -0.75) -> np.ndarray:
    """[n scale, n] weights of plain bicubic enlargement: output pixel i samples the input at
    (i + 1/2)/scale - 1/2 with the four nearest pixels, edge pixels repeated beyond the border."""
    W = np.zeros((n * scale, n))
    for i in range(n * scale):
        src = (i + 0.5) / scale - 0.5
        i0 = math.floor(src)
        for k in (-1, 0, 1, 2):
            W[i, min(max(i0 + k, 0), n - 1)] += keys(src - (i0 + k), a)
    return W


def separable(img: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.einsum("ih,bchw,jw->bcij", rows, img.double().numpy(), cols))


def images(B=2, H=16, W=24, seed=0, amp=0.5, dtype=torch.float64):
    return (torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1) * amp


@pytest.mark.parametrize("scale", [2, 4])
def test_downsample_is_the_antialiased_keys_kernel_with_a_minus_half(scale):
    y = images()                                      # amp 0.5: no value near the clamp
    expected = separable(y, down_matrix(16, scale), down_matrix(24, scale))
    torch.testing.assert_close(downsample(y, scale), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(downsample(y.float(), scale), expected.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 4])
def test_downsample_matches_pil_bicubic_resize(scale):
    y = images(B=1, H=32, W=20, seed=1, dtype=torch.float32)
    pil = np.stack([np.asarray(Image.fromarray(c.numpy(), mode="F").resize((20 // scale, 32 // scale),
                                                                             Image.BICUBIC)) for c in y[0]])
    torch.testing.assert_close(downsample(y[0], scale), torch.from_numpy(pil), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 4])
def test_upsample_is_the_keys_kernel_with_a_minus_three_quarters_and_not_pils(scale):
    x = images(H=4, W=6, seed=2)
    expected = separable(x, up_matrix(4, scale), up_matrix(6, scale))
    torch.testing.assert_close(upsample(x, scale), expected, rtol=0, atol=1e-12)
    # the documented difference: the other kernel (a = -0.5, PIL's) gives a visibly different x_up
    other = separable(x, up_matrix(4, scale, a=-0.5), up_matrix(6, scale, a=-0.5))
    assert (upsample(x, scale) - other).abs().max() > 1e-2


def test_module_docstring_states_both_kernels():
    doc = resize.__doc__
    assert "a = -0.5" in doc and "a = -0.75" in doc and "PIL" in doc


def test_shapes_dtypes_and_range():
    y = torch.ones(2, 3, 16, 16)
    y[..., ::2, :] = -1                               # stripes: the cubic kernels overshoot beyond [-1, 1]
    for dtype in (torch.float32, torch.float64):
        yd = y.to(dtype)
        x = downsample(yd, 4)
        assert x.shape == (2, 3, 4, 4) and x.dtype == dtype
        assert downsample(yd[0], 4).shape == (3, 4, 4)
        assert torch.equal(downsample(yd[0], 4), x[0])
        up = upsample(x.sign(), 4)
        assert up.shape == (2, 3, 16, 16) and up.dtype == dtype and upsample(x[0], 4).shape == (3, 16, 16)
        assert up.abs().max() <= 1 and x.abs().max() <= 1            # clamped, like a saved image
    checker = torch.zeros(1, 3, 4, 4)
    checker[..., ::2, ::2] = checker[..., 1::2, 1::2] = 1
    checker = checker * 2 - 1
    raw = torch.from_numpy(np.einsum("ih,bchw,jw->bcij", up_matrix(4, 4), checker.double().numpy(),
                                     up_matrix(4, 4)))
    assert raw.abs().max() > 1.1                       # unclamped bicubic overshoots here ...
    torch.testing.assert_close(upsample(checker, 4).double(), raw.clamp(-1, 1), rtol=0, atol=1e-6)  # ... clamped
    const = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(upsample(downsample(const, 2), 2), const)   # both kernels sum to one


def test_bad_arguments():
    y = torch.zeros(1, 3, 8, 8)
    for scale in (0, 2.5, True, -2):
        with pytest.raises(ValueError, match="scale"):
            downsample(y, scale)
        with pytest.raises(ValueError, match="scale"):
            upsample(y, scale)
    with pytest.raises(ValueError, match="multiples of scale=3"):
        downsample(y, 3)
    for bad in (torch.zeros(8, 8), torch.zeros(1, 1, 3, 8, 8), np.zeros((3, 8, 8))):
        with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
            downsample(bad, 2)
