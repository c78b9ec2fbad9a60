"""What ``tiling.estimate_cost`` tells ``sr3-mini upscale`` before a large image runs, checked against what can be
counted or measured (issue 18, item 9: the 4000 x 3000 test of tests/test_cli.py asserted gib > 8, tiles > 500 and
seconds > 3600, thresholds that any estimate of that size passes).

- tiles: exact, against the tile layout counted by hand (stride = tile - overlap, overlap = tile / 4);
- memory: at least the float32 HR images every tiled step holds (x_up, y_t, eps), and within the factor 2 its
  docstring claims of the peak tensor memory of a real tiled run (torch.profiler's allocation events);
- time: not asserted. The estimate times one *cold* forward of a probe patch (first-call set-up included), which
  puts it 2-5x above a measured run on this CPU (more on a GPU, where the first call also autotunes): a bound
  loose enough to pass that would check nothing. The estimator is reworked by a later issue; a timing
  check comes with its fix.
"""
import math

import pytest
import torch

from sr3_mini.tiling import estimate_cost, upscale_image
from sr3_mini.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_unet() -> UNet:
    """The tiny preset with 4 levels (multiple 8), as tests/test_cli.py's."""
    torch.manual_seed(0)
    return UNet.from_preset("tiny", channel_mults=(1, 2, 2, 2)).eval()


def tiles_along(size: int, tile: int) -> int:
    """Tiles of ``tile`` pixels overlapping by tile / 4 that cover ``size`` pixels, the last one flush with the end."""
    return 1 if size <= tile else math.ceil((size - tile) / (tile - tile // 4)) + 1


def test_a_4000_by_3000_photo_tiles_and_memory():
    model = tiny_unet()
    cost = estimate_cost(model, (1, 3, 3000, 4000), 4, steps=100, tile=128)     # 128 LR = 512 HR pixels a tile
    H, W = 4 * 3000, 4 * 4000                                                    # multiples of 8: no padding
    assert cost["tiles"] == tiles_along(H, 512) * tiles_along(W, 512) == 31 * 42
    images = 3 * (3 * H * W * 4) / 2**30                                         # x_up, y_t, eps in float32
    assert cost["gib"] >= images > 6


def test_the_memory_estimate_is_within_2x_of_a_measured_tiled_run():
    from torch.profiler import ProfilerActivity, profile

    model, shape, tile = tiny_unet(), (1, 3, 64, 96), 16                        # 40 tiles of 64 x 64 HR pixels
    cost = estimate_cost(model, shape, 4, steps=1, tile=tile)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.no_grad():
        upscale_image(model, "sr3", x, 4, steps=1, generator=torch.Generator().manual_seed(0), progress=False,
                      tile=tile)
    live = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):                          # allocations > 0, frees < 0
        live += nbytes
        peak = max(peak, live)
    assert cost["tiles"] == tiles_along(256, 64) * tiles_along(384, 64) == 40
    assert 0.5 <= cost["gib"] / (peak / 2**30) <= 2
