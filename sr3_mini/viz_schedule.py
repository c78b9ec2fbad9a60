"""The noise schedule and Algorithm 1's p(gamma), made explorable: notebook 03's figure grid and its widget.

SR3 trains on gamma ~ p(gamma) = (1/T) sum_t U(gamma_t, gamma_{t-1}) (Algorithm 1; ``Schedule.sample_gamma``,
``Schedule.gamma_cdf``). Every interval (gamma_t, gamma_{t-1}] carries mass 1/T, so F(gamma_t) = 1 - t/T: the
quantiles of p(gamma) are the schedule read sideways (``p_gamma_quantile``). This module shows, for a schedule,
gamma_t and sqrt(gamma_t) of (3), the density of p(gamma) with its quartiles, and y~ by (5) at p(gamma)'s median:

- ``p_gamma_quantile``, ``schedule_summary``: the numbers (pure, no drawing).
- ``schedule_explorer_figure``: one row per schedule (the static grid; GitHub shows it, nbval checks it).
- ``schedule_explorer``: sliders for a linear schedule's beta_T and T over the same figure; driven without a
  browser by setting ``box.beta_slider.value`` / ``box.T_slider.value``, then ``box.current_frame`` is the summary
  just drawn (``== box.frame_for(T, beta_end)``).

Same conventions as ``viz`` (kept apart because viz.py is at its length limit): ipywidgets imported inside the
factory, only what ipywidgets 7.7 (Colab) and 8 share, the picture is an ``Image`` of class ``sr3-frame``.
Relies on: schedule, diffusion (q_sample), viz (``_show``).
"""
from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from . import diffusion as D
from .schedule import Schedule
from .viz import _show

__all__ = ["p_gamma_quantile", "schedule_summary", "schedule_explorer_figure", "schedule_explorer"]


def p_gamma_quantile(schedule: Schedule, q: float) -> float:
    """The q-quantile (0 < q < 1) of Algorithm 1's p(gamma). Each interval (gamma_t, gamma_{t-1}] carries mass 1/T,
    so F(gamma_t) = 1 - t/T: the quantile is the schedule itself read sideways, gamma_t at t = T (1 - q),
    interpolated linearly inside an interval (where F is linear)."""
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    s = schedule.T * (1 - q)
    t = max(1, int(np.ceil(s)))
    lo, hi = schedule.gamma(t).item(), schedule.gamma(t - 1).item()
    return lo + (t - s) * (hi - lo)


def schedule_summary(schedule: Schedule) -> dict:
    """What the schedule explorer reports: ``gamma_T``; ``t_half``, the first t with gamma_t <= 1/2 (SNR = 1);
    ``p_below_0.1`` = P(gamma <= 0.1) under p(gamma) (``Schedule.gamma_cdf``); and ``quartiles``, p(gamma)'s
    quartiles (``p_gamma_quantile`` at 1/4, 1/2, 3/4)."""
    return {"T": schedule.T, "gamma_T": schedule.gamma(schedule.T).item(),
            "t_half": int((schedule.gammas > 0.5).sum()),
            "p_below_0.1": schedule.gamma_cdf(0.1).item(),
            "quartiles": tuple(p_gamma_quantile(schedule, q) for q in (0.25, 0.5, 0.75))}


