"""sample.py against the equations: steps equal diffusion.p_sample_step with the same noise; with an oracle
that knows y_0, every intermediate state has its closed-form law (DDIM exactly, DDPM by Monte Carlo); with
the Bayes-optimal denoiser of Gaussian data (blind to y_0), every snapshot has the Gaussian marginal computed
here in float64; seeding, trajectories, argument checks, the cascade's conditioning and the schedule search.
Samplers are data (``SAMPLERS``, one step signature, ``refine``), and a step owns the eps^ it is handed, even from
a network that overwrites its output buffer at every call (a CUDA graph); the regression baseline's one pass.
The oracles carry a ``config`` (a UNetConfig: the paper's target): ``super_resolve`` refuses a network that does
not say what it predicts."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch

from sr3_mini import diffusion as D
from sr3_mini.resize import downsample, upsample
from sr3_mini.sample import (SAMPLERS, Stage, Step, Trajectory, cascade, ddim_loop, ddim_step, ddpm_step, dpm2m_step,
                             default_inference_schedule, refine, regression_predict, sample_loop, super_resolve)
from sr3_mini import sample as sample_module
from sr3_mini.evaluate import schedule_search
from sr3_mini.viz import plot_schedule_search
from sr3_mini.schedule import Schedule
from sr3_mini.unet import UNet, UNetConfig


class Oracle:
    """f(y_t, x_up, gamma) returning the true eps for a known y_0: (5) solved for eps."""
    multiple = 1
    config = UNetConfig()

    def __init__(self, y_0):
        self.y_0 = y_0

    def __call__(self, y_t, x_up, gamma):
        g = gamma.view(-1, 1, 1, 1).to(y_t.dtype)
        return (y_t - g.sqrt() * self.y_0.to(y_t)) / (1 - g).sqrt()


def toy_f(y_t, x_up, gamma):
    """An arbitrary smooth eps-predictor that uses all three inputs."""
    return 0.3 * y_t - 0.2 * x_up + 0.1 * gamma.view(-1, 1, 1, 1)


def images(B=2, H=8, W=8, seed=0, amp=0.8):
    return amp * torch.rand(B, 3, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - amp


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("variance", ["paper", "posterior"])
def test_each_step_is_p_sample_step_with_the_same_noise(variance):
    S = Schedule.linear(3, 1e-3, 0.3)
    x_up = images(seed=1)
    y, traj = sample_loop(toy_f, x_up, S, generator=gen(7), variance=variance, return_trajectory=True,
                          every=1, progress=False)
    g = gen(7)
    y_t = torch.randn(x_up.shape, generator=g)                            # (7): y_T ~ N(0, I)
    expected = [y_t]
    for t in (3, 2, 1):
        z = torch.randn(x_up.shape, generator=g) if t > 1 else None       # z = 0 at t = 1
        eps = toy_f(y_t, x_up, torch.full((2,), S.gamma(t).item()))
        y_t = D.p_sample_step(y_t, eps, S.alpha(t), S.gamma(t), S.gamma(t - 1), z, variance)
        expected.append(y_t)
    torch.testing.assert_close(y, y_t, rtol=0, atol=1e-6)
    assert traj.t == [3, 2, 1, 0]
    torch.testing.assert_close(traj.y_t, torch.stack(expected), rtol=0, atol=1e-6)


def test_clip_equals_paper_step_when_nothing_is_clamped_and_clamps_otherwise():
    S = default_inference_schedule(20)
    y_0 = images(amp=0.5)
    a = sample_loop(Oracle(y_0), y_0, S, generator=gen(3), progress=False)
    b = sample_loop(Oracle(y_0), y_0, S, generator=gen(3), clip=True, progress=False)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)   # posterior mean (4) at y^_0 == (9)
    wild = lambda y_t, x_up, gamma: -5 * torch.ones_like(y_t)               # noqa: E731
    _, traj = sample_loop(wild, y_0, S, generator=gen(3), clip=True, return_trajectory=True, progress=False)
    assert traj.y0_hat[:-1].abs().max() <= 1
    _, traj = sample_loop(wild, y_0, S, generator=gen(3), clip=False, return_trajectory=True, progress=False)
    assert traj.y0_hat[:-1].abs().max() > 1


@pytest.mark.parametrize("variance", ["paper", "posterior"])
def test_ddpm_with_oracle_has_the_stated_marginals_at_every_step_and_recovers_y0(variance):
    """The last step alone returns y_0 for this oracle (z = 0, gamma_0 = 1), so the steps before it are checked
    by their marginals. Started from y_T ~ q(y_T | y_0), the posterior variance keeps y_t ~ q(y_t | y_0) =
    N(sqrt(gamma_t) y_0, 1 - gamma_t) at every t (the forward posterior (4) is consistent with (5)); the paper's
    1 - alpha_t adds variance: V_{t-1} = c_t^2 V_t + 1 - alpha_t, c_t = sqrt(alpha_t)(1 - gamma_{t-1})/(1 - gamma_t).
    Monte Carlo over 256 x 192 pixels: the pooled z-scores' mean within 5/sqrt(N) of 0, variance within
    5 sqrt(2/N) of 1."""
    S = default_inference_schedule(50)
    y_0 = images(B=1, H=8, W=8).double().expand(256, -1, -1, -1)
    g_T = S.gamma(S.T).item()
    y_T = math.sqrt(g_T) * y_0 + math.sqrt(1 - g_T) * torch.randn(y_0.shape, generator=gen(9), dtype=torch.float64)
    y, traj = sample_loop(Oracle(y_0), y_0, S, generator=gen(1), variance=variance, y_T=y_T,
                          return_trajectory=True, every=5, progress=False)
    V = {S.T: 1 - g_T}
    for t in range(S.T, 1, -1):
        a, g, g_prev = S.alpha(t).item(), S.gamma(t).item(), S.gamma(t - 1).item()
        c_t = math.sqrt(a) * (1 - g_prev) / (1 - g)
        V[t - 1] = c_t**2 * V[t] + (1 - a if variance == "paper" else (1 - g_prev) * (1 - a) / (1 - g))
    N = y_0.numel()
    for t, gamma, y_t in zip(traj.t[:-1], traj.gamma[:-1], traj.y_t[:-1]):
        if variance == "posterior":
            assert abs(V[t] - (1 - gamma)) < 1e-12
        z = (y_t.double() - math.sqrt(gamma) * y_0) / math.sqrt(V[t])
        assert abs(z.mean().item()) < 5 / math.sqrt(N), t
        assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / N), t
    assert traj.t[-2] == 5 and (V[5] > 1.2 * (1 - S.gamma(5).item())) == (variance == "paper")  # told apart
    torch.testing.assert_close(y, y_0, rtol=0, atol=1e-10)
    y = sample_loop(Oracle(y_0[:3]), y_0[:3].float(), Schedule.linear(100, 1e-4, 0.1), generator=gen(1),
                    variance=variance, progress=False)
    torch.testing.assert_close(y, y_0[:3].float(), rtol=0, atol=1e-4)


def test_ddim_with_oracle_follows_y_0_and_the_first_eps_at_every_step_and_is_deterministic():
    """With the oracle, eps^ at y_T is eps_T = (y_T - sqrt(gamma_T) y_0)/sqrt(1 - gamma_T), and each DDIM step
    lands on (5) with that same eps: y_t = sqrt(gamma_t) y_0 + sqrt(1 - gamma_t) eps_T for every t, not only
    t = 0."""
    y_0 = images(B=3, H=12, W=8).double()
    S = default_inference_schedule(25)
    y_T = torch.randn(y_0.shape, generator=gen(5), dtype=torch.float64)
    a, traj = ddim_loop(Oracle(y_0), y_0, S, generator=gen(1), y_T=y_T, progress=False, return_trajectory=True,
                        every=1)
    assert a.dtype == torch.float64 and traj.t == list(range(25, -1, -1))
    g_T = S.gamma(S.T).item()
    eps_T = (y_T - math.sqrt(g_T) * y_0) / math.sqrt(1 - g_T)
    for gamma, y_t in zip(traj.gamma, traj.y_t):
        torch.testing.assert_close(y_t.double(), math.sqrt(gamma) * y_0 + math.sqrt(1 - gamma) * eps_T,
                                   rtol=0, atol=2e-6)                     # snapshots are float32
    torch.testing.assert_close(a, y_0, rtol=0, atol=1e-10)
    a, b = (ddim_loop(toy_f, y_0, S, generator=gen(s), y_T=y_T, progress=False) for s in (1, 2))
    assert torch.equal(a, b)                      # only y_T is random: the generator is never used after it
    c = ddim_loop(toy_f, y_0, S, generator=gen(9), progress=False)
    assert torch.equal(c, ddim_loop(toy_f, y_0, S, generator=gen(9), progress=False))


def test_same_seed_same_sample_other_seed_differs():
    x_up = images(seed=2)
    S = default_inference_schedule(10)
    a, b, c = (sample_loop(toy_f, x_up, S, generator=gen(s), progress=False) for s in (4, 4, 5))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # with y_T fixed, DDPM still differs by seed through z_t (unlike DDIM)
    y_T = torch.randn(x_up.shape, generator=gen(0))
    d, e = (sample_loop(toy_f, x_up, S, generator=gen(s), y_T=y_T, progress=False) for s in (4, 5))
    assert not torch.allclose(d, e)


@pytest.mark.parametrize("sampler,variance", [("ddpm", "paper"), ("ddpm", "posterior"), ("ddim", None)])
def test_bayes_optimal_denoiser_of_gaussian_data_reproduces_the_gaussian(sampler, variance):
    """An oracle blind to y_0: for data y_0 ~ N(m, s^2) per pixel, E[eps | y_t] = k_t (y_t - sqrt(g) m),
    k_t = sqrt(1 - g)/(g s^2 + 1 - g), in closed form. Each step is then affine in y_t, so the sampler's
    marginal at every t is a Gaussian whose mean M_t and variance V_t follow from (10) (or DDIM's step) applied
    to scalars here, in float64. Checked at every snapshot: (a) the samples against (M_t, V_t), Monte Carlo
    within 5 standard errors (N = 16,384 pixels); (b) (M_t, V_t) against the true marginal
    q(y_t) = N(sqrt(g) m, g s^2 + 1 - g), which a 500-step sampler reaches up to its discretisation error
    (measured: means within 0.2 % of the standard deviation; standard deviations within 0.4 % (paper), 0.6 %
    (DDIM), 1.5 % (posterior variance, which omits the variance of y_0 given y_t, at t = 0); bound 2 %)."""
    m, s = 0.3, 0.5

    def f(y_t, x_up, gamma):
        g = gamma.view(-1, 1, 1, 1)
        return (1 - g).sqrt() * (y_t - g.sqrt() * m) / (g * s * s + 1 - g)

    def step(y, t):
        """One step on a scalar y, written out: (10) for DDPM, (8) then (5) at gamma_{t-1} for DDIM."""
        a, g, g_prev = S.alpha(t).item(), S.gamma(t).item(), S.gamma(t - 1).item()
        eps = math.sqrt(1 - g) * (y - math.sqrt(g) * m) / (g * s * s + 1 - g)
        if sampler == "ddim":
            return math.sqrt(g_prev) * (y - math.sqrt(1 - g) * eps) / math.sqrt(g) + math.sqrt(1 - g_prev) * eps, 0
        var = 0 if t == 1 else 1 - a if variance == "paper" else (1 - g_prev) * (1 - a) / (1 - g)
        return (y - (1 - a) / math.sqrt(1 - g) * eps) / math.sqrt(a), var

    x_up = torch.zeros(16, 3, 16, 16)
    S = default_inference_schedule(500)
    kw = dict(generator=gen(0), progress=False, return_trajectory=True)
    y, traj = (sample_loop(f, x_up, S, variance=variance, **kw) if sampler == "ddpm" else ddim_loop(f, x_up, S, **kw))
    moments, M, V = {}, 0.0, 1.0                              # (7): y_T ~ N(0, 1)
    for t in range(S.T, 0, -1):
        moments[t] = M, V
        (b, var), (ab, _) = step(0.0, t), step(1.0, t)         # y_{t-1} = A y_t + b + sqrt(var) z
        M, V = (ab - b) * M + b, (ab - b) ** 2 * V + var
    moments[0] = M, V
    N = x_up.numel()
    for t, gamma, y_t in zip(traj.t, traj.gamma, traj.y_t):
        M, V = moments[t]
        z = (y_t.double() - M) / math.sqrt(V)
        assert abs(z.mean().item()) < 5 / math.sqrt(N) and abs(z.var().item() - 1) < 5 * math.sqrt(2 / N), t
        sd = math.sqrt(gamma * s * s + 1 - gamma)
        assert abs(M - math.sqrt(gamma) * m) < 0.02 * sd and abs(math.sqrt(V) - sd) < 0.02 * sd, t


def test_trajectory_shapes_and_last_snapshot_is_the_output():
    y_0 = images(B=2, H=8, W=12)
    S = default_inference_schedule(30)
    y, traj = sample_loop(Oracle(y_0), y_0, S, generator=gen(0), return_trajectory=True, progress=False)
    assert isinstance(traj, Trajectory)
    assert traj.t[0] == 30 and traj.t[-1] == 0 and traj.t == sorted(traj.t, reverse=True)
    assert len(traj) == len(traj.gamma) == traj.y_t.shape[0] == traj.y0_hat.shape[0] == 11   # every 3 + t = 0
    assert traj.y_t.shape[1:] == (2, 3, 8, 12)
    assert traj.gamma[-1] == 1.0 and abs(traj.gamma[0] - S.gamma(30).item()) < 1e-12
    assert torch.equal(traj.y_t[-1], y)
    torch.testing.assert_close(traj.y0_hat[0], y_0, rtol=0, atol=1e-3)     # the oracle's y^_0 is y_0 at any t
    _, traj = ddim_loop(Oracle(y_0), y_0, S, generator=gen(0), return_trajectory=True, trajectory_steps=[30, 1],
                        progress=False)
    assert traj.t == [30, 1, 0]
    with pytest.raises(ValueError, match="trajectory_steps"):
        sample_loop(toy_f, y_0, S, return_trajectory=True, trajectory_steps=[31], progress=False)


def test_super_resolve_shapes_range_trajectory_and_progress(monkeypatch):
    y = images(B=2, H=16, W=24, amp=1.0)
    x = downsample(y, 4)
    model = Oracle(y * 1.5)                      # a target out of range: the output must still be clamped
    bars = []                                    # tqdm reads TQDM_DISABLE itself (when imported): progress=True
    monkeypatch.setattr(sample_module, "tqdm", lambda it, **kw: bars.append(kw) or it)   # must leave it to tqdm
    out, traj = super_resolve(model, x, steps=5, generator=gen(0), return_trajectory=True, progress=True)
    assert out.shape == (2, 3, 16, 24) and out.abs().max() <= 1
    assert torch.equal(traj.y_t[-1], out)
    assert traj.y_t.shape == (6, 2, 3, 16, 24)
    super_resolve(model, x, steps=5, generator=gen(0), progress=False)
    assert bars[0]["desc"] == "ddpm" and "disable" not in bars[0] and bars[1]["disable"] is True
    torch.testing.assert_close(super_resolve(Oracle(y), x, steps=20, generator=gen(0), progress=False,
                                             variance="posterior", clip=False), y, rtol=0, atol=1e-4)
    torch.testing.assert_close(super_resolve(Oracle(y), x, steps=20, sampler="ddim", progress=False), y,
                               rtol=0, atol=1e-4)
    s = Schedule.linear(7, 1e-3, 0.5)
    _, traj = super_resolve(model, x, schedule=s, return_trajectory=True, every=1, progress=False)
    assert traj.t == list(range(7, -1, -1))     # a given schedule is used as is


def test_super_resolve_rejects_bad_arguments():
    x = torch.zeros(1, 3, 4, 4)
    model = Oracle(torch.zeros(1, 3, 16, 16))
    for kwargs, match in [({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"sampler": "ddpx"}, "sampler"),
                          ({"variance": "fixed"}, "variance"), ({"autocast": "int8"}, "autocast")]:
        with pytest.raises(ValueError, match=match):
            super_resolve(model, x, progress=False, **kwargs)
    for bad in (torch.zeros(3, 4, 4), torch.zeros(1, 1, 4, 4)):
        with pytest.raises(ValueError, match=r"\[B, 3, h, w\]"):
            super_resolve(model, bad, progress=False)
    model.multiple = 32
    with pytest.raises(ValueError, match="multiple=32"):
        super_resolve(model, x, progress=False)


class Conv(torch.nn.Module):
    """A small network with dropout, to check eval mode, autocast and device handling."""
    multiple = 4
    config = UNetConfig()

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 3, 3, padding=1)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, y_t, x_up, gamma):
        return self.drop(self.conv(torch.cat([x_up, y_t], 1))) * gamma.view(-1, 1, 1, 1).to(y_t.dtype)


def test_eval_mode_is_used_and_restored_and_bf16_autocast_runs_the_network_only():
    torch.manual_seed(0)
    model = Conv().train()
    x = images(B=1, H=4, W=4)
    a = super_resolve(model, x, steps=4, generator=gen(0), progress=False)
    b = super_resolve(model, x, steps=4, generator=gen(0), progress=False)
    assert torch.equal(a, b) and model.training
    c = super_resolve(model, x, steps=4, generator=gen(0), progress=False, autocast="bf16")
    assert c.dtype == torch.float32
    torch.testing.assert_close(c, a, rtol=0, atol=0.1)


def _tiny_model():
    try:
        from sr3_mini.unet import UNet
    except ImportError:
        return Conv().eval()
    return UNet.from_preset("tiny").eval()


def test_cascade_shapes():
    torch.manual_seed(0)
    model = _tiny_model()
    m = model.multiple
    h = max(2, m // 4)
    x = images(B=1, H=h, W=h, amp=1.0)
    stages = [Stage(model, steps=1), Stage(model, schedule=Schedule.linear(1, 1e-3, 0.5))]  # 2 -> 8 -> 32
    outs = cascade(stages, x, generator=gen(0), return_all=True, progress=False)
    assert [o.shape for o in outs] == [(1, 3, 4 * h, 4 * h), (1, 3, 16 * h, 16 * h)]
    assert all(o.abs().max() <= 1 for o in outs)
    with pytest.raises(ValueError, match="stage"):
        cascade([], x)


class Recorder:
    """toy_f that keeps every x_up it is given: what a cascade stage was conditioned on."""
    multiple = 1
    config = UNetConfig()

    def __init__(self):
        self.x_up = []

    def __call__(self, y_t, x_up, gamma):
        self.x_up.append(x_up.clone())
        return toy_f(y_t, x_up, gamma)


def test_cascade_conditions_each_stage_on_the_previous_output():
    x = images(B=2, H=3, W=2, amp=0.9)
    first, second = Recorder(), Recorder()
    outs = cascade([Stage(first, steps=3), Stage(second, steps=2, scale=2)], x, generator=gen(4),
                   return_all=True, progress=False)
    assert [o.shape for o in outs] == [(2, 3, 12, 8), (2, 3, 24, 16)]
    assert len(first.x_up) == 3 and len(second.x_up) == 2
    assert all(torch.equal(u, upsample(x, 4)) for u in first.x_up)
    assert all(torch.equal(u, upsample(outs[0], 2)) for u in second.x_up)     # stage 1's output, not x
    g = gen(4)                                   # the same chain by hand, one generator through both stages
    y1 = super_resolve(Recorder(), x, steps=3, generator=g, progress=False)
    y2 = super_resolve(Recorder(), y1, steps=2, generator=g, scale=2, progress=False)
    assert torch.equal(outs[0], y1) and torch.equal(outs[1], y2)


def test_schedule_search_rows_and_png(tmp_path):
    y = images(B=2, H=16, W=16, amp=0.9)
    pairs = [(downsample(y[i], 4), y[i]) for i in range(2)]
    rows = schedule_search(Oracle(y[:1]), pairs[:1], [2, 4], [0.1, 0.5], generator=gen(0))
    assert len(rows) == 4
    assert set(rows[0]) == {"steps", "beta_end", "gamma_T", "psnr", "ssim", "consistency", "sharpness"}
    assert rows[0]["psnr"] == max(r["psnr"] for r in rows)
    assert all(math.isfinite(r["ssim"]) and 0 < r["gamma_T"] < 1 for r in rows)
    again = schedule_search(Oracle(y[:1]), pairs[:1], [2, 4], [0.1, 0.5], metric="consistency", generator=gen(0))
    assert sorted(map(str, rows)) == sorted(map(str, again))   # same noise in every call and cell
    assert again[0]["consistency"] == min(r["consistency"] for r in rows)
    path = plot_schedule_search(rows, tmp_path / "search.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="metric"):
        schedule_search(Oracle(y), (downsample(y, 4), y), [2], [0.1], metric="fid")


@pytest.mark.cuda
def test_cuda_run_matches_cpu_with_a_cpu_generator_and_bf16_autocast_runs(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)     # compare like with like
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = _tiny_model()
    x = images(B=2, H=4, W=4, amp=1.0)
    cpu = super_resolve(model, x, steps=8, generator=gen(0), progress=False)
    model_cuda = copy.deepcopy(model).cuda()
    gpu = super_resolve(model_cuda, x, steps=8, generator=gen(0), progress=False)
    assert gpu.device == x.device                                # moved to the model's device and back
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-4)      # the same noise, from the same CPU generator
    g_cuda = torch.Generator("cuda").manual_seed(0)
    bf, traj = super_resolve(model_cuda, x.cuda(), steps=8, generator=g_cuda, autocast="bf16", progress=False,
                             return_trajectory=True)
    assert bf.is_cuda and bf.dtype == torch.float32 and bf.abs().max() <= 1
    assert traj.y_t.device.type == "cpu" and torch.equal(traj.y_t[-1], bf.cpu())
    y_0 = images(B=2, H=16, W=16).cuda()
    y = ddim_loop(Oracle(y_0), y_0, default_inference_schedule(20), generator=g_cuda, progress=False)
    torch.testing.assert_close(y, y_0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("bad, phrase", [("uint8", "dtype"), ("0..255", r"\[-1, 1\]"), ("nan", "NaN")])
def test_super_resolve_refuses_what_is_not_an_image_in_minus_one_one(bad, phrase):
    y = images(B=1, H=16, W=16, amp=0.5)
    x = downsample(y, 4)
    x = {"uint8": ((x + 1) * 127.5).to(torch.uint8), "0..255": (x + 1) * 127.5,
         "nan": x.masked_fill(torch.zeros_like(x, dtype=torch.bool).index_fill(-1, torch.tensor([1]), True),
                              float("nan"))}[bad]
    with pytest.raises(ValueError, match=phrase):
        super_resolve(Oracle(y), x, steps=3, generator=gen(0), progress=False)


def test_super_resolve_warns_on_a_zero_one_image_and_fails_on_a_non_finite_sample():
    y = images(B=1, H=16, W=16, amp=0.5)
    x = downsample(y, 4)
    with pytest.warns(UserWarning, match="0..1"):
        super_resolve(Oracle(y), (x + 1) / 2, steps=3, generator=gen(0), progress=False)
    overflowing = type("Overflowing", (), {"config": UNetConfig(),
                                           "__call__": lambda self, y_t, x_up, g: torch.full_like(y_t, float("inf"))})()
    with pytest.raises(FloatingPointError, match="not finite"):
        super_resolve(overflowing, x, steps=3, generator=gen(0), progress=False,
                      clip=False)                             # clip=True would clamp y^_0 back into range


# ---- samplers as data, and eps^ owned by the step (issue 18) ----------------------------------------------------
def test_samplers_are_a_table_of_step_functions_that_super_resolve_looks_up(monkeypatch):
    """sample_loop and ddim_loop are refine with the table's steps; a new sampler is one function and one entry,
    and super_resolve runs it by name with every option it already takes."""
    assert SAMPLERS == {"ddpm": ddpm_step, "ddim": ddim_step, "dpm2m": dpm2m_step}
    S, x_up = default_inference_schedule(6), images(seed=3)
    for name, loop, kw in (("ddpm", sample_loop, dict(variance="posterior", clip=True)), ("ddim", ddim_loop, {})):
        a = loop(toy_f, x_up, S, generator=gen(2), progress=False, **kw)
        assert torch.equal(a, refine(toy_f, x_up, S, name, generator=gen(2), progress=False, **kw))
        assert torch.equal(a, refine(toy_f, x_up, S, SAMPLERS[name], generator=gen(2), progress=False, **kw))
    seen = []

    def halfway(y_t, eps, k: Step):
        """A made-up sampler: DDIM's step, recording what it is told."""
        seen.append((k.t, k.clip, k.variance, k.want_y0, len(k.memory)))
        return ddim_step(y_t, eps, k)
    monkeypatch.setitem(SAMPLERS, "halfway", halfway)
    y = images(B=1, H=16, W=16)
    x = downsample(y, 4)
    out = super_resolve(Oracle(y), x, steps=4, sampler="halfway", generator=gen(0), progress=False)
    assert torch.equal(out, super_resolve(Oracle(y), x, steps=4, sampler="ddim", generator=gen(0), progress=False))
    assert [t for t, *_ in seen] == [4, 3, 2, 1] and seen[0][1] == (-1.0, 1.0) and seen[0][2] == "posterior"
    with pytest.raises(ValueError, match="sampler"):
        refine(toy_f, x_up, S, "ddpx")


class GraphLike:
    """toy_f through one output buffer that every call overwrites, as a replayed CUDA graph does."""
    multiple = 1
    config = UNetConfig()

    def __init__(self):
        self.out = None

    def __call__(self, y_t, x_up, gamma):
        eps = toy_f(y_t, x_up, gamma)
        self.out = torch.empty_like(eps) if self.out is None else self.out
        return self.out.copy_(eps)


def adams_bashforth(y_t, eps, k: Step):
    """A multistep consumer: DDIM's step along (3 eps_t - eps_{t+1}) / 2, keeping eps_t in ``memory``."""
    prev = k.memory.get("eps")
    k.memory["eps"] = eps
    return ddim_step(y_t, eps if prev is None else (3 * eps - prev) / 2, k)


def test_a_multistep_sampler_keeps_the_eps_it_was_handed_under_a_reusing_network(monkeypatch):
    """refine hands each step a tensor of its own: with a network that overwrites its output buffer at every call
    (a CUDA graph, ``accel.SamplingNet(compile=True)`` on CUDA) the multistep sampler gives the same result as
    with a network that returns new tensors. Before issue 18, eps^ was the network's buffer, so the eps kept from
    the previous step had become this step's."""
    S, x_up = default_inference_schedule(8), images(seed=4)
    y_T = torch.randn(x_up.shape, generator=gen(6))
    fresh = refine(toy_f, x_up, S, adams_bashforth, y_T=y_T, progress=False)
    reused = refine(GraphLike(), x_up, S, adams_bashforth, y_T=y_T, progress=False)
    assert torch.equal(reused, fresh)
    assert not torch.equal(fresh, refine(toy_f, x_up, S, "ddim", y_T=y_T, progress=False))  # the memory matters
    # the library's own multistep solver (DPM-Solver++(2M)) too
    assert torch.equal(refine(GraphLike(), x_up, S, "dpm2m", y_T=y_T, progress=False),
                       refine(toy_f, x_up, S, "dpm2m", y_T=y_T, progress=False))
    y = images(B=1, H=16, W=16)                       # and through super_resolve (accel.SamplingNet's path)
    monkeypatch.setitem(SAMPLERS, "ab2", adams_bashforth)
    a = super_resolve(GraphLike(), downsample(y, 4), steps=5, sampler="ab2", generator=gen(1), progress=False)
    b = super_resolve(Recorder(), downsample(y, 4), steps=5, sampler="ab2", generator=gen(1), progress=False)
    assert torch.equal(a, b)


class Probe(torch.nn.Module):
    """A network whose output is known, F = 2 x_up - 0.1, and which records what it was called with."""

    def __init__(self, target="y", residual_scale=0.25):
        super().__init__()
        self.config = SimpleNamespace(target=target, residual_scale=residual_scale)
        self.calls = []

    def forward(self, y_t, x_up, gamma):
        self.calls.append((y_t.clone(), x_up.clone(), torch.as_tensor(gamma).clone()))
        return 2 * x_up - 0.1


def test_regression_predict_is_one_pass_with_zero_y_t_and_gamma_one():
    """The baseline's semantics, not its code: one call with y_t = 0 and gamma = 1 (no noise: (5) at gamma = 1
    is y_0 itself), the output is the prediction (target y) or x_up + scale F (residual target)."""
    x_up = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for target, expected in (("y", 2 * x_up - 0.1), ("residual", x_up + 0.25 * (2 * x_up - 0.1))):
        probe = Probe(target)
        torch.testing.assert_close(regression_predict(probe, x_up), expected, rtol=0, atol=1e-7)
        [(y_t, seen, gamma)] = probe.calls
        assert torch.equal(y_t, torch.zeros_like(x_up)) and torch.equal(seen, x_up)
        assert gamma.shape == (2,) and (gamma == 1).all()
    wrapped = torch.nn.DataParallel(Probe("residual", 0.5))  # a wrapper: the config of the network inside is read
    torch.testing.assert_close(regression_predict(wrapped, x_up), x_up + 0.5 * (2 * x_up - 0.1), rtol=0, atol=1e-7)
    for target in ("y", "residual"):                   # a real U-Net whose last conv outputs a known constant
        model = UNet.from_preset("tiny", target=target, residual_scale=0.25).eval()
        torch.nn.init.zeros_(model.conv_out.weight)
        with torch.no_grad():
            model.conv_out.bias.copy_(torch.tensor([0.2, -0.4, 0.6]))
        F = torch.tensor([0.2, -0.4, 0.6]).view(1, 3, 1, 1).expand_as(x_up)
        torch.testing.assert_close(regression_predict(model, x_up), F if target == "y" else x_up + 0.25 * F)
