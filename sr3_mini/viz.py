"""Figures and widgets for the notebooks: the forward process (3)/(5) and the reverse trajectories (7)-(10)
made visible. Equation numbers are those of ``notebooks/EQUATIONS.md``. Relies on: diffusion, schedule.

Every function here is pure: it takes tensors (and a ``Schedule``) and returns a matplotlib ``Figure`` or an
ipywidgets box; it draws no random numbers (the caller passes ``noise``). A static figure and its widget are
built from the same frames, so what GitHub shows (the grid) is what the slider shows (the widget):
``to_display`` ([3, H, W] in [-1, 1] -> [H, W, 3] in [0, 1]); ``forward_frames`` (y_t by (5) for several t with
ONE fixed eps); static figures ``image_grid``, ``comparison_grid``, ``trajectory_grid``, ``schedule_figure``,
``demo_figure`` (the CLI's), ``plot_log`` (a run's curves), ``plot_schedule_search``; and widgets ``yt_widget``,
``trajectory_widget``, ``forward_reverse_widget`` (forward (5) beside the sampler at the same t): an
``IntSlider`` (+ ``Play``) and an ``Image`` showing a PNG (the schedule explorer is in ``viz_schedule``).

Widgets use only what ipywidgets 7.7 (Colab) and 8 share, and ipywidgets is imported inside the factories, so
the library imports where no notebook front end exists. A widget can be driven without a browser: set
``box.slider.value = k``, then ``box.current_frame`` is the frame just drawn, equal to ``box.frame_for(k)``.
In a notebook: the static grid first (nbval compares its ``<Figure size ...>`` line, GitHub shows its PNG; the
kernel needs ``%matplotlib inline``), then the widget in a cell tagged ``nbval-ignore-output``. The browser test
finds the slider by its CSS class and the picture as ``img.sr3-frame``.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from . import diffusion as D
from .schedule import Schedule

__all__ = ["to_display", "forward_frames", "image_grid", "comparison_grid", "trajectory_grid", "schedule_figure",
           "demo_figure", "plot_log", "plot_schedule_search", "yt_widget", "trajectory_widget",
           "forward_reverse_frames", "forward_reverse_widget"]


def to_display(t: torch.Tensor) -> np.ndarray:
    """An image ``[3, H, W]`` (or ``[1, 3, H, W]``) in [-1, 1] -> ``[H, W, 3]`` float numpy in [0, 1] for
    ``imshow``. Values outside [-1, 1] (y_t is mostly noise at large t) are clipped for display only."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"expected a tensor, got {type(t).__name__}")
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected an image [3, H, W], got shape {tuple(t.shape)}")
    return ((t.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def forward_frames(y_0: torch.Tensor, schedule: Schedule, ts, noise: torch.Tensor) -> torch.Tensor:
    """y_t for each t in ``ts`` (ints in 0..T) from ONE fixed ``noise`` eps, by (3)/(5), so that a row of frames
    (or a slider) shows the same noise growing as the signal fades. y_0, noise ``[3, H, W]`` ->
    ``[len(ts), 3, H, W]`` (dtype of y_0); t = 0 gives y_0 itself (gamma_0 = 1)."""
    if y_0.ndim != 3 or noise.shape != y_0.shape:
        raise ValueError(f"y_0 and noise must both be [3, H, W]; got {tuple(y_0.shape)} and {tuple(noise.shape)}")
    gamma = schedule.gamma(torch.as_tensor(list(ts), dtype=torch.long).reshape(-1))   # [K], float64
    K = gamma.shape[0]
    # (5): y_t = sqrt(gamma_t) y_0 + sqrt(1 - gamma_t) eps, the same eps for every t
    return D.q_sample(y_0.expand(K, *y_0.shape), gamma, noise.expand(K, *noise.shape))


def image_grid(frames, titles=None, ncols: int | None = None, figsize=None, suptitle: str | None = None):
    """A grid of images, one axes each (no empty axes): ``frames`` is ``[N, 3, H, W]`` or a list of
    ``[3, H, W]`` (sizes may differ; small ones are shown with nearest-neighbour pixels). Returns a pyplot
    ``Figure`` (show it with ``plt.show()``); its size depends only on N, ``ncols`` and ``figsize``."""
    frames = list(frames)
    n = len(frames)
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {n} images but {len(titles)} titles")
    ncols = min(n, 6) if ncols is None else int(ncols)
    nrows = -(-n // ncols)
    figsize = (2.0 * ncols, 2.2 * nrows) if figsize is None else figsize
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            fig.delaxes(ax)
            continue
        _show(ax, frames[i], None if titles is None else titles[i])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def comparison_grid(images: dict, crop=None, figsize=None, suptitle: str | None = None):
    """Images side by side under their names, e.g. ``{"x (LR)": x, "bicubic": x_up, "SR3": y, "y_0 (HR)": y_0}``
    (each ``[3, H, W]``; LR images are drawn with nearest-neighbour pixels at the same display size).
    ``crop=(top, left, size)`` in the pixels of the largest image adds a second row of zoomed crops (the crop box
    is scaled to each image's own size) and marks the box on the first row. Returns a pyplot ``Figure``."""
    if not images:
        raise ValueError("comparison_grid needs at least one image")
    names, ims = list(images), list(images.values())
    n, rows = len(ims), 1 if crop is None else 2
    figsize = (2.6 * n, 2.8 * rows) if figsize is None else figsize
    fig, axes = plt.subplots(rows, n, figsize=figsize, squeeze=False)
    full = max(im.shape[-1] for im in ims)
    for j, (name, im) in enumerate(zip(names, ims)):
        _show(axes[0, j], im, name)
        if crop is not None:
            top, left, size = (round(v * im.shape[-1] / full) for v in crop)
            if size < 1:
                raise ValueError(f"crop {crop} is less than one pixel of the {im.shape[-1]}-pixel image {name!r}")
            axes[0, j].add_patch(plt.Rectangle((left - 0.5, top - 0.5), size, size, fill=False, color="yellow",
                                               lw=1.2))
            _show(axes[1, j], im[:, top:top + size, left:left + size], None)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def trajectory_grid(frames_y_t, frames_y0_hat, ts, figsize=None):
    """The static twin of ``trajectory_widget``: a row of y_t and, under it, a row of y^_0 (8) at the same
    snapshots (``[K, 3, H, W]`` each; ``ts`` labels the columns). Returns a pyplot ``Figure``."""
    frames_y_t, frames_y0_hat = _check_trajectory(frames_y_t, frames_y0_hat, ts)
    K = len(ts)
    frames = list(frames_y_t) + list(frames_y0_hat)
    titles = [f"$y_t$, t = {t}" for t in ts] + [f"$\\hat y_0$ at t = {t}" for t in ts]
    return image_grid(frames, titles, ncols=K, figsize=figsize or (2.0 * K, 4.4))


def schedule_figure(schedules, figsize=(10, 3.2)):
    """A noise schedule, or a dict ``{name: Schedule}`` to compare several: left, gamma_t (solid) and the signal
    coefficient sqrt(gamma_t) of (3)/(5) (dashed) against t; right, the signal-to-noise ratio
    gamma_t / (1 - gamma_t) on a log scale (t >= 1). Returns a pyplot ``Figure`` with 2 axes."""
    if isinstance(schedules, Schedule):
        schedules = {schedules.name: schedules}
    fig, (ax_g, ax_snr) = plt.subplots(1, 2, figsize=figsize)
    for i, (name, s) in enumerate(schedules.items()):
        t, g = np.arange(s.T + 1), s.gammas.numpy()
        ax_g.plot(t, g, color=f"C{i}", label=f"{name}: $\\gamma_t$")
        ax_g.plot(t, np.sqrt(g), color=f"C{i}", ls="--", label=f"{name}: $\\sqrt{{\\gamma_t}}$")
        ax_snr.semilogy(t[1:], g[1:] / (1 - g[1:]), color=f"C{i}", label=name)
    ax_g.set(xlabel="t", title=r"signal: $\gamma_t$ (solid) and $\sqrt{\gamma_t}$ (dashed)")
    ax_g.legend(fontsize=7)
    ax_snr.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax_snr.set(xlabel="t", title=r"signal-to-noise ratio $\gamma_t\,/\,(1 - \gamma_t)$")
    ax_snr.legend(fontsize=7)
    fig.tight_layout()
    return fig


def demo_figure(x, results: dict, y, rows: dict, title: str, steps: int):
    """The demo's comparison: LR (nearest, so its pixels show) | bicubic | regression | SR3 | HR, PSNR and SSIM
    under each name, and a second row zoomed on the centre. ``x`` [1, 3, h, w], ``results`` {method: [1, 3, H, W]},
    ``y`` [1, 3, H, W], ``rows`` {method: {"psnr", "ssim", ...}}. Returns a pyplot ``Figure``."""
    names = {"bicubic": "bicubic", "regression": "regression", "SR3": f"SR3 ({steps} steps)"}
    images = {f"LR input x ({x.shape[-1]}x{x.shape[-2]})": x[0]}
    images.update({f"{names[k]}\n{rows[k]['psnr']:.2f} dB, SSIM {rows[k]['ssim']:.3f}": v[0]
                   for k, v in results.items()})
    images["HR ground truth y"] = y[0]
    H, W = y.shape[-2:]
    return comparison_grid(images, crop=(H * 3 // 8, W * 3 // 8, min(H, W) // 4), suptitle=title)


def plot_log(path, out_png) -> Path:
    """The training loss (and validation PSNR, if logged) of a run's log.jsonl, plotted to a PNG."""
    recs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    # a run resumed from an earlier checkpoint logs some steps twice: keep the last record of each step
    losses = sorted({r["step"]: r for r in recs if "loss" in r}.values(), key=lambda r: r["step"])
    val = sorted({r["step"]: r for r in recs if "val_psnr" in r}.values(), key=lambda r: r["step"])
    fig = Figure(figsize=(10 if val else 5, 3.5))   # no pyplot: headless, and the caller's backend is left alone
    axes = fig.subplots(1, 2 if val else 1, squeeze=False)
    axes[0, 0].plot([r["step"] for r in losses], [r["loss"] for r in losses])
    axes[0, 0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss (6)")
    if val:
        axes[0, 1].plot([r["step"] for r in val], [r["val_psnr"] for r in val], "o-", label="model (EMA)")
        axes[0, 1].plot([r["step"] for r in val], [r["val_psnr_bicubic"] for r in val], "--", label="bicubic")
        axes[0, 1].set(xlabel="step", ylabel="PSNR (dB)", title="held-out batch")
        axes[0, 1].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    return Path(out_png)


def plot_schedule_search(rows: list, path, metrics=("psnr", "ssim", "consistency", "sharpness")):
    """``evaluate.schedule_search``'s rows: one panel per metric against the number of steps, one line per
    beta_end; saved as a PNG at ``path``. Returns the path."""
    fig = Figure(figsize=(3.2 * len(metrics), 3.0), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for end in sorted({r["beta_end"] for r in rows}):
            line = sorted((r["steps"], r[metric]) for r in rows if r["beta_end"] == end)
            ax.plot([s for s, _ in line], [v for _, v in line], marker="o", label=f"beta_T={end:g}")
        ax.set_xlabel("steps")
        ax.set_title(metric)
        ax.set_xscale("log")
    axes[0].legend(fontsize="small")
    fig.savefig(path)
    return path


def yt_widget(y_0: torch.Tensor, schedule: Schedule, noise: torch.Tensor, t_init: int | None = None,
              play_step: int | None = None, figsize=(4.0, 4.3), dpi: int = 80):
    """A slider over t = 0..T showing y_t = ``forward_frames(y_0, schedule, [t], noise)[0]`` (the same fixed
    eps at every t). Returns an ipywidgets ``VBox`` with attributes ``slider`` (``IntSlider``, CSS class
    ``t-slider``, ``continuous_update=False``), ``play`` (``Play``, linked in the browser), ``image``
    (``Image``, PNG), ``frame_for(t)``, and ``current_value`` / ``current_frame``: the t and the ``[3, H, W]``
    frame last drawn."""
    T = schedule.T
    t_init = T // 2 if t_init is None else int(t_init)
    if not 0 <= t_init <= T:
        raise ValueError(f"t_init must be in 0..T = 0..{T}, got {t_init}")

    def frame_for(t: int) -> torch.Tensor:
        return forward_frames(y_0, schedule, [t], noise)[0]

    def render(t: int) -> tuple:
        frame = frame_for(t)
        title = f"$y_t$ at t = {t},  $\\gamma_t$ = {schedule.gamma(t).item():.4g}"
        return frame, _png([frame], [title], figsize, dpi)

    return _slider_box(render, 0, T, t_init, "t", "t-slider", play_step or max(1, T // 50), frame_for)


def trajectory_widget(frames_y_t, frames_y0_hat, ts, extra: dict | None = None, k_init: int = 0,
                      slider_class: str = "k-slider", figsize=None, dpi: int = 80):
    """A slider over the snapshots k = 0..K-1 of a reverse run (``sample.Trajectory``, noisiest first): y_t and
    y^_0 of (8) side by side, plus fixed ``extra`` panels (``{"x (LR)": x}``, each ``[3, H, W]``). ``frames_*``
    ``[K, 3, H, W]`` (one batch element: ``traj.y_t[:, 0]``), ``ts[k]`` labels snapshot k. As ``yt_widget``, with
    ``frame_for(k) -> (y_t, y0_hat)``; the slider has CSS class ``slider_class``."""
    frames_y_t, frames_y0_hat = _check_trajectory(frames_y_t, frames_y0_hat, ts)
    extra = dict(extra or {})
    K = len(ts)
    if not 0 <= k_init < K:
        raise ValueError(f"k_init must be in 0..{K - 1}, got {k_init}")
    figsize = figsize or (2.6 * (2 + len(extra)), 2.9)

    def frame_for(k: int) -> tuple:
        return frames_y_t[k], frames_y0_hat[k]

    def render(k: int) -> tuple:
        pair = frame_for(k)
        titles = [f"$y_t$, t = {ts[k]}", f"$\\hat y_0$ at t = {ts[k]}"] + list(extra)
        return pair, _png(list(pair) + list(extra.values()), titles, figsize, dpi)

    return _slider_box(render, 0, K - 1, k_init, "step", slider_class, 1, frame_for)


def forward_reverse_frames(y_0: torch.Tensor, noise: torch.Tensor, gammas, frames_y_t, frames_y0_hat) -> torch.Tensor:
    """For each snapshot k of a reverse run: y_t from (5) at ``gammas[k]`` with the fixed ``noise``, the sampler's
    y_t and its y^_0 (8). ``y_0``, ``noise`` ``[3, H, W]``; ``frames_*`` ``[K, 3, H, W]`` -> ``[K, 3, 3, H, W]``."""
    forward = torch.stack([D.q_sample(y_0, float(g), noise) for g in gammas])
    return torch.stack([forward, frames_y_t, frames_y0_hat], dim=1)


def forward_reverse_widget(y_0: torch.Tensor, noise: torch.Tensor, traj, k_init: int = 0,
                           slider_class: str = "fr-slider", figsize=(7.8, 2.9), dpi: int = 80):
    """A slider over the snapshots of a reverse run (``sample.Trajectory``, batch element 0) showing, at the same
    t and gamma_t, y_t from the forward process (5) next to the sampler's y_t and its y^_0
    (``forward_reverse_frames``). Same pattern as ``trajectory_widget``: ``slider``, ``play``, ``image``,
    ``frame_for(k)`` -> ``[3, 3, H, W]``, ``current_value`` / ``current_frame``."""
    frames = forward_reverse_frames(y_0, noise, traj.gamma, traj.y_t[:, 0], traj.y0_hat[:, 0])

    def frame_for(k: int) -> torch.Tensor:
        return frames[k]

    def render(k: int) -> tuple:
        t, g = traj.t[k], traj.gamma[k]
        titles = [f"forward (5): $y_t$, t = {t}", f"sampler: $y_t$, $\\gamma_t$ = {g:.3g}", "sampler: $\\hat y_0$"]
        return frames[k], _png(list(frames[k]), titles, figsize, dpi)

    return _slider_box(render, 0, len(traj) - 1, k_init, "step", slider_class, 1, frame_for)


def _slider_box(render, low: int, high: int, value: int, description: str, css_class: str, play_step: int,
                frame_for):
    """IntSlider + Play (jslink-ed, so Play moves the slider in the browser) above an Image; each change of the
    slider calls ``render(value) -> (frame, png)`` in the kernel and shows the PNG."""
    import ipywidgets as widgets   # here, not at module import: the library must import without a front end

    slider = widgets.IntSlider(value=value, min=low, max=high, step=1, description=description,
                               continuous_update=False, layout=widgets.Layout(width="420px"))
    slider.add_class(css_class)
    play = widgets.Play(value=value, min=low, max=high, step=play_step, interval=400, description="play")
    widgets.jslink((play, "value"), (slider, "value"))
    image = widgets.Image(format="png")
    image.add_class("sr3-frame")
    box = widgets.VBox([widgets.HBox([play, slider]), image])
    box.slider, box.play, box.image, box.frame_for = slider, play, image, frame_for

    def draw(v: int) -> None:
        frame, png = render(int(v))
        image.value = png
        box.current_value, box.current_frame = int(v), frame

    slider.observe(lambda change: draw(change["new"]), names="value")
    draw(value)
    return box


def _show(ax, im: torch.Tensor, title) -> None:
    ax.imshow(to_display(im), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def _png(frames, titles, figsize, dpi: int) -> bytes:
    """Frames side by side as PNG bytes, drawn on a bare ``Figure`` (not pyplot: nothing is displayed or kept)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    axes = fig.subplots(1, len(frames), squeeze=False)[0]
    for ax, im, title in zip(axes, frames, titles):
        _show(ax, im, title)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, wspace=0.05)   # tight_layout: 2x slower
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _check_trajectory(frames_y_t, frames_y0_hat, ts) -> tuple:
    frames_y_t, frames_y0_hat = torch.as_tensor(frames_y_t), torch.as_tensor(frames_y0_hat)
    if frames_y_t.ndim != 4 or frames_y_t.shape != frames_y0_hat.shape or frames_y_t.shape[0] != len(ts):
        raise ValueError("frames_y_t and frames_y0_hat must both be [K, 3, H, W] with K = len(ts); got "
                         f"{tuple(frames_y_t.shape)}, {tuple(frames_y0_hat.shape)} and {len(ts)} ts "
                         "(for a batched trajectory pass traj.y_t[:, b] and traj.y0_hat[:, b])")
    return frames_y_t, frames_y0_hat
