"""The numbers stated in notebooks/solutions.py's answers to the open questions, checked."""
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
import solutions  # noqa: E402


def test_03_exercise_3_warmup_in_float32():
    assert math.isclose(solutions.warmup_first_step(0.05), -3 * 2**-28, rel_tol=1e-6)   # 3 spacings: 1.1e-8
    assert solutions.warmup_first_step(1.0) == 0.0                                      # a scale of 1 stays put
    one = torch.tensor(1.0)
    down = [k for k in range(1, 10) if (one - k * 1e-8).item() != 1.0]
    up = [k for k in range(1, 10) if (one + k * 1e-8).item() != 1.0]
    assert down[0] == 3 and up[0] == 6


def test_09_exercise_2_trials():
    assert solutions.my_trials_needed(0.05) == 381 and solutions.my_trials_needed(0.03) == 1064
    from scipy.stats import binomtest
    for n in (10, 382, 1000):
        ci = binomtest(n // 2, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = ci.low, ci.high
        z = 1.959963984540054
        assert math.isclose((high - low) / 2, z / (2 * math.sqrt(n + z * z)), rel_tol=1e-12)


def test_check_says_right_wrong_and_not_attempted(capsys):
    def test(fn):
        assert fn(2) == 4, "not the square"
    assert solutions.check("sq", test, lambda v: v * v)
    assert not solutions.check("sq", test, lambda v: v + 1)
    assert not solutions.check("sq", test, lambda v: ...)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sq: right" and out[1].startswith("sq: wrong. AssertionError: not the square")
    assert out[2].startswith("sq: not attempted yet")


# ---- the reference answers of the exercises that ask (notebooks 02, 05, 06, 09), each through its notebook's check,
# or against something independent of it
from sr3_mini import Schedule  # noqa: E402
from sr3_mini import diffusion as D  # noqa: E402

SR3 = Schedule.linear(2000, 1e-6, 1e-2)


def test_02_jump_posterior_against_the_forward_process():
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    g_t, g_s = SR3.gamma(1000).item(), SR3.gamma(500).item()
    _, var = D.posterior(one, one, g_t / g_s, g_t, g_s)
    assert abs(solutions.my_guess_jump - var.item() / (1 - g_s)) < 0.05                # the prediction
    # Monte Carlo: y_s by (3), then t - s single steps (1); regress y_s on y_t (y_0 fixed)
    s100, s, t, y0, n = Schedule.linear(100, 1e-4, 0.1), 20, 60, 0.6, 200_000
    gen = torch.Generator().manual_seed(0)
    y_s = D.q_sample(torch.full((n,), y0, dtype=torch.float64), s100.gamma(s), torch.randn(n, generator=gen,
                                                                                        dtype=torch.float64))
    y_t = y_s
    for k in range(s + 1, t + 1):
        y_t = D.q_step(y_t, s100.alpha(k), torch.randn(n, generator=gen, dtype=torch.float64))
    c_0, c_t, sigma2 = solutions.my_jump_posterior(s100.gamma(t).item(), s100.gamma(s).item())
    cov = torch.cov(torch.stack([y_s, y_t]))
    slope = (cov[0, 1] / cov[1, 1]).item()
    resid = (y_s - y_s.mean() - slope * (y_t - y_t.mean())).var().item()
    assert abs(slope - c_t) < 5 * (sigma2 / (n * cov[1, 1].item())) ** 0.5
    assert abs(y_s.mean().item() - slope * y_t.mean().item() - c_0 * y0) < 5 * (sigma2 / n) ** 0.5 * 3
    assert abs(resid - sigma2) < 5 * sigma2 * (2 / n) ** 0.5
    # one step is (4)
    a, g, g_prev = (v.item() for v in (SR3.alpha(700), SR3.gamma(700), SR3.gamma(699)))
    mean_0, var_4 = D.posterior(one, zero, a, g, g_prev)
    mean_t, _ = D.posterior(zero, one, a, g, g_prev)
    for mine, lib in zip(solutions.my_jump_posterior(g, g_prev), (mean_0, mean_t, var_4)):
        assert math.isclose(mine, lib.item(), rel_tol=1e-9)


def test_02_mean_spread_and_mu_from_eps():
    one = torch.ones(1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    for t in (2, 300, 1000, 2000):
        a, g, g_prev = (v.item() for v in (SR3.alpha(t), SR3.gamma(t), SR3.gamma(t - 1)))
        _, var = D.posterior(one, one, a, g, g_prev)
        spread = solutions.my_mean_spread(a, g, g_prev)
        assert math.isclose(spread + var.item(), 1 - g_prev, rel_tol=1e-9)               # the law of total variance
        y_t = D.q_sample(torch.full((100_000,), 0.6, dtype=torch.float64), g,
                         torch.randn(100_000, generator=gen, dtype=torch.float64))
        mu = D.posterior(torch.full_like(y_t, 0.6), y_t, a, g, g_prev)[0]
        assert abs(mu.var().item() - spread) < 5 * spread * (2 / 1e5) ** 0.5
        y_ex, eps_ex = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(solutions.my_mu_from_eps(y_ex, eps_ex, a, g, g_prev), D.p_mean(y_ex, eps_ex, a, g))


def test_05_embedding_distance_and_double_C():
    from sr3_mini.blocks import gamma_embedding
    from sr3_mini.unet import PRESETS, UNet
    gen = torch.Generator().manual_seed(2)
    for C in (16, 64, 128):
        g_1 = torch.rand(20, generator=gen, dtype=torch.float64)
        for delta in (1e-5, 1e-3, 0.01, 0.3):
            dist = (gamma_embedding(g_1, C) - gamma_embedding(g_1 - delta, C)).norm(dim=1)
            assert (solutions.my_embedding_distance(delta, C) - dist).abs().max() < 1e-6 * max(1.0, dist.max().item())
    with torch.device("meta"):
        ratio = (sum(p.numel() for p in UNet.from_preset("mini", channels=2 * PRESETS["mini"]["channels"]).parameters())
                 / sum(p.numel() for p in UNet.from_preset("mini").parameters()))
    assert abs(solutions.my_guess_double_C - ratio) < 0.2


def _one_weight(value):
    w = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    torch.nn.init.constant_(w.weight, value)
    return w


def test_06_ema_lag_and_no_ramp():
    from sr3_mini.train import TrainConfig, ema_decay_at, ema_update, lr_at
    for k in (1, 7, 200, 201):
        cfg = TrainConfig(lr=3e-4, warmup_steps=200)
        assert solutions.my_lr(k, cfg.lr, cfg.warmup_steps) == lr_at(k, cfg)
    for d in (0.5, 0.9, 0.99):
        ema, model = _one_weight(0.0), _one_weight(0.0)
        for k in range(1, 3001):
            torch.nn.init.constant_(model.weight, float(k))
            ema_update(ema, model, d)
        assert math.isclose(solutions.my_ema_lag(d), 3000 - ema.weight.item(), rel_tol=1e-6)
    import sr3_mini
    steps, no_ramp = sr3_mini.load_pretrained("sr3")[2]["step"], TrainConfig(ema_warmup=False)
    ema, model = _one_weight(1.0), _one_weight(0.0)
    for k in range(1, steps + 1):
        ema_update(ema, model, ema_decay_at(k, no_ramp))
    assert abs(solutions.my_guess_no_ramp - ema.weight.item()) < 0.03


def test_06_knows_nothing_loss():
    from sr3_mini.unet import UNet
    torch.manual_seed(0)
    net = UNet.from_preset("tiny", head="v", target="residual").eval()   # F = 0: eps_hat = sqrt(1 - gamma) y_t
    gen = torch.Generator().manual_seed(3)
    eps = torch.randn(64, 3, 16, 16, generator=gen)
    for s2 in (0.0, 0.1, 1.0):
        r_0 = s2**0.5 * torch.randn(64, 3, 16, 16, generator=gen)
        for gamma in (0.01, 0.3, 0.9):
            with torch.no_grad():
                err = (net(D.q_sample(r_0, gamma, eps), torch.zeros_like(r_0), torch.full((64,), gamma)) - eps).abs()
            se = err.std().item() / err.numel() ** 0.5
            assert abs(solutions.my_knows_nothing_loss(gamma, s2) - err.mean().item()) < 5 * se, (gamma, s2)


def test_09_zero_upper_and_observer():
    from scipy.stats import binomtest
    import sr3_mini
    from sr3_mini.data import bundled_eval_images
    from sr3_mini.resize import downsample, upsample
    from sr3_mini.sample import regression_predict
    for n in (1, 5, 16, 100, 1000):
        exact = binomtest(0, n).proportion_ci(confidence_level=0.95, method="exact").high
        assert abs(solutions.my_zero_upper(n) - exact) < 1e-9
    # never fooled by the regression baseline on notebook 09's 16 crops, whichever side the photo is on, without x
    y_0 = torch.stack([p[:, t:t + 64, l:l + 64] for _, p in bundled_eval_images() for t, l in ((96, 96), (160, 24))])
    reg = sr3_mini.load_pretrained("regression")[0]
    with torch.no_grad():
        y_reg = regression_predict(reg, upsample(downsample(y_0, 4), 4)).clamp(-1, 1)
    for photo, output in zip(y_0, y_reg):
        assert solutions.my_observer(None, photo, output) == "left"
        assert solutions.my_observer(None, output, photo) == "right"
