"""The reverse variance of (10): the KL-optimal sigma*^2 of Analytic-DPM against an independent derivation on
Gaussian data, its range, the table that carries a network's v(gamma), and the sampler's use of it."""
import math

import pytest
import torch

from sr3_mini import Schedule
from sr3_mini.evaluate import estimate_var_y0
from sr3_mini.sample import sample_loop
from sr3_mini.unet import UNetConfig
from sr3_mini.variance import VarianceTable, kl_optimal_variance, load_table, reverse_variance, save_table


@pytest.mark.parametrize("s2", [0.25, 0.0625, 1.0])
@pytest.mark.parametrize("t", [2, 30, 99])
def test_kl_optimal_variance_is_the_true_reverse_variance_for_gaussian_data(s2, t):
    """y_0 ~ N(m, s2): q(y_{t-1} | y_t) is Gaussian, its variance from the joint of (y_{t-1}, y_t) by the Schur
    complement; Analytic-DPM's sigma~^2 + c^2 Var[y_0 | y_t] must equal it (law of total variance)."""
    sched = Schedule.linear(2000, 1e-6, 1e-2).respaced(100)
    a, g, gp = sched.alpha(t).item(), sched.gamma(t).item(), sched.gamma(t - 1).item()
    var_prev = gp * s2 + 1 - gp                       # Var y_{t-1}, by (3)
    var_t = a * var_prev + 1 - a                      # Var y_t, by (1)
    cov = math.sqrt(a) * var_prev                     # Cov(y_{t-1}, y_t)
    truth = var_prev - cov ** 2 / var_t
    var_y0 = s2 * (1 - g) / (g * s2 + 1 - g)          # Var[y_0 | y_t]: Gaussian conditioning of (5)
    assert kl_optimal_variance(a, g, gp, var_y0) == pytest.approx(truth, rel=1e-10)
    post, paper = reverse_variance("posterior", a, g, gp), reverse_variance("paper", a, g, gp)
    assert post <= truth <= paper + 1e-15            # between sigma~^2 and 1 - alpha_t for s2 <= 1
    assert reverse_variance("analytic", a, g, gp, var_y0) == pytest.approx(truth, rel=1e-10)


def test_the_numbers_notebook_04_quotes():
    sched = Schedule.linear(2000, 1e-6, 1e-2).respaced(100)
    a, g, gp = sched.alpha(2).item(), sched.gamma(2).item(), sched.gamma(1).item()
    v = 0.25 * (1 - g) / (g * 0.25 + 1 - g)
    assert f"{kl_optimal_variance(a, g, gp, v):.2e}" == "2.94e-03"
    assert f"{1 - a:.2e}" == "2.97e-03" and f"{reverse_variance('posterior', a, g, gp):.1e}" == "7.3e-04"


def test_analytic_is_clamped_and_needs_a_table():
    a, g, gp = 0.99, 0.5, 0.505
    post = reverse_variance("posterior", a, g, gp)
    assert reverse_variance("analytic", a, g, gp, 0.0) == post
    assert reverse_variance("analytic", a, g, gp, -3.0) == post          # a noisy negative estimate
    assert reverse_variance("analytic", a, g, gp, 1e6) == 1 - a          # never above the paper's
    with pytest.raises(ValueError, match="var_y0"):
        reverse_variance("analytic", a, g, gp)
    with pytest.raises(ValueError, match="variance must be"):
        reverse_variance("kl", a, g, gp)


def test_table_interpolates_in_log_snr_and_is_tied_to_its_checkpoint(tmp_path):
    table = VarianceTable([-2.0, 0.0, 2.0], [0.3, 0.1, 0.02])
    assert table(0.5) == pytest.approx(0.1)
    assert table(1 / (1 + math.exp(1.0))) == pytest.approx(0.2)           # log-SNR -1: halfway
    assert table(1e-9) == 0.3 and table(1 - 1e-9) == 0.02                 # constant beyond the grid
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"weights")
    assert load_table(ckpt) is None
    save_table(table, ckpt)
    assert load_table(ckpt).var_y0 == [0.3, 0.1, 0.02]
    ckpt.write_bytes(b"other weights")
    with pytest.raises(ValueError, match="another version"):
        load_table(ckpt)


class ZeroNet(torch.nn.Module):
    """eps^ = 0, so y^_0 = y_t / sqrt(gamma) and E||y^_0 - y_0||^2 = (1 - gamma) / gamma exactly in expectation."""
    config = UNetConfig()        # the paper's target: y_0 = y

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, y_t, x_up, gamma):
        return self.w * y_t


def test_estimate_var_y0_measures_the_networks_own_error():
    y = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    table = estimate_var_y0(ZeroNet(), y, log_snr=[-1.0, 0.0, 2.0], clip=False)
    for lam, v in zip(table.log_snr, table.var_y0):
        gamma = 1 / (1 + math.exp(-lam))
        assert v == pytest.approx((1 - gamma) / gamma, rel=0.02)          # 49,152 pixels: MC error ~ 0.6 %


def test_analytic_with_zero_uncertainty_samples_as_the_posterior_variance():
    sched = Schedule.linear(2000, 1e-6, 1e-2).respaced(10)
    f = lambda y_t, x_up, gamma: 0.3 * y_t
    x_up = torch.zeros(2, 3, 8, 8)
    run = lambda **kw: sample_loop(f, x_up, sched, generator=torch.Generator().manual_seed(1), clip=True,
                                   progress=False, **kw)
    torch.testing.assert_close(run(variance="analytic", var_y0=0.0), run(variance="posterior"))
    assert not torch.allclose(run(variance="analytic", var_y0=0.5), run(variance="posterior"))
    with pytest.raises(ValueError, match="var_y0"):
        run(variance="analytic")
