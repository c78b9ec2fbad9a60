"""sr3_mini.viz_schedule: p(gamma)'s quantiles invert the library's CDF and are the schedule read sideways; the
explorer's figure has the panels it promises; the widget, driven without a browser (set the sliders' values),
reports the summary of the schedule its sliders name; ipywidgets is imported only inside the factory."""
import subprocess
import sys

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sr3_mini import Schedule  # noqa: E402
from sr3_mini import viz_schedule as VS  # noqa: E402

SCHEDULES = [Schedule.linear(2000, 1e-6, 1e-2), Schedule.linear(101, 1e-4, 0.1), Schedule.cosine(50)]


@pytest.mark.parametrize("s", SCHEDULES, ids=lambda s: s.name)
def test_quantiles_invert_the_cdf_and_read_the_schedule_sideways(s):
    for q in (1e-3, 0.1, 0.25, 1 / 3, 0.5, 0.75, 0.999):
        assert abs(s.gamma_cdf(VS.p_gamma_quantile(s, q)).item() - q) < 1e-9
    t = torch.arange(1, s.T + 1)
    torch.testing.assert_close(s.gamma_cdf(s.gamma(t)), 1 - t.double() / s.T, rtol=0, atol=1e-12)
    if s.T % 4 == 0:
        assert VS.schedule_summary(s)["quartiles"] == tuple(s.gamma(t).item() for t in (3 * s.T // 4, s.T // 2,
                                                                                         s.T // 4))
    for q in (0, 1, -0.5):
        with pytest.raises(ValueError):
            VS.p_gamma_quantile(s, q)


def test_summary_of_sr3s_schedule():
    info = VS.schedule_summary(SCHEDULES[0])
    assert info["T"] == 2000 and abs(info["gamma_T"] - 4.386e-5) < 1e-8 and info["t_half"] == 527
    assert abs(info["p_below_0.1"] - 0.520) < 1e-3 and abs(info["quartiles"][1] - 0.0818) < 1e-4


def test_figure_has_a_row_per_schedule():
    y_0, noise = torch.rand(3, 8, 8) * 2 - 1, torch.randn(3, 8, 8)
    fig = VS.schedule_explorer_figure({"a": SCHEDULES[0], "b": SCHEDULES[1]}, y_0, noise)
    assert len(fig.axes) == 2 * 5
    plt.close(fig)
    fig = VS.schedule_explorer_figure(SCHEDULES[2])
    assert len(fig.axes) == 2 and fig.axes[1].get_xscale() == "log"
    plt.close(fig)


def test_widget_follows_its_sliders():
    pytest.importorskip("ipywidgets")
    w = VS.schedule_explorer(torch.zeros(3, 8, 8), torch.randn(3, 8, 8), T=400)
    assert w.current_value == (400, 1e-2) and bytes(w.image.value).startswith(b"\x89PNG")
    assert w.current_frame == VS.schedule_summary(Schedule.linear(400, 1e-6, 1e-2))
    png = bytes(w.image.value)
    w.beta_slider.value = 0.1  # what moving the slider does
    assert w.current_value == (400, 0.1) and w.current_frame == w.frame_for(400, 0.1) and bytes(w.image.value) != png
    w.T_slider.value = 1000
    assert w.current_frame == VS.schedule_summary(Schedule.linear(1000, 1e-6, 0.1))
    assert "beta-slider" in w.beta_slider._dom_classes and "sr3-frame" in w.image._dom_classes


def test_ipywidgets_is_imported_only_inside_the_factory():
    code = "import sys, sr3_mini.viz_schedule; assert 'ipywidgets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
