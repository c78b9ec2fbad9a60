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


# ---- notebooks 07, 08 and 10: the reference answers of the exercises that ask, each through the check of its
# notebook (the notebook's tensors rebuilt here), and the numbers that ANSWERS quotes for them
def _notebook_07_crops():
    import sr3_mini
    from sr3_mini.data import bundled_eval_images
    from sr3_mini.resize import downsample, upsample
    from sr3_mini.sample import regression_predict, super_resolve
    y_0 = torch.stack([p[:, 96:160, 96:160] for _, p in bundled_eval_images()])   # section 1's centre crops
    x = downsample(y_0, 4)
    x_up = upsample(x, 4)
    with torch.no_grad():
        y_reg = regression_predict(sr3_mini.load_pretrained("regression")[0], x_up).clamp(-1, 1)
    y_sr3 = super_resolve(sr3_mini.load_pretrained("sr3")[0], x, steps=50, generator=torch.Generator().manual_seed(0),
                          progress=False)
    return y_0, x, x_up, y_reg, y_sr3


def test_07_psnr_back_projection_gamma_T_and_big_steps():
    from sr3_mini.metrics import consistency, psnr, sharpness
    from sr3_mini.sample import default_inference_schedule
    y_0, x, x_up, y_reg, y_sr3 = _notebook_07_crops()
    for delta in (2 / 255, -0.01, 0.1, 0.5):                                         # exercise 1a
        assert (psnr(y_0 + delta, y_0) - solutions.my_psnr_of_offset(delta)).abs().max() < 1e-3
    assert round(solutions.my_psnr_of_offset(2 / 255), 1) == 48.1
    noise = 0.05 * torch.randn(y_sr3.shape, generator=torch.Generator().manual_seed(7))   # exercise 1b
    drop = (psnr(y_sr3, y_0) - psnr(y_sr3 + noise, y_0)).mean().item()
    assert abs(solutions.my_guess_noise_drop - drop) < 0.25 and abs(drop - 0.74) < 0.01
    assert abs(psnr(y_0 + noise, y_0).mean().item() - 32.0) < 0.1
    for y_hat in (x_up, y_reg, y_sr3):                                                # exercise 2
        out = solutions.my_back_project(y_hat, x)
        assert consistency(x, out).max() < 1e-9 and psnr(out, y_hat).min() > 28
        assert abs(psnr(out, y_0).mean() - psnr(y_hat, y_0).mean()) < (0.4 if y_hat is x_up else 0.1)
    bp = solutions.my_back_project(x_up, x)
    assert abs(psnr(x_up, y_0).mean().item() - 23.16) < 0.005 and abs(psnr(bp, y_0).mean().item() - 23.51) < 0.005
    assert round(sharpness(x_up, y_0).mean().item(), 2) == 0.07 and round(sharpness(bp, y_0).mean().item(), 2) == 0.20
    first = consistency(x, x_up).mean() / consistency(x, solutions.my_back_project(x_up, x, rounds=1)).mean()
    assert round(first.item()) == 6                                                    # the first round: by 6
    truth = Schedule.linear(1000, 1e-4, 0.02).gamma(1000).item()                       # exercise 3
    assert abs(math.log10(solutions.my_guess_gamma_T / truth)) < 0.15
    assert abs(0.36**10 / truth - 1) < 0.1
    for steps in (50, 100, 200):                                                      # exercise 4
        s = default_inference_schedule(steps)
        for t in range(2, 7):
            ratio = ((1 - s.gamma(t - 1)) / (1 - s.gamma(t))).item()
            assert abs(solutions.my_ratio_big_steps(t) - ratio) < 0.02
    ratio_2 = {steps: ((1 - s.gamma(1)) / (1 - s.gamma(2))).item()
               for steps, s in ((10, default_inference_schedule(10)), (2000, SR3))}
    assert round(ratio_2[10], 2) == 0.29 and round(ratio_2[2000], 2) == 0.14


