"""The opt-in loss weighting ``TrainConfig.loss_weighting="bound"`` (a deviation; the paper weighs every draw of
gamma alike): p(gamma)'s density, the weights' flatness over log-SNR, the weighted loss, the config rule, a run."""
import math

import pytest
import torch

from sr3_mini import diffusion as D
from sr3_mini.resize import downsample, upsample
from sr3_mini.schedule import Schedule
from sr3_mini.train import BOUND_WEIGHT_CAP, ConfigError, TrainConfig, loss_weights, step_loss, train
from sr3_mini.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gamma_density_is_the_derivative_of_the_cdf_and_integrates_to_one():
    s = Schedule.linear(2000, 1e-6, 1e-2)
    g = torch.rand(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * (1 - 1e-3) + 5e-4
    h = 1e-7
    fd = (s.gamma_cdf(g + h) - s.gamma_cdf(g - h)) / (2 * h)
    # away from the knots gamma_t (where the density jumps) the finite difference is the density
    lo, hi = s.gammas[1:], s.gammas[:-1]
    near_knot = ((g[:, None] - s.gammas[None]).abs() < 2 * h).any(1)
    torch.testing.assert_close(s.gamma_density(g)[~near_knot], fd[~near_knot], rtol=1e-5, atol=1e-6)
    # the integral over [gamma_T, 1]: each piece (1/T) / (hi - lo) over a width hi - lo
    grid = torch.cat([torch.linspace(float(a), float(b), 6, dtype=torch.float64)[:-1] + (b - a) / 10
                      for a, b in zip(lo, hi)])
    assert math.isclose(float((s.gamma_density(grid) * ((hi - lo) / 5).repeat_interleave(5)).sum()), 1.0, rel_tol=1e-9)
    assert float(s.gamma_density(torch.tensor([0.0, 1.0]))[0]) == 0.0


def test_gamma_density_stays_on_gammas_device_and_dtype_and_matches_the_definition():
    """The search-based density equals the definition's sum over intervals exactly in float64; a float32 tensor
    (what training draws on a GPU) stays float32 and agrees to float32 rounding away from the knots; so do the bound
    weights, which training no longer copies to the host every step."""
    s = Schedule.linear(2000, 1e-6, 1e-2)
    g = s.sample_gamma(5000, torch.Generator().manual_seed(3))
    g = torch.cat([g, s.gammas, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)])   # every knot, and outside
    lo, hi = s.gammas[1:], s.gammas[:-1]
    inside = (g.unsqueeze(-1) >= lo) & (g.unsqueeze(-1) < hi)
    assert torch.equal(s.gamma_density(g), (inside / (hi - lo)).sum(-1) / s.T)
    g32 = g.float()
    d32 = s.gamma_density(g32)
    assert d32.dtype == torch.float32 and d32.shape == g.shape
    far = ((g[:, None] - s.gammas[None]).abs() > 1e-6 * g[:, None].clamp_min(1e-3)).all(1)
    torch.testing.assert_close(d32[far].double(), s.gamma_density(g32.double())[far], rtol=1e-5, atol=0)
    w32, w64 = loss_weights(s, g32[:5000], "bound"), loss_weights(s, g[:5000], "bound")
    assert w32.dtype == w64.dtype == torch.float32
    torch.testing.assert_close(w32[far[:5000]], w64[far[:5000]], rtol=1e-3, atol=0)   # 1 - gamma in float32
    assert torch.equal(s.gamma_density(g.reshape(-1, 1)[:10]), s.gamma_density(g[:10]).reshape(-1, 1))


def test_bound_weights_make_every_log_snr_count_alike():
    """Weighted draws per unit log-SNR are k = 1 / (lambda_1 - lambda_T) wherever the cap does not bind (up to
    lambda = 8 for this schedule), within 3 % (400,000 draws: the Monte Carlo error is under 1 %)."""
    s = Schedule.linear(2000, 1e-6, 1e-2)
    g = s.sample_gamma(400_000, torch.Generator().manual_seed(1))
    w = loss_weights(s, g, "bound").double()
    assert loss_weights(s, g, "none") is None
    lam = torch.logit(g)
    k = 1 / float(torch.logit(s.gammas[1]) - torch.logit(s.gammas[-1]))
    for a in range(-8, 8, 2):
        inside = (lam >= a) & (lam < a + 2)
        per_unit = float((w * inside).sum()) / len(w) / 2
        assert abs(per_unit / k - 1) < 0.03, (a, per_unit, k)
    assert float(w.max()) == BOUND_WEIGHT_CAP and 0 < float((w == BOUND_WEIGHT_CAP).double().mean()) < 0.01
    with pytest.raises(ValueError, match="none or bound"):
        loss_weights(s, g, "snr")


@pytest.mark.parametrize("p", [1, 2])
def test_weighted_step_loss_is_the_weighted_mean(p):
    torch.manual_seed(0)
    net = UNet.from_preset("tiny").eval()
    y_0 = torch.rand(3, 3, 16, 16) * 2 - 1
    x_up = upsample(downsample(y_0, 4), 4)
    gamma, eps = torch.tensor([0.2, 0.6, 0.95]), torch.randn(3, 3, 16, 16)
    w = torch.tensor([0.5, 2.0, 7.0])
    plain = step_loss(net, "sr3", y_0, x_up, gamma, eps, p)
    torch.testing.assert_close(step_loss(net, "sr3", y_0, x_up, gamma, eps, p, torch.ones(3)), plain)
    with torch.no_grad():
        eps_hat = net(D.q_sample(y_0, gamma, eps), x_up, gamma)
    by_hand = (w.view(-1, 1, 1, 1) * (eps_hat - eps).abs() ** p).mean()
    torch.testing.assert_close(step_loss(net, "sr3", y_0, x_up, gamma, eps, p, w), by_hand, rtol=1e-5, atol=1e-6)


def test_config_rule_and_a_weighted_run(tmp_path):
    with pytest.raises(ConfigError, match="loss_weighting"):
        TrainConfig(loss_weighting="vlb").check()
    pool = torch.randint(0, 256, (12, 3, 24, 24), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    cfg = TrainConfig(preset="tiny", crop=16, batch_size=2, steps=3, warmup_steps=1, val_every=0, log_every=1,
                      save_every=3, loss_weighting="bound", out_dir=str(tmp_path / "run"), progress=False)
    out = train(cfg, pool=pool, val=pool[:2, :, :16, :16].clone())
    assert out["step"] == 3 and (tmp_path / "run" / "last.pt").exists()