def schedule_explorer_figure(schedules, y_0: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                             figsize=None, fig: Figure | None = None, g_min: float = 1e-6):
    """One row per schedule (a ``Schedule`` or ``{label: Schedule}``): (a) gamma_t and sqrt(gamma_t) against t,
    with p(gamma)'s quartiles where they sit on the curve (t = 3T/4, T/2, T/4); (b) p(gamma)'s CDF F against
    gamma on a log axis from ``g_min`` to 1 (the density is its slope; the height at the left edge is the share of
    draws with gamma < g_min, practically pure noise), the quartiles and gamma = 0.1 marked; (c) when ``y_0`` and
    ``noise`` (``[3, H, W]``) are given, y~ by (5) at each quartile: a quarter of the training inputs are noisier
    than the first, half than the second. Numbers from ``schedule_summary``. Returns a pyplot ``Figure``, or draws
    on ``fig`` (a bare ``Figure``: what the widget does)."""
    if isinstance(schedules, Schedule):
        schedules = {schedules.name: schedules}
    n_im = 3 if y_0 is not None else 0
    if fig is None:
        fig = plt.figure(figsize=figsize or (7.0 + 1.9 * n_im, 2.8 * len(schedules)))
    axes = fig.subplots(len(schedules), 2 + n_im, squeeze=False, gridspec_kw={"width_ratios": [2, 2] + [1] * n_im})
    for (label, s), (ax_g, ax_F, *ax_im) in zip(schedules.items(), axes):
        info, t, g = schedule_summary(s), np.arange(s.T + 1), s.gammas.numpy()
        q_ts = [s.T * 3 // 4, s.T // 2, s.T // 4]  # F(gamma_t) = 1 - t/T: the quartiles 1/4, 1/2, 3/4
        ax_g.plot(t, g, color="C0", label="$\\gamma_t$")
        ax_g.plot(t, np.sqrt(g), color="C0", ls="--", label="$\\sqrt{\\gamma_t}$")
        ax_g.plot(q_ts, info["quartiles"], "o", color="C3", ms=4, label="quartiles of p(γ)")
        ax_g.set(xlabel="t", ylim=(-0.03, 1.03))
        ax_g.set_title(f"{label}\n$\\gamma_T$ = {info['gamma_T']:.2g}, SNR = 1 at t = {info['t_half']}", fontsize=9)
        ax_g.legend(fontsize=7, loc="upper right")
        g_axis = np.geomspace(g_min, 1.0, 400)
        ax_F.plot(g_axis, s.gamma_cdf(torch.from_numpy(g_axis)).numpy(), color="C0")
        ax_F.plot(info["quartiles"], [0.25, 0.5, 0.75], "o", color="C3", ms=4)
        ax_F.axvline(0.1, color="grey", lw=0.8, ls=":")
        ax_F.set(xscale="log", xlim=(g_min, 1.0), ylim=(-0.03, 1.03), xlabel="γ")
        ax_F.set_title(f"p(γ)'s CDF: P(γ ≤ 0.1) = {info['p_below_0.1']:.2f}\n"
                       f"P(γ < {g_min:.0e}) = {s.gamma_cdf(g_min).item():.2f}", fontsize=9)
        for ax, q, qg in zip(ax_im, ("1/4", "1/2", "3/4"), info["quartiles"]):
            _show(ax, D.q_sample(y_0, qg, noise), f"ỹ at the {q}\nquantile, γ = {qg:.2g}")
            ax.title.set_fontsize(8)
    fig.tight_layout()
    return fig


def schedule_explorer(y_0: torch.Tensor | None = None, noise: torch.Tensor | None = None, T: int = 2000,
                      beta_start: float = 1e-6, beta_end: float = 1e-2, figsize=(11.0, 2.9), dpi: int = 72):
    """Sliders for the linear schedule ``Schedule.linear(T, beta_start, beta_end)``: ``beta_end`` (a
    ``FloatLogSlider``, 1e-3..1e-1, CSS class ``beta-slider``) and ``T`` (``IntSlider``, 100..4000, class
    ``T-slider``), both ``continuous_update=False``, above an ``Image`` (class ``sr3-frame``) showing
    ``schedule_explorer_figure`` of that schedule. Returns a ``VBox`` with attributes ``beta_slider``,
    ``T_slider``, ``image``, ``frame_for(T, beta_end) -> schedule_summary``, and ``current_value`` (T, beta_end)
    / ``current_frame`` (the summary) last drawn."""
    import ipywidgets as widgets   # here, not at module import: the library must import without a front end

    style = {"description_width": "60px"}
    beta = widgets.FloatLogSlider(value=beta_end, base=10, min=-3, max=-1, step=0.25, description="β_T",
                                  readout_format=".3g", continuous_update=False, style=style,
                                  layout=widgets.Layout(width="420px"))
    steps = widgets.IntSlider(value=T, min=100, max=4000, step=100, description="T", continuous_update=False,
                              style=style, layout=widgets.Layout(width="420px"))
    beta.add_class("beta-slider")
    steps.add_class("T-slider")
    image = widgets.Image(format="png")
    image.add_class("sr3-frame")
    box = widgets.VBox([widgets.HBox([beta, steps]), image])

    def frame_for(T: int, beta_end: float) -> dict:
        return schedule_summary(Schedule.linear(int(T), beta_start, float(beta_end)))

    def draw(_=None) -> None:
        s = Schedule.linear(int(steps.value), beta_start, float(beta.value))
        fig = Figure(figsize=figsize, dpi=dpi)
        schedule_explorer_figure({f"linear, T = {s.T}, β: {beta_start:g} → {beta.value:.3g}": s}, y_0, noise,
                                 fig=fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        image.value = buf.getvalue()
        box.current_value, box.current_frame = (s.T, float(beta.value)), schedule_summary(s)

    box.beta_slider, box.T_slider, box.image, box.frame_for = beta, steps, image, frame_for
    beta.observe(draw, names="value")
    steps.observe(draw, names="value")
    draw()
    return box
