"""Reference answers to the exercises of notebooks 01-10, and the answers to the open questions of 02, 03 and 09.

Each exercise in a notebook has a blank (``return ...``, or ``my_guess_... = ...`` for a prediction) and a check
cell that calls ``check(name, test, fn)``: it prints one line, *right*, *wrong* (with the first line of the reason)
or *not attempted yet*. The check cells also run the functions below through the same tests, so a notebook run under
``pytest --nbval`` shows that every check is passable. Try the exercise before reading on.

Colab: the install cell puts this folder on ``sys.path``, so ``import solutions`` works there too.
"""
from __future__ import annotations

import math

import torch

__all__ = ["check", "ANSWERS"]


class _NotAttempted(Exception):
    pass


def _guard(fn):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        if out is Ellipsis or out is None or (isinstance(out, tuple) and Ellipsis in out):
            raise _NotAttempted
        return out
    wrapped.__name__ = getattr(fn, "__name__", "fn")
    return wrapped


def check(name: str, test, fn) -> bool:
    """Run ``test(fn)`` (``fn`` guarded: a blank answer is 'not attempted'); print the verdict; return True if right."""
    try:
        test(_guard(fn))
    except _NotAttempted:
        print(f"{name}: not attempted yet (fill in the blank and run this cell again)")
        return False
    except Exception as e:  # an AssertionError from a check, or an error inside the answer
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        print(f"{name}: wrong. {type(e).__name__}: {reason}")
        return False
    print(f"{name}: right")
    return True


# ---- notebook 01: the forward process ------------------------------------------------------------------------
def my_gammas(alphas):
    gammas = [1.0]                                     # gamma_0 = 1: no step taken yet
    for a in alphas.tolist():
        gammas.append(gammas[-1] * a)                  # gamma_t = alpha_t gamma_{t-1}
    return torch.tensor(gammas, dtype=torch.float64)


def my_var_t(var_0, gamma_t):
    # (2) unrolled: Var(y_t) - 1 = alpha_t (Var(y_{t-1}) - 1), so Var(y_t) = 1 + gamma_t (Var(y_0) - 1)
    return 1 + gamma_t * (var_0 - 1)


def my_half_way(schedule):
    t = 0
    while schedule.gamma(t) > 0.5:
        t += 1
    return t


# ---- notebook 02: the posterior ------------------------------------------------------------------------------
# exercise 1: from t = 1000 to s = 500 on SR3's schedule,
# sigma^2 / (1 - gamma_s) = (1 - gamma_t / gamma_s) / (1 - gamma_t) = 0.847 / 0.918 = 0.92:
# 500 steps later, y_t says little about y_s that y_0 has not said already
my_guess_jump = 0.92


def my_jump_posterior(gamma_t, gamma_s):
    # t - s steps of (1) compose like one (notebook 01's induction, started at s): q(y_t | y_s) is (1) with
    # alpha = gamma_t / gamma_s. The prior is (3) at s. So (4) holds with alpha_t -> gamma_t / gamma_s and
    # gamma_{t-1} -> gamma_s
    a = gamma_t / gamma_s
    c_0 = gamma_s**0.5 * (1 - a) / (1 - gamma_t)
    c_t = a**0.5 * (1 - gamma_s) / (1 - gamma_t)
    return c_0, c_t, (1 - gamma_s) * (1 - a) / (1 - gamma_t)


def my_mean_spread(alpha_t, gamma_t, gamma_prev):
    # mu = c_0 y_0 + c_t y_t and Var(y_t | y_0) = 1 - gamma_t (3), so Var(mu | y_0) = c_t^2 (1 - gamma_t); the law of
    # total variance then reads sigma^2 + Var(mu | y_0) = Var(y_{t-1} | y_0) = 1 - gamma_{t-1}
    c_t = alpha_t**0.5 * (1 - gamma_prev) / (1 - gamma_t)
    return c_t**2 * (1 - gamma_t)


def my_mu_from_eps(y_t, eps, alpha_t, gamma_t, gamma_prev):
    y0_hat = (y_t - (1 - gamma_t) ** 0.5 * eps) / gamma_t**0.5  # (8)
    c_0 = gamma_prev**0.5 * (1 - alpha_t) / (1 - gamma_t)        # (4)
    c_t = alpha_t**0.5 * (1 - gamma_prev) / (1 - gamma_t)
    return c_0 * y0_hat + c_t * y_t


