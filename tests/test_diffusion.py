"""The equations of sr3_mini.diffusion checked against independent computations:
Monte Carlo moments, Bayes' rule on a grid, regression over samples, and algebraic identities in float64."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sr3_mini import diffusion as D
from sr3_mini.schedule import Schedule

F64 = torch.float64
S = Schedule.linear(T=50, beta_start=1e-3, beta_end=0.2)  # coarse, so every step matters


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_iterating_1_matches_closed_form_3():
    """Iterate q(y_t | y_{t-1}) (1) t times; the moments must be those of q(y_t | y_0) (3)."""
    n, g = 200_000, gen(0)
    y0 = torch.tensor([-0.8, 0.0, 0.5, 1.0], dtype=F64)
    y = y0.expand(n, 4).clone()
    for t in range(1, S.T + 1):
        y = D.q_step(y, S.alpha(t), torch.randn(n, 4, generator=g, dtype=F64))
        if t in (1, 7, 25, 50):
            gamma = S.gamma(t).item()
            mean, var = math.sqrt(gamma) * y0, 1 - gamma
            se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
            assert (y.mean(0) - mean).abs().max() < 5 * se_mean
            assert (y.var(0) - var).abs().max() < 5 * se_var


def test_variance_recursion_2():
    """Var(y_t) = alpha_t Var(y_{t-1}) + (1 - alpha_t); unit variance is preserved."""
    n, g, alpha = 400_000, gen(1), 0.7
    for v_prev in (0.25, 1.0, 3.0):
        y_prev = math.sqrt(v_prev) * torch.randn(n, generator=g, dtype=F64)
        y_t = D.q_step(y_prev, alpha, torch.randn(n, generator=g, dtype=F64))
        expected = alpha * v_prev + (1 - alpha)
        assert abs(y_t.var().item() - expected) < 5 * expected * math.sqrt(2 / n)


def test_posterior_4_against_bayes_on_a_grid():
    """q(y_{t-1} | y_0, y_t) ∝ q(y_{t-1} | y_0) q(y_t | y_{t-1}), normalised numerically on a fine 1-D grid."""
    for t, y0, yt in [(2, 0.7, -0.3), (20, -1.0, 0.4), (50, 0.2, 1.9)]:
        a, g, gp = S.alpha(t).item(), S.gamma(t).item(), S.gamma(t - 1).item()
        grid = torch.linspace(-8, 8, 400_001, dtype=F64)
        log_p = (-(grid - math.sqrt(gp) * y0) ** 2 / (2 * (1 - gp))          # (3) at t-1
                 - (yt - math.sqrt(a) * grid) ** 2 / (2 * (1 - a)))          # (1)
        w = torch.exp(log_p - log_p.max())
        w = w / w.sum()
        m_grid = (w * grid).sum().item()
        v_grid = (w * (grid - m_grid) ** 2).sum().item()
        mean, var = D.posterior(torch.tensor([y0], dtype=F64), torch.tensor([yt], dtype=F64), a, g, gp)
        assert mean.item() == pytest.approx(m_grid, abs=1e-8)
        assert var.item() == pytest.approx(v_grid, rel=1e-6)


def test_posterior_4_against_regression_over_samples():
    """Regress y_{t-1} on (y_0, y_t) over joint samples: slopes and residual variance are those of (4)."""
    n, g, t = 400_000, gen(2), 10
    a, gm, gp = S.alpha(t), S.gamma(t), S.gamma(t - 1)
    y0 = 0.6 * torch.randn(n, generator=g, dtype=F64) + 0.1
    y_prev = D.q_sample(y0, gp, torch.randn(n, generator=g, dtype=F64))
    y_t = D.q_step(y_prev, a, torch.randn(n, generator=g, dtype=F64))
    A = torch.stack([y0, y_t], 1)
    coef = torch.linalg.lstsq(A, y_prev.unsqueeze(1)).solution.squeeze(1)
    resid_var = (y_prev - A @ coef).var().item()
    c0 = (gp.sqrt() * (1 - a) / (1 - gm)).item()
    ct = (a.sqrt() * (1 - gp) / (1 - gm)).item()
    mean, var = D.posterior(torch.ones(1, dtype=F64), torch.ones(1, dtype=F64), a, gm, gp)
    assert mean.item() == pytest.approx(c0 + ct, rel=1e-12)
    assert coef[0].item() == pytest.approx(c0, abs=0.01) and coef[1].item() == pytest.approx(ct, abs=0.01)
    assert resid_var == pytest.approx(var.item(), rel=0.02)


def test_p_mean_9_is_posterior_mean_with_y0_from_8():
    """(9) with the true eps equals the mean of (4) with y_0 = y^_0 of (8): exact algebra, in float64."""
    g = gen(3)
    y0 = torch.randn(4, 3, 8, 8, generator=g, dtype=F64)
    eps = torch.randn(4, 3, 8, 8, generator=g, dtype=F64)
    t = torch.tensor([1, 2, 25, 50])
    a, gm, gp = S.alpha(t), S.gamma(t), S.gamma(t - 1)
    y_t = D.q_sample(y0, gm, eps)
    y0_hat = D.predict_y0(y_t, eps, gm)
    torch.testing.assert_close(y0_hat, y0, rtol=0, atol=1e-10)                     # (8) inverts (5)
    mu_4, _ = D.posterior(y0_hat, y_t, a, gm, gp)
    torch.testing.assert_close(D.p_mean(y_t, eps, a, gm), mu_4, rtol=0, atol=1e-10)  # (9) == (4)∘(8)


@pytest.mark.parametrize("variance", ["paper", "posterior"])
def test_one_step_of_10_has_stated_mean_and_variance(variance):
    n, g, t = 200_000, gen(4), 30
    a, gm, gp = S.alpha(t), S.gamma(t), S.gamma(t - 1)
    y_t = torch.full((n,), 0.3, dtype=F64)
    eps = torch.full((n,), -0.5, dtype=F64)
    out = D.p_sample_step(y_t, eps, a, gm, gp, torch.randn(n, generator=g, dtype=F64), variance=variance)
    mean = ((0.3 - (1 - a) / (1 - gm).sqrt() * -0.5) / a.sqrt()).item()
    var = (1 - a).item() if variance == "paper" else ((1 - gp) * (1 - a) / (1 - gm)).item()
    assert abs(out.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(out.var().item() - var) < 5 * var * math.sqrt(2 / n)
    # zero noise (the last step, t = 1) gives the mean exactly
    torch.testing.assert_close(D.p_sample_step(y_t, eps, a, gm, gp, None), D.p_mean(y_t, eps, a, gm))


def test_paper_and_posterior_variances_differ_little_except_at_the_first_step():
    """The note's remark under (10): sigma^2 = 1 - alpha_t vs the posterior's, read off p_sample_step (y_t = 0,
    eps = 0, z = 1 leaves y_{t-1} = sigma_t) for every t at once. The posterior variance is checked against
    Bayes' rule for the Gaussian product q(y_{t-1} | y_0) q(y_t | y_{t-1}): precisions add,
    1/sigma^2 = 1/(1 - gamma_{t-1}) + alpha_t/(1 - alpha_t). Their ratio is 0 at t = 1 and -> 1 as t grows."""
    t = torch.arange(1, S.T + 1)
    zeros, ones = torch.zeros(S.T, 1, dtype=F64), torch.ones(S.T, 1, dtype=F64)
    a, g, g_prev = S.alpha(t), S.gamma(t), S.gamma(t - 1)
    sigma = {v: D.p_sample_step(zeros, zeros, a, g, g_prev, ones, variance=v)[:, 0] for v in ("paper", "posterior")}
    torch.testing.assert_close(sigma["paper"] ** 2, 1 - a, rtol=1e-12, atol=0)
    precision = a / (1 - a) + torch.where(t > 1, 1 / (1 - g_prev).clamp(min=1e-300), math.inf)  # t = 1: y_0 known
    torch.testing.assert_close(sigma["posterior"] ** 2, 1 / precision, rtol=1e-12, atol=1e-300)
    ratio = (sigma["posterior"] / sigma["paper"]) ** 2
    assert ratio[0] == 0 and (ratio[1:] < 1).all() and (ratio[1:].diff() > 0).all() and ratio[-1] > 0.99


def test_loss_6():
    e, f = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert D.loss(f, e, p=1).item() == pytest.approx((1 + 0 + 2 + 1) / 4)
    assert D.loss(f, e, p=2).item() == pytest.approx((1 + 0 + 4 + 1) / 4)
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        D.loss(f, e, p=3)


shapes = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float64]),
       kind=st.sampled_from(["float", "0d", "per_sample"]), seed=st.integers(0, 2**16))
def test_broadcasting_dtypes_and_no_mutation(shape, dtype, kind, seed):
    g = gen(seed)
    B = shape[0]
    y0, y_t, eps, z = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(4))
    copies = [v.clone() for v in (y0, y_t, eps, z)]
    ts = torch.randint(2, S.T + 1, (B,), generator=g)
    a, gm, gp = S.alpha(ts), S.gamma(ts), S.gamma(ts - 1)
    if kind == "float":
        a, gm, gp = a[0].item(), gm[0].item(), gp[0].item()
    elif kind == "0d":
        a, gm, gp = a[0], gm[0], gp[0]
    outs = [D.q_step(y0, a, eps), D.q_sample(y0, gm, eps), D.posterior(y0, y_t, a, gm, gp)[0],
            D.predict_y0(y_t, eps, gm), D.p_mean(y_t, eps, a, gm),
            D.p_sample_step(y_t, eps, a, gm, gp, z), D.p_sample_step(y_t, eps, a, gm, gp, z, "posterior")]
    for o in outs:
        assert o.shape == shape and o.dtype == dtype
    for v, c in zip((y0, y_t, eps, z), copies):
        assert torch.equal(v, c)
    if kind == "per_sample":  # sample i uses its own gamma_i
        i = B - 1
        one = D.q_sample(y0[i:i + 1], gm[i].item(), eps[i:i + 1])
        torch.testing.assert_close(outs[1][i:i + 1], one)


@pytest.mark.parametrize("call, match", [
    (lambda y: D.q_sample(y, 0.0, y), r"gamma must lie in \(0, 1\]"),
    (lambda y: D.q_sample(y, 1.5, y), r"gamma must lie in \(0, 1\]"),
    (lambda y: D.q_step(y, 1.0, y), r"alpha_t must lie in \(0, 1\)"),
    (lambda y: D.q_step(y, torch.tensor([0.5, -0.1]), y), "alpha_t"),
    (lambda y: D.p_mean(y, y, 0.9, 1.0), r"gamma_t must lie in \(0, 1\)"),
    (lambda y: D.posterior(y, y, 0.9, 0.5, 0.4), "gamma must decrease"),
    (lambda y: D.q_sample(y, torch.tensor([0.5, 0.5, 0.5]), y), "3 values but the batch has 2"),
    (lambda y: D.q_sample(y, 0.5, y[:1]), "same shape"),
    (lambda y: D.predict_y0(y, y, torch.ones(2, 2)), "scalar or a per-sample"),
    (lambda y: D.p_sample_step(y, y, 0.9, 0.5, 0.6, y, variance="ddim"), "variance must be"),
])
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 3, 4, 4))


@pytest.mark.cuda
def test_equations_on_cuda_match_cpu():
    g = gen(5)
    y0, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([3, 40])
    a, gm, gp = S.alpha(t), S.gamma(t), S.gamma(t - 1)
    for f in (lambda y, e, *c: D.p_sample_step(D.q_sample(y, c[1], e), e, *c, noise=e),):
        cpu = f(y0, eps, a, gm, gp)
        gpu = f(y0.cuda(), eps.cuda(), a.cuda(), gm.cuda(), gp.cuda())
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_no_float64_tensor_reaches_an_accelerator():
    """Issue 13, MPS: coefficients are formed in float64 on the CPU and cast there; only float32 moves. Run on the
    'meta' device (an accelerator stand-in that exists everywhere) with every aten op's output recorded."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from sr3_mini.schedule import Schedule

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.bad = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.device.type != "cpu" and t.dtype == torch.float64:
                    self.bad.append(str(func))
            return out

    s = Schedule.linear(50, 1e-4, 0.05)
    y, eps = torch.zeros(2, 3, 4, 4, device="meta"), torch.zeros(2, 3, 4, 4, device="meta")
    gamma_b = s.gamma(torch.tensor([3, 40]))                         # per-sample, float64 on the CPU
    with Record() as rec:
        D.q_step(y, s.alpha(5), eps)
        D.q_sample(y, 0.5, eps)
        D.q_sample(y, gamma_b, eps)
        D.posterior(y, y, s.alpha(5), s.gamma(5), s.gamma(4))
        D.predict_y0(y, eps, s.gamma(7).item())
        D.p_mean(y, eps, s.alpha(7), s.gamma(7))
        for variance in ("paper", "posterior"):
            D.p_sample_step(y, eps, s.alpha(7).item(), s.gamma(7).item(), s.gamma(6).item(), eps, variance)
    assert rec.bad == []
