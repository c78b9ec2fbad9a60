"""sr3_mini.viz: the frames follow (5) with one fixed eps; the widgets, driven without a browser (set
``slider.value``), draw exactly those frames; the figures have the axes they promise; ipywidgets is not imported
by ``import sr3_mini.viz``."""
import ast
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sr3_mini import diffusion as D  # noqa: E402
from sr3_mini import viz  # noqa: E402
from sr3_mini.schedule import Schedule  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def scene():
    gen = torch.Generator().manual_seed(0)
    y_0 = torch.rand(3, 16, 16, generator=gen) * 2 - 1
    noise = torch.randn(3, 16, 16, generator=gen)
    return Schedule.linear(T=50, beta_start=1e-4, beta_end=0.2), y_0, noise


def _png_pixels(png: bytes) -> np.ndarray:
    return plt.imread(io.BytesIO(bytes(png)), format="png")


def test_to_display_maps_the_range_and_layout():
    t = torch.tensor([-1.0, 0.0, 1.0, 3.0]).reshape(1, 2, 2).expand(3, 2, 2)
    out = viz.to_display(t)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], [[0.0, 0.5], [1.0, 1.0]])  # -1 -> 0, 0 -> 1/2, 1 -> 1, clipped above
    assert viz.to_display(t[None]).shape == (2, 2, 3)
    with pytest.raises(ValueError):
        viz.to_display(torch.zeros(2, 4, 4))


def test_forward_frames_are_q_sample_with_one_fixed_noise(scene):
    s, y_0, noise = scene
    ts = [0, 1, 7, 25, 50]
    frames = viz.forward_frames(y_0, s, ts, noise)
    assert frames.shape == (len(ts), 3, 16, 16) and frames.dtype == y_0.dtype
    assert torch.equal(frames[0], y_0)  # gamma_0 = 1
    for frame, t in zip(frames, ts):
        g = s.gamma(t).item()
        torch.testing.assert_close(frame, D.q_sample(y_0, s.gamma(t), noise))
        torch.testing.assert_close(frame, g**0.5 * y_0 + (1 - g) ** 0.5 * noise)  # (5) by hand
    with pytest.raises(ValueError):
        viz.forward_frames(y_0, s, [51], noise)
    with pytest.raises(ValueError):
        viz.forward_frames(y_0[None], s, [1], noise[None])


def test_yt_widget_draws_the_frame_of_the_slider(scene):
    s, y_0, noise = scene
    w = viz.yt_widget(y_0, s, noise, t_init=3)
    assert (w.slider.min, w.slider.max, w.slider.value) == (0, s.T, 3)
    assert "t-slider" in w.slider._dom_classes and w.slider.continuous_update is False
    assert w.current_value == 3 and torch.equal(w.current_frame, viz.forward_frames(y_0, s, [3], noise)[0])
    all_frames = viz.forward_frames(y_0, s, range(s.T + 1), noise)
    pngs = {3: bytes(w.image.value)}
    for k in (0, 17, s.T):
        w.slider.value = k  # what moving the slider does
        assert w.current_value == k
        assert torch.equal(w.current_frame, all_frames[k]) and torch.equal(w.frame_for(k), all_frames[k])
        torch.testing.assert_close(w.current_frame, D.q_sample(y_0, s.gamma(k), noise))
        pngs[k] = bytes(w.image.value)
    assert all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs.values())
    # the image shown changes with t: the photo at t = 0 against nearly pure noise at t = T
    assert np.abs(_png_pixels(pngs[0]) - _png_pixels(pngs[s.T])).mean() > 0.01
    with pytest.raises(ValueError):
        viz.yt_widget(y_0, s, noise, t_init=s.T + 1)


def test_trajectory_widget_follows_the_slider(scene):
    s, y_0, noise = scene
    ts = [50, 30, 10, 0]
    y_t = viz.forward_frames(y_0, s, ts, noise)
    y0_hat = torch.stack([y_0 * (1 - k / 10) for k in range(len(ts))])
    w = viz.trajectory_widget(y_t, y0_hat, ts, extra={"y_0": y_0})
    assert (w.slider.min, w.slider.max, w.slider.value) == (0, len(ts) - 1, 0)
    assert "k-slider" in w.slider._dom_classes
    before = bytes(w.image.value)
    for k in (2, 3, 1):
        w.slider.value = k
        assert w.current_value == k
        assert torch.equal(w.current_frame[0], y_t[k]) and torch.equal(w.current_frame[1], y0_hat[k])
        assert all(torch.equal(a, b) for a, b in zip(w.frame_for(k), (y_t[k], y0_hat[k])))
    assert bytes(w.image.value) != before
    with pytest.raises(ValueError):
        viz.trajectory_widget(y_t, y0_hat[:-1], ts)
    with pytest.raises(ValueError):
        viz.trajectory_widget(y_t, y0_hat, ts, k_init=len(ts))


def test_grids_have_one_axes_per_image(scene):
    s, y_0, noise = scene
    frames = viz.forward_frames(y_0, s, [0, 5, 10, 20, 50], noise)
    fig = viz.image_grid(frames, [f"t = {t}" for t in (0, 5, 10, 20, 50)], ncols=3)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 5
    assert [ax.get_title() for ax in fig.axes] == ["t = 0", "t = 5", "t = 10", "t = 20", "t = 50"]
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), viz.to_display(y_0))
    assert len(viz.image_grid(frames).axes) == 5
    with pytest.raises(ValueError):
        viz.image_grid(frames, ["just one title"])

    lr = y_0[:, ::4, ::4]
    fig = viz.comparison_grid({"HR": y_0, "LR": lr})
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["HR", "LR"]
    fig = viz.comparison_grid({"HR": y_0, "LR": lr}, crop=(4, 8, 8))
    assert len(fig.axes) == 4  # a second row of crops, scaled to each image's size
    shapes = [ax.images[0].get_array().shape[:2] for ax in fig.axes]  # row-major: HR, LR, HR crop, LR crop
    assert shapes == [(16, 16), (4, 4), (8, 8), (2, 2)]

    fig = viz.trajectory_grid(frames[:3], frames[:3], [50, 10, 0])
    assert len(fig.axes) == 6
    fig = viz.schedule_figure({"linear": s, "cosine": Schedule.cosine(50)})
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4 and len(fig.axes[1].lines) == 3  # + the SNR = 1 line


def test_viz_imports_ipywidgets_only_inside_functions():
    # the library must import where no notebook front end exists (DESIGN.md); a fresh interpreter would be the
    # direct check, but costs seconds of torch import: read the module's top-level imports instead
    tree = ast.parse(Path(viz.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert names and not any("ipywidgets" in name or "IPython" in name for name in names)
    assert not any(name.endswith("train") or name == "sr3_mini.train" for name in names)  # viz never imports train