# ---- notebook 03: the training objective ---------------------------------------------------------------------
def my_sample_gamma(schedule, n, generator):
    t = torch.randint(1, schedule.T + 1, (n,), generator=generator)           # t ~ U{1..T}
    u = torch.rand(n, generator=generator, dtype=torch.float64)               # then uniform in the interval
    return schedule.gamma(t) + u * (schedule.gamma(t - 1) - schedule.gamma(t))


def my_loss(eps_pred, eps, p):
    return ((eps_pred - eps).abs() ** p).mean()


def my_adam(theta, grads, lr):
    m, v, theta = torch.zeros_like(theta), torch.zeros_like(theta), theta.clone()
    for k, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta = theta - lr * (m / (1 - 0.9**k)) / ((v / (1 - 0.999**k)).sqrt() + 1e-8)
    return theta


def my_elbo_weight(alpha_t, gamma_t, gamma_prev):
    # KL(N(mu_q, s2) || N(mu_p, s2)) = (mu_q - mu_p)^2 / (2 s2), mu_q - mu_p = c_0 (y_0 - y0_hat),
    # y_0 - y0_hat = sqrt((1 - gamma_t) / gamma_t) (eps_hat - eps)
    sigma2 = (1 - gamma_prev) * (1 - alpha_t) / (1 - gamma_t)
    c_0 = gamma_prev**0.5 * (1 - alpha_t) / (1 - gamma_t)
    return c_0**2 * (1 - gamma_t) / (2 * sigma2 * gamma_t)


def my_eps_star(y_t, gamma, m, s2):
    # (eps, y_t) jointly Gaussian: Cov(eps, y_t) = sqrt(1 - gamma), Var(y_t) = gamma s2 + 1 - gamma
    return (1 - gamma) ** 0.5 * (y_t - gamma**0.5 * m) / (gamma * s2 + 1 - gamma)


def warmup_first_step(w0: float, lr: float = 1e-4 / 10_000) -> float:
    """How far a float32 weight of value ``w0`` actually moves under one step of size ``lr`` (Adam's first step is
    lr * sign(g)): the answer to notebook 03's exercise 3."""
    w = torch.tensor(w0, dtype=torch.float32)
    return (w - lr).item() - w.item()


# ---- notebook 04: the reverse process ------------------------------------------------------------------------
def my_predict_y0(y_t, eps, gamma_t):
    return (y_t - (1 - gamma_t) ** 0.5 * eps) / gamma_t**0.5


def my_p_mean(y_t, eps, alpha_t, gamma_t):
    return (y_t - (1 - alpha_t) / (1 - gamma_t) ** 0.5 * eps) / alpha_t**0.5


def my_variance_ratio(schedule):
    return (1 - schedule.gammas[:-1]) / (1 - schedule.gammas[1:])


def my_count_below(schedule, level=0.9):
    return int((my_variance_ratio(schedule) < level).sum())


def my_tweedie_y0(y_t, score, gamma_t):
    # Tweedie: E[y_0 | y_t] = (y_t + (1 - gamma_t) grad log q(y_t)) / sqrt(gamma_t)
    return (y_t + (1 - gamma_t) * score) / gamma_t**0.5


def my_ddim_step(y_t, y0_hat, gamma_t, gamma_prev, sigma=0.0, z=None):
    # the mean of q_sigma(y_{t-1} | y_t, y_0) at y_0 = y0_hat, plus sigma z
    eps = (y_t - gamma_t**0.5 * y0_hat) / (1 - gamma_t) ** 0.5
    out = gamma_prev**0.5 * y0_hat + (1 - gamma_prev - sigma**2) ** 0.5 * eps
    return out if z is None else out + sigma * z