def _gflops(config, size):
    from torch.utils.flop_counter import FlopCounterMode
    from sr3_mini.unet import UNet
    with torch.device("meta"):
        net = UNet(config).eval()
        y = torch.empty(1, 3, size, size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(y, y, torch.full((1,), 0.5))
    return counter.get_total_flops() / 1e9


def test_08_cost_and_what_x_decides():
    import dataclasses
    import sr3_mini
    from sr3_mini.resize import downsample
    config = sr3_mini.load_pretrained("sr3")[0].config
    f_64, f_256 = _gflops(config, 64), _gflops(config, 256)
    cascade = 50 * f_64 + 25 * f_256                                                  # notebook 08, section 2
    assert abs(solutions.my_guess_equal_steps - cascade / f_256) < 1                  # exercise 1a
    for steps_1, steps_2, steps_single in ((50, 25, 75), (100, 10, 100), (20, 50, 50), (1000, 10, 100)):
        flops = steps_single * f_256 / (steps_1 * f_64 + steps_2 * f_256)
        assert abs(solutions.my_cost_ratio(steps_1, steps_2, steps_single) / flops - 1) < 0.1   # exercise 1b
    assert round(f_256 / f_64, 1) == 17.5 and round(_gflops(config, 1024) / f_256) == 38   # ANSWERS["08, exercise 1"]
    f_thin = _gflops(dataclasses.replace(config, channels=config.channels // 2), 256)
    share = 25 * f_thin / (50 * f_64 + 25 * f_thin)
    assert abs(solutions.my_guess_thin_share - share) < 0.05 and round(share, 2) == 0.71   # exercise 2

    def axis_rank(size, scale):
        impulses = torch.eye(size).reshape(size, 1, 1, size).expand(size, 3, scale, size).contiguous()
        return int(torch.linalg.matrix_rank(downsample(impulses, scale)[:, 0, 0, :].double()))
    r_16, r_4 = axis_rank(256, 16), axis_rank(256, 4)
    assert abs(solutions.my_guess_fixed_share / (r_16**2 / 256**2) - 1) < 0.1             # exercise 3a
    assert abs(solutions.my_guess_stage_2_open - (256**2 - r_4**2) / (256**2 - r_16**2)) < 0.02   # exercise 3b


def test_10_predictions_reverse_variance_and_guidance():
    from sr3_mini import metrics
    from sr3_mini.resize import downsample
    from sr3_mini.toy import ToyProblem

    def gen(seed):
        return torch.Generator().manual_seed(seed)
    P, B, S = ToyProblem(channels=3, size=8, scale=2), 200, 4                         # notebook 10, section 1
    x, y_0 = P.sample(B, gen(1))

    def pooled(samples, y):                                                           # section 2's pooled diversity
        return metrics.diversity(samples.reshape(S, 1, 3 * B, *y.shape[-2:]), y.reshape(1, 3 * B, *y.shape[-2:])).item()
    averaged = P.sample_posterior(x, 2 * S, gen(10)).reshape(2, S, B, *P.shape).mean(0)   # exercises 1 and 2
    mean, var = P.posterior_moments(x)
    fake = mean + var.sqrt() * torch.randn((S, B, *P.shape), generator=gen(11), dtype=torch.float64)
    assert abs(solutions.my_guess_average() - pooled(averaged, y_0)) < 0.1
    assert abs(solutions.my_guess_fake() - pooled(fake, y_0)) < 0.05
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)   # exercise 3
    for s in (Schedule.linear(2000, 1e-6, 1e-2).respaced(100), SR3):
        for t in (2, 3, s.T // 2, s.T):
            a, g_t, g_prev = s.alpha(t).item(), s.gamma(t).item(), s.gamma(t - 1).item()
            mean_0, sigma2 = D.posterior(zero, one, a, g_t, g_prev)
            c_0 = (D.posterior(one, one, a, g_t, g_prev)[0] - mean_0).item()
            for lam in (1e-4, 0.01, 0.3, 1.0, 2.5):
                v = lam * (1 - g_t) / (g_t * lam + 1 - g_t)
                assert math.isclose(solutions.my_reverse_variance(a, g_t, g_prev, lam), sigma2.item() + c_0**2 * v,
                                    rel_tol=1e-6)
    y_lr = downsample(y_0, P.scale)                                                    # exercise 4
    for w, quoted in ((1.0, 0.67), (3.0, 0.40), (7.0, 0.22)):
        tilted = ToyProblem(channels=3, size=8, scale=2, sigma_x=P.sigma_x / math.sqrt(1 + w))
        out = tilted.sample_posterior(x, S, gen(12))
        seen = pooled(downsample(out.reshape(-1, *P.shape), P.scale).reshape(S, B, *P.lr_shape), y_lr)
        assert abs(solutions.my_seen_diversity(w) - seen) < 0.03 and round(seen, 2) == quoted
    smallest = min(torch.linalg.eigvalsh(P.A @ P.Sigma[k] @ P.A.T).min().item() for k in range(P.K))
    assert P.sigma_x**2 < smallest < 3e-4                                               # ANSWERS["10, exercise 4"]


# ---- notebooks 03 and 04: the reference answers of the exercises that ask, each through the check of its notebook
# (the same computations, written again here) or against something independent of it
def _plausible_guess_losses(rho, eps, z, p):
    return D.loss(rho * eps + (1 - rho**2) ** 0.5 * z, eps, p=p).item()


def test_03_ddpm_share_guess_loss_and_break_even():
    assert abs(solutions.my_guess_ddpm_half - Schedule.linear(1000, 1e-4, 0.02).gamma_cdf(0.5).item()) < 0.02
    eps, z = torch.randn(2, 200_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for rho in (0.0, 0.3, 0.5, 0.9):
        err = (rho * eps + (1 - rho**2) ** 0.5 * z - eps).abs()
        for p in (1, 2):
            se = (err**p).std().item() / len(eps) ** 0.5
            assert abs(solutions.my_guess_loss(rho, p) - _plausible_guess_losses(rho, eps, z, p)) < 5 * se, (rho, p)
    rho = solutions.my_break_even_rho
    for p in (1, 2):
        zero = D.loss(torch.zeros_like(eps), eps, p=p).item()
        assert _plausible_guess_losses(rho - 0.03, eps, z, p) > zero > _plausible_guess_losses(rho + 0.03, eps, z, p)
    # exactly: at the break-even rho the guess's loss is eps_hat = 0's, E eps^2 = 1 and E|eps| = sqrt(2 / pi)
    assert math.isclose(solutions.my_guess_loss(rho, 2), 1) and math.isclose(solutions.my_guess_loss(rho, 1),
                                                                             math.sqrt(2 / math.pi))


def test_03_adam_second_step_without_a_gradient():
    for g_1 in (1e-3, 1.0, 100.0):
        w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = torch.optim.Adam([w], lr=1e-3)
        for g_k in (g_1, 0.0):
            before = w.item()
            w.grad = torch.full_like(w, g_k)
            opt.step()
        assert abs(solutions.my_guess_coast - (before - w.item()) / 1e-3) < 0.03, g_1
    m_hat, v_hat = 0.9 * 0.1 / (1 - 0.9**2), 0.999 * 0.001 / (1 - 0.999**2)    # the update of notebook 03, section 6.4
    assert abs(solutions.my_guess_coast - m_hat / v_hat**0.5) < 0.005


def _bound_terms(s):
    # L_{t-1} - C_t for ||y_0 - y^_0||^2 = 1, t = 2..T, without omega_t: two Gaussians of variance sigma~^2 (4) whose
    # means (4) differ by c_0 (y_0 = 1 against y^_0 = 0), their KL from torch.distributions
    ts = torch.arange(2, s.T + 1)
    a, g, g_prev = s.alpha(ts), s.gamma(ts), s.gamma(ts - 1)
    zero = torch.zeros(len(ts), dtype=torch.float64)
    mean_1, var = D.posterior(zero + 1, zero, a, g, g_prev)
    mean_0, _ = D.posterior(zero, zero, a, g, g_prev)
    normal = torch.distributions.Normal
    return torch.distributions.kl_divergence(normal(mean_1, var.sqrt()), normal(mean_0, var.sqrt()))


def test_03_bound_total_and_share_of_t2():
    for s in (SR3, Schedule.cosine(1000), Schedule.linear(100, 1e-4, 0.1)):
        total = _bound_terms(s).sum().item()
        assert math.isclose(solutions.my_bound_total(s.gamma(1).item(), s.gamma(s.T).item()), total, rel_tol=1e-6)
    terms = _bound_terms(SR3)
    assert abs(solutions.my_guess_share_t2 - (terms[0] / terms.sum()).item()) < 0.05


def test_03_eps_star_binary():
    normal = torch.distributions.Normal
    for g in (1e-4, 0.3, 0.99):
        g = torch.tensor(g, dtype=torch.float64)
        y = torch.linspace(-3, 3, 13, dtype=torch.float64, requires_grad=True)
        modes = normal(g.sqrt() * torch.tensor([1.0, -1.0], dtype=torch.float64), (1 - g).sqrt())
        score, = torch.autograd.grad((torch.logsumexp(modes.log_prob(y[:, None]), dim=1) - math.log(2)).sum(), y)
        torch.testing.assert_close(solutions.my_eps_star_binary(y.detach(), g), -(1 - g).sqrt() * score)
    # and E[eps | y_t] by Monte Carlo, in a narrow bin of y_t around 0.5, at gamma = 0.3
    gen = torch.Generator().manual_seed(4)
    y_0 = torch.randint(0, 2, (2_000_000,), generator=gen).double() * 2 - 1
    eps = torch.randn(len(y_0), generator=gen, dtype=torch.float64)
    y_t = D.q_sample(y_0, 0.3, eps)
    near = (y_t - 0.5).abs() < 0.01
    se = eps[near].std().item() / near.sum().item() ** 0.5
    assert abs(eps[near].mean().item() - solutions.my_eps_star_binary(torch.tensor(0.5, dtype=torch.float64), 0.3)) \
        < 5 * se + 0.01


SCHEDULES_04 = (SR3, Schedule.linear(100, 1e-4, 0.1), Schedule.cosine(1000))


def test_04_mean_shift_and_p_mean_on_a_v_head():
    import dataclasses
    from sr3_mini.unet import UNet
    y, e = torch.randn(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for s in SCHEDULES_04:
        for t in (1, 2, s.T // 3, s.T):
            a, g = s.alpha(t).item(), s.gamma(t).item()
            shift = (D.p_mean(y, e, a, g) - D.p_mean(y, e + 1e-3, a, g)) / (1e-3 * (1 - a) ** 0.5)
            assert (shift - solutions.my_mean_shift(a, g)).abs().max() < 1e-6 * shift.abs().max(), (s.name, t)
            if s is SR3 and t == s.T:
                assert abs(solutions.my_guess_kappa_T - shift.mean().item()) < 0.02
            torch.testing.assert_close(solutions.my_p_mean_v(y, e, a, g),
                                       D.p_mean(y, (1 - g) ** 0.5 * y + g**0.5 * e, a, g))
    # a v-head U-Net (random last layer) and its eps-head twin with the same weights, whose output is F
    torch.manual_seed(0)
    v_net = UNet.from_preset("tiny", head="v").eval()
    with torch.no_grad():
        for prm in v_net.conv_out.parameters():
            prm.copy_(0.1 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(0)))
    F_net = UNet(dataclasses.replace(v_net.config, head="eps")).eval()
    F_net.load_state_dict(v_net.state_dict())
    y_t, x_up = torch.randn(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    a, g = SR3.alpha(1000).item(), SR3.gamma(1000).item()
    with torch.no_grad():
        gam = torch.full((2,), g)
        mean_v = D.p_mean(y_t, v_net(y_t, x_up, gam), a, g)
        mine = solutions.my_p_mean_v(y_t, F_net(y_t, x_up, gam), a, g)
    torch.testing.assert_close(mine, mean_v, rtol=1e-4, atol=1e-5)


def test_04_count_below_and_exact_variances():
    from sr3_mini.variance import reverse_variance
    for s in SCHEDULES_04:
        ts = torch.arange(1, s.T + 1)
        zero = torch.zeros(s.T, dtype=torch.float64)
        _, var_post = D.posterior(zero, zero, s.alpha(ts), s.gamma(ts), s.gamma(ts - 1))
        assert solutions.my_count_below(s) == int((var_post / (1 - s.alpha(ts)) < 0.9).sum())
        for s2, name in zip(solutions.my_exact_s2, ("paper", "posterior")):
            for t in range(2, s.T + 1):
                a, g, gp = s.alpha(t).item(), s.gamma(t).item(), s.gamma(t - 1).item()
                var_prev = gp * s2 + 1 - gp
                true_var = var_prev - a * var_prev**2 / (a * var_prev + 1 - a)      # Schur complement
                assert abs(true_var - reverse_variance(name, a, g, gp)) < 1e-8 * true_var, (s.name, name, t)
    # by Monte Carlo too: for s^2 = 1, regressing y_{t-1} on y_t leaves the paper's variance (t = 2, respaced(100))
    s100, n = SR3.respaced(100), 400_000
    a, g, gp = s100.alpha(2).item(), s100.gamma(2).item(), s100.gamma(1).item()
    gen = torch.Generator().manual_seed(6)
    y_prev = D.q_sample(torch.randn(n, generator=gen, dtype=torch.float64) * solutions.my_exact_s2[0] ** 0.5, gp,
                        torch.randn(n, generator=gen, dtype=torch.float64))            # (3)
    y_t = D.q_step(y_prev, a, torch.randn(n, generator=gen, dtype=torch.float64))    # (1)
    cov = torch.cov(torch.stack([y_prev, y_t]))
    resid = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]
    assert abs(resid.item() / (1 - a) - 1) < 5 * (2 / n) ** 0.5 * 2


def test_04_var_y0_from_the_score():
    normal = torch.distributions.Normal
    m, s2 = 0.3, 0.25
    atoms, probs = torch.tensor([-0.6, 0.8], dtype=torch.float64), torch.tensor([0.7, 0.3], dtype=torch.float64)
    for g in (1e-3, 0.3, 0.95):
        g = torch.tensor(g, dtype=torch.float64)
        y = torch.linspace(-3, 3, 13, dtype=torch.float64, requires_grad=True)
        V = g * s2 + 1 - g
        two_point = torch.log(probs) + normal(g.sqrt() * atoms, (1 - g).sqrt()).log_prob(y[:, None])
        w = torch.softmax(two_point.detach(), dim=1)
        for log_q, var in ((normal(g.sqrt() * m, V.sqrt()).log_prob(y), (s2 * (1 - g) / V).expand(13)),
                           (torch.logsumexp(two_point, dim=1), (w * atoms**2).sum(1) - (w * atoms).sum(1) ** 2)):
            score, = torch.autograd.grad(log_q.sum(), y, create_graph=True)
            dscore, = torch.autograd.grad(score.sum(), y)
            torch.testing.assert_close(torch.as_tensor(solutions.my_var_y0(g, dscore)).expand(13), var)


def test_04_ddim_one_step_and_steps_needed():
    from sr3_mini.sample import ddim_loop
    m = 0.3

    def spread(K, s, s2):  # DDIM with the exact denoiser of N(m, s2) is linear in y_T: its slope is the spread
        def f_star(y, x_up, gamma):
            gm = gamma.double().reshape(-1, 1, 1, 1)
            return (1 - gm).sqrt() * (y - gm.sqrt() * m) / (gm * s2 + 1 - gm)
        probe = torch.tensor([[[[0.0, 1.0]]]], dtype=torch.float64)
        out = ddim_loop(f_star, torch.zeros_like(probe), s.respaced(K), y_T=probe, progress=False)
        return (out[..., 1] - out[..., 0]).item()

    for s2 in (0.25, 1.0):
        for s in (SR3, Schedule.linear(1000, 1e-4, 0.02)):
            assert abs(solutions.my_ddim_one_step_std(s2, s.gamma(s.T).item()) - spread(1, s, s2)) < 1e-9
    K = next(k for k in range(1, 1000) if spread(k, SR3, 0.25) >= 0.9 * 0.5)
    assert K / 2 <= solutions.my_guess_ddim_steps <= 2 * K and K == solutions.my_guess_ddim_steps   # the comment's 28
    # and by Monte Carlo: 28 steps from 20,000 draws of y_T give a spread of 0.9 s
    x_up = torch.zeros(1, 1, 100, 200, dtype=torch.float64)

    def f_star(y, x_up, gamma):
        gm = gamma.double().reshape(-1, 1, 1, 1)
        return (1 - gm).sqrt() * (y - gm.sqrt() * m) / (gm * 0.25 + 1 - gm)
    out = ddim_loop(f_star, x_up, SR3.respaced(K), generator=torch.Generator().manual_seed(7), progress=False)
    assert abs(out.std().item() / 0.5 - 0.9) < 5 * 0.9 / (2 * x_up.numel()) ** 0.5