# ---- notebook 05: the U-Net ----------------------------------------------------------------------------------
def my_embedding_distance(delta, C):
    # |emb(g_1) - emb(g_2)|^2 = sum_k (sin a_k - sin b_k)^2 + (cos a_k - cos b_k)^2 = sum_k 2 - 2 cos(a_k - b_k),
    # a_k - b_k = 1000 delta omega_k: only the difference delta = g_1 - g_2 counts
    k = torch.arange(C // 2, dtype=torch.float64)
    omega = 10000.0 ** (-k / (C // 2 - 1))
    return float((2 - 2 * torch.cos(1000 * delta * omega)).sum().sqrt())


# exercise 5: a convolution from C_in to C_out channels has 9 C_in C_out weights; doubling every channel count
# multiplies them by 4, and the biases, norms and the embedding's first layer (which grow only like C) are a small part
my_guess_double_C = 4.0


# ---- notebook 09: the fool rate ------------------------------------------------------------------------------
def my_zero_upper(n, level=0.95):
    # keep every f under which seeing K = 0 is not too unlikely: P(K = 0) = (1 - f)^n >= (1 - level) / 2, one tail
    return 1 - ((1 - level) / 2) ** (1 / n)


def my_trials_needed(half_width, z=1.959963984540054):
    # z / (2 sqrt(n + z^2)) <= h  <=>  n >= z^2 / (4 h^2) - z^2
    return max(1, math.ceil(z**2 / (4 * half_width**2) - z**2))


def my_observer(x, left, right):
    # without x: the photo is the one with more fine detail in absolute terms (mean |difference| of neighbouring
    # pixels), not as a share of its own spectrum, which a smooth photo keeps small
    def detail(y):
        return (y[:, 1:] - y[:, :-1]).abs().mean() + (y[:, :, 1:] - y[:, :, :-1]).abs().mean()
    return "left" if detail(left) > detail(right) else "right"


# ---- the open questions --------------------------------------------------------------------------------------
ANSWERS = {
    "01, exercise 3": (
        "Later. SR3's linear schedule (T = 2000, beta 1e-6 .. 1e-2) reaches gamma_t = 1/2 at t = 527, about a quarter "
        "of the way; the cosine schedule at t = 497 of 1000, half way, by design: gamma_t = cos^2 of a quarter turn "
        "scaled by t/T, so it spends as many steps above SNR 1 as below. A linear beta grows gamma's log "
        "quadratically, so the noise arrives early and the last half of the steps is spent near pure noise."),
    "02, exercise 2": (
        "Why c_0 + c_t sqrt(gamma_t) = sqrt(gamma_{t-1}): take expectations given y_0 of both sides of "
        "y_{t-1} = mu(y_0, y_t) + noise. On the left, (3) gives E[y_{t-1} | y_0] = sqrt(gamma_{t-1}) y_0. On the "
        "right, the posterior noise has mean 0 and E[y_t | y_0] = sqrt(gamma_t) y_0, so E[mu | y_0] = "
        "(c_0 + c_t sqrt(gamma_t)) y_0. The posterior must average back to the prior (the tower rule), for every "
        "y_0, so the coefficients agree. The same for variances (the law of total variance): "
        "Var(y_{t-1} | y_0) = E[Var(y_{t-1} | y_0, y_t)] + Var(E[y_{t-1} | y_0, y_t] | y_0), that is "
        "1 - gamma_{t-1} = sigma^2 + c_t^2 (1 - gamma_t): what the posterior does not fix, sigma^2, plus how far its "
        "mean moves with y_t. At SR3's t = 1000 the second term is 0.995 of the total: y_t decides y_{t-1}."),
    "03, exercise 3": (
        "With warm-up, step 1 uses lr = 1e-4 / 10^4 = 1e-8, and Adam's first step is lr * sign(g). float32 "
        "spaces numbers near 0.05 by 2^-28 = 3.7e-9, so a weight of 0.05 does move, but by a whole number of those "
        "spacings (3 of them, 1.1e-8, 12% more than asked): the step is rounded, not lost. Near 1.0 the spacing is "
        "2^-24 = 6e-8 below 1 and 1.2e-7 above it, so a GroupNorm scale of 1.0 does not move at all: 1 - 1e-8 "
        "rounds back to 1. Such weights stay frozen until lr * k exceeds half a spacing (k >= 3 going down, "
        "k >= 6 going up), and smaller steps are rounded away every time. That is why the warm-up is harmless in "
        "practice (it lasts 10^4 steps) but makes a three-step comparison meaningless, and why mixed-precision "
        "training keeps a float32 (or wider) master copy of the weights."),
    "09, exercise 2": (
        "At f = 1/2 the Wilson half-width z sqrt(f(1-f)/n + z^2/(4n^2)) / (1 + z^2/n) becomes "
        "z sqrt(1/(4n) + z^2/(4n^2)) / ((n + z^2)/n) = (z / (2n)) sqrt(n + z^2) * n / (n + z^2) "
        "= z / (2 sqrt(n + z^2)). Setting it <= h gives n >= z^2/(4h^2) - z^2: 381 trials for +-5 points at "
        "95%, 1,064 for +-3 points. So a study of a few dozen answers (this notebook's 32 trials) can tell 50% "
        "from 20%, but not 50% from 40%."),
}


# ---- notebook 05: counting (the U-Net's shape) ---------------------------------------------------------------
def my_resblock_params(c_in, c_out, emb_dim):
    # two GroupNorms (scale + shift), two 3x3 convs, the FiLM linear map (scale and shift), the 1x1 skip if needed
    n = 2 * c_in + (9 * c_in * c_out + c_out) + (emb_dim * 2 * c_out + 2 * c_out) + 2 * c_out + (9 * c_out**2 + c_out)
    return n + (c_in * c_out + c_out if c_in != c_out else 0)


def my_attention_blocks(name):
    from sr3_mini.unet import PRESETS
    p = {**PRESETS[name]}
    levels = [i for i in range(len(p["channel_mults"])) if p["image_size"] // 2**i in p["attn_resolutions"]]
    return 1 + len(levels) * (2 * p["num_res_blocks"] + 1)


def my_multiple(name):
    from sr3_mini.unet import PRESETS
    return 2 ** (len(PRESETS[name]["channel_mults"]) - 1)


# ---- notebook 06: training -------------------------------------------------------------------------------------
def my_lr(step, lr, warmup_steps):
    # linear from 0 to lr over warmup_steps updates (update numbers are 1-based), then constant
    return lr * min(1.0, step / warmup_steps) if warmup_steps > 0 else lr


def my_ema_lag(decay):
    # theta_EMA = sum_j (1 - d) d^j theta_{k-j} (the weights sum to 1 after many updates);
    # with theta_{k-j} = theta_k - j v the lag is sum_j j (1 - d) d^j = d / (1 - d) updates: 9,999 for DDPM's d = 0.9999
    return decay / (1 - decay)


# exercise 3: the initial weights keep a share d^N of the EMA: 0.9999^19365 = exp(-1.94) = 0.144, since 19,365 updates
# are about two windows 1 / (1 - d) = 10^4. One seventh of the sampling weights would still be random.
my_guess_no_ramp = 0.14


def my_knows_nothing_loss(gamma, s2):
    # sqrt(1 - gamma) y_t - eps = sqrt(gamma (1 - gamma)) y_0 - gamma eps by (5): Gaussian, variance
    # gamma (1 - gamma) s2 + gamma^2, and E|Z| = sqrt(2 / pi) sd(Z)
    return math.sqrt(2 / math.pi) * math.sqrt(gamma * (1 - gamma) * s2 + gamma**2)


# ---- notebook 07: sampling and evaluation ----------------------------------------------------------------------
def my_psnr(a, b):
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(4 / mse)                                          # peak-to-peak 2 on [-1, 1]


def my_consistency(x, y_hat):
    from sr3_mini.resize import downsample
    return ((downsample(y_hat, 4).double() - x.double()) / 2).pow(2).mean(dim=(1, 2, 3))   # on [0, 1]


def my_gamma_T(steps, beta_end):
    import numpy as np
    return float(np.prod(1 - np.linspace(1e-4, beta_end, steps)))


def my_usable(threshold, step_options, end_options):
    return [(s, e) for s in step_options for e in end_options if my_gamma_T(s, e) < threshold]


def my_variance_ratio_at(schedule, t):
    # (4) over (10): (1 - gamma_{t-1}) / (1 - gamma_t)
    return ((1 - schedule.gamma(t - 1)) / (1 - schedule.gamma(t))).item()


# ---- notebook 08: cascading -------------------------------------------------------------------------------------
def my_cascade(models_and_steps, x, generator):
    from sr3_mini.sample import super_resolve
    for model, steps in models_and_steps:
        x = super_resolve(model, x, steps=steps, generator=generator, progress=False)
    return x


def my_stage_share(steps_1, steps_2, f_1, f_2):
    return steps_2 * f_2 / (steps_1 * f_1 + steps_2 * f_2)


def my_x16(y):
    from sr3_mini.resize import downsample
    return downsample(y, 16)


def my_x4x4(y):
    from sr3_mini.resize import downsample
    return downsample(downsample(y, 4), 4)


# ---- notebook 10: the exact posterior --------------------------------------------------------------------------
def my_guess_average():
    # s = (s_1 + s_2) / 2 has Var[s | x] = V / 2: pairs differ by 2 (V / 2) = V, a sample misses the photo by
    # V / 2 + V = 3 V / 2, so the ratio is 2 / 3
    return 2 / 3


def my_guess_fake():
    # y = E[y_0 | x] + sqrt(Var[y_0 | x]) z: pairs differ by 2 V, a sample misses the photo by V + V = 2 V
    return 1.0


def my_c_t(alpha_t, gamma_t, gamma_prev):
    # (4): the weight of y_0 in the posterior mean
    return gamma_prev**0.5 * (1 - alpha_t) / (1 - gamma_t)


def my_sigma_tilde2(alpha_t, gamma_t, gamma_prev):
    # (4): the posterior variance, y_0 known
    return (1 - gamma_prev) * (1 - alpha_t) / (1 - gamma_t)


def my_reverse_variance(alpha_t, gamma_t, gamma_prev, lam):
    # y_0 ~ N(m, lam): (3) gives Var y_{t-1} = gamma_{t-1} lam + 1 - gamma_{t-1}, (1) gives
    # Cov(y_{t-1}, y_t) = sqrt(alpha_t) Var y_{t-1} and Var y_t = gamma_t lam + 1 - gamma_t; Schur complement
    var_prev = gamma_prev * lam + 1 - gamma_prev
    return var_prev - alpha_t * var_prev**2 / (gamma_t * lam + 1 - gamma_t)


ANSWERS["10, exercise 2"] = (
    "The fake sampler y = E[y_0 | x] + sqrt(Var[y_0 | x]) z has the right per-pixel mean and variance, so both "
    "diversity (numerator 2V, denominator V + V) and the per-pixel variance ratio come out at 1. What it lacks is "
    "the joint structure: p(y_0 | x) puts its mass near two textured images, m_0 and m_1, while the fake spreads "
    "it over a Gaussian blob centred on their average. Per-pixel numbers cannot see that; a projection onto the "
    "direction that separates the modes can: exact draws sit near +-|tau p| on it, two clusters, while the fake's "
    "draws all sit near the middle, where p(y_0 | x) has almost no mass.")

ANSWERS["10, exercise 3"] = (
    "From (4): c_t = sqrt(gamma_{t-1}) (1 - alpha_t) / (1 - gamma_t) and sigma~^2 = (1 - gamma_{t-1})(1 - alpha_t) / "
    "(1 - gamma_t). For y_0 ~ N(m, lam) the pair (y_{t-1}, y_t) is Gaussian: by (3) Var y_{t-1} = "
    "gamma_{t-1} lam + 1 - gamma_{t-1} =: V', by (1) Cov(y_{t-1}, y_t) = sqrt(alpha_t) V' and Var y_t = "
    "gamma_t lam + 1 - gamma_t =: V. Schur complement: Var[y_{t-1} | y_t] = V' - alpha_t V'^2 / V = "
    "V' (V - alpha_t V') / V = (1 - alpha_t) V' / V, because V - alpha_t V' = 1 - alpha_t once "
    "gamma_t = alpha_t gamma_{t-1}. On the other "
    "side, with v = Var[y_0 | y_t] = lam (1 - gamma_t) / V: sigma~^2 + c_t^2 v = (1 - alpha_t) / ((1 - gamma_t) V) "
    "[(1 - gamma_{t-1}) V + gamma_{t-1} (1 - alpha_t) lam], and the bracket equals (1 - gamma_t) V' (expand it), so "
    "both are (1 - alpha_t) V' / V. For Gaussian data the KL-optimal sigma*^2 is therefore not an approximation: it "
    "is the exact variance of the true reverse step, direction by direction of the covariance. For other data the "
    "true step is not Gaussian, and one isotropic sigma*^2 is only the best average over directions.")
