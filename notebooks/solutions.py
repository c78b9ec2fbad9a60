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


# ---- notebook 03: the training objective (exercises that ask) ------------------------------------------------
# exercise 1: F(gamma_t) = 1 - t/T (section 3.1), and for a linear beta from beta_1 << beta_T,
# log gamma_t ~ -(beta_1 + ... + beta_t) ~ -beta_T t^2 / (2T), so gamma_t = 1/2 at t/T = sqrt(2 ln 2 / (T beta_T)).
# DDPM's T beta_T = 1000 * 0.02 = 20 is SR3's 2000 * 0.01: the same share as SR3's, 1 - sqrt(ln 2 / 10) = 0.74
my_guess_ddpm_half = 0.74


def my_guess_loss(rho, p):
    # eps_hat - eps = (rho - 1) eps + sqrt(1 - rho^2) z: Gaussian, variance (1 - rho)^2 + 1 - rho^2 = 2 (1 - rho);
    # E Z^2 is the variance, E|Z| = sqrt(2 / pi) sd
    var = 2 * (1 - rho)
    return var if p == 2 else math.sqrt(2 / math.pi) * math.sqrt(var)


# exercise 2: eps_hat = 0 has loss 1 (p = 2) or sqrt(2 / pi) (p = 1), the same as rho = 1/2: 2 (1 - rho) = 1
my_break_even_rho = 0.5

# exercise 3: at step 2, m / (1 - 0.9^2) = 0.9 * 0.1 g / 0.19 = 0.474 g and
# v / (1 - 0.999^2) = 0.999 * 0.001 g^2 / 0.001999 = 0.49975 g^2, so the weight moves by lr * 0.474 / 0.707 = 0.67 lr,
# on in the direction of step 1, whatever |g|
my_guess_coast = 0.67


def my_bound_total(gamma_1, gamma_T):
    # L_{t-1} - C_t = omega_t SNR_t ||y_0 - y^_0||^2 = (SNR_{t-1} - SNR_t) / 2 (section 5.1): the sum over t = 2..T
    # telescopes to (SNR_1 - SNR_T) / 2, which depends on the end points only
    def snr(g):
        return g / (1 - g)
    return (snr(gamma_1) - snr(gamma_T)) / 2


# exercise 4: t = 2's share is (SNR_1 - SNR_2) / (SNR_1 - SNR_T). On SR3's schedule SNR_1 = (1 - 1e-6) / 1e-6 = 10^6 and
# 1 - gamma_2 = beta_1 + beta_2 = 7.0e-6 (SNR_2 = 1.4e5): 0.86 of the total, 5 10^5, is charged at the step t = 2 alone
my_guess_share_t2 = 0.86


def my_eps_star_binary(y_t, gamma):
    # Bayes: P(y_0 = +-1 | y_t) is proportional to exp(-(y_t -+ sqrt(gamma))^2 / (2 (1 - gamma))), so
    # E[y_0 | y_t] = tanh(sqrt(gamma) y_t / (1 - gamma)); then (5): eps = (y_t - sqrt(gamma) y_0) / sqrt(1 - gamma)
    y0_mean = torch.tanh(gamma**0.5 * y_t / (1 - gamma))
    return (y_t - gamma**0.5 * y0_mean) / (1 - gamma) ** 0.5


def warmup_first_step(w0: float, lr: float = 1e-4 / 10_000) -> float:
    """How far a float32 weight of value ``w0`` actually moves under one step of size ``lr`` (Adam's first step is
    lr * sign(g)): the answer to notebook 03's exercise 3."""
    w = torch.tensor(w0, dtype=torch.float32)
    return (w - lr).item() - w.item()


# ---- notebook 04: the reverse process (exercises that ask) ---------------------------------------------------
# exercise 1: kappa_T = sqrt(0.01 / (0.99 (1 - 4.4e-5))) = 0.10. y^_0 is 151 times off at t = T, but mu_theta, (4) at
# y^_0, takes only c_0 = sqrt(gamma_{t-1}) (1 - alpha_t) / (1 - gamma_t) = 6.6e-5 of it: mu moves by 0.01 delta, a tenth
# of the step's noise. At t = 1 (gamma_1 = alpha_1) kappa_1 = 1 / sqrt(alpha_1) = 1: mu is y^_0 itself there, and the
# last step passes the error on one for one
my_guess_kappa_T = 0.10


def my_mean_shift(alpha_t, gamma_t):
    # (9): mu moves by (1 - alpha_t) / (sqrt(alpha_t) sqrt(1 - gamma_t)) per unit of eps^;
    # (10)'s noise is sqrt(1 - alpha_t)
    return ((1 - alpha_t) / (alpha_t * (1 - gamma_t))) ** 0.5


def my_p_mean_v(y_t, F, alpha_t, gamma_t):
    # (9) at eps^ = sqrt(1 - gamma_t) y_t + sqrt(gamma_t) F: y_t's weight becomes (1 - (1 - alpha_t)) / sqrt(alpha_t)
    return alpha_t**0.5 * y_t - (1 - alpha_t) * (gamma_t / (alpha_t * (1 - gamma_t))) ** 0.5 * F


def my_count_below(schedule, level=0.9):
    # sigma~^2 / (1 - alpha_t) = (1 - gamma_{t-1}) / (1 - gamma_t) (section 4)
    ratio = (1 - schedule.gammas[:-1]) / (1 - schedule.gammas[1:])
    return int((ratio < level).sum())


# exercise 3: with V = gamma_t s^2 + 1 - gamma_t, V' = gamma_{t-1} s^2 + 1 - gamma_{t-1} and
# Var[y_0 | y_t] = s^2 (1 - gamma_t) / V,
# sigma~^2 + c_0^2 Var[y_0 | y_t]
#   = (1 - alpha_t) [(1 - gamma_{t-1}) V + gamma_{t-1} (1 - alpha_t) s^2] / ((1 - gamma_t) V)
# = (1 - alpha_t) V' / V (the bracket is (1 - gamma_t) V' once gamma_t = alpha_t gamma_{t-1}). V' = V = 1 for s^2 = 1:
# the paper's 1 - alpha_t; s^2 = 0 (y_0 known): (1 - alpha_t)(1 - gamma_{t-1}) / (1 - gamma_t), the posterior's
my_exact_s2 = (1.0, 0.0)


def my_var_y0(gamma, dscore):
    # Tweedie, differentiated in y_t: d E[y_0 | y_t] / dy_t = (1 + (1 - gamma) dscore) / sqrt(gamma). Differentiating
    # E[y_0 | y_t] = int y_0 q(y_0) N(y_t; sqrt(gamma) y_0, 1 - gamma) dy_0 / q_gamma(y_t) instead brings down
    # (sqrt(gamma) y_0 - y_t) / (1 - gamma) inside, minus its posterior mean: sqrt(gamma) Var[y_0 | y_t] / (1 - gamma)
    return (1 - gamma) / gamma * (1 + (1 - gamma) * dscore)


def my_ddim_one_step_std(s2, gamma_T):
    # one step to gamma_0 = 1 returns y^_0 = E[y_0 | y_T] (section 3.1), linear in y_T with slope
    # sqrt(gamma_T) s^2 / (gamma_T s^2 + 1 - gamma_T), and y_T ~ N(0, 1) (7): the posterior mean, nearly a constant
    return gamma_T**0.5 * s2 / (gamma_T * s2 + 1 - gamma_T)


# exercise 5: 28 steps for 90% of s (5 steps give 53%, 10 give 75%, 100 give 97%): the deficit falls like 1/K
my_guess_ddim_steps = 28


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


# ---- notebooks 03 and 04: the open questions of the exercises that ask ----------------------------------------
ANSWERS["03, exercise 2"] = (
    "eps_hat - eps = (rho - 1) eps + sqrt(1 - rho^2) z is Gaussian with variance 2 (1 - rho), so (6) is 2 (1 - rho) "
    "for p = 2 and sqrt(2/pi) sqrt(2 (1 - rho)) for p = 1: worse than the untrained network's eps_hat = 0 whenever "
    "rho < 1/2, for both p. The best multiple c eps_hat has L2 loss 1 - 2 c rho + c^2, least at c = rho, where it is "
    "1 - rho^2 < 1: shrinking the guess towards 0 always helps. That is the conditional mean at work: a network "
    "trained on (6) outputs E[eps | x, y_t, gamma], whose spread is smaller than eps's wherever y_t leaves eps "
    "uncertain, so its eps_hat (and its y0_hat) looks smooth, not like noise; the texture of a sample comes from the "
    "sampler adding noise back at every step, not from any single prediction.")

ANSWERS["04, exercise 2"] = (
    "Put eps^ = sqrt(1 - gamma_t) y_t + sqrt(gamma_t) F into (9): y_t's weight is (1 - (1 - alpha_t)) / sqrt(alpha_t) "
    "= sqrt(alpha_t), and F's is -(1 - alpha_t) sqrt(gamma_t / (alpha_t (1 - gamma_t))). (9) divides y_t by "
    "sqrt(alpha_t) because it also subtracts the noise estimate, which at heavy noise is almost y_t itself; the v "
    "head builds that copy of y_t into eps^, so what is left is a slight shrink, sqrt(alpha_t) y_t, as in the forward "
    "step (1). And F's weight carries sqrt(gamma_t): at t = T of SR3's schedule it is 0.01 * 0.0066 = 6.6e-5 where "
    "(9) gives eps^ a weight of 0.01. The first steps of a run hardly depend on the layers at all: they scale y_t and "
    "add noise, and only as gamma_t grows does F, the estimate of the image, take over.")


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


# ---- notebook 07: sampling and evaluation (exercises that ask) -------------------------------------------------
def my_psnr_of_offset(delta):
    # every pixel off by delta: MSE = delta^2, PSNR = 10 log10(2^2 / delta^2) = 20 log10(2 / |delta|). One grey level
    # of an 8-bit image (delta = 2/255 on [-1, 1]) caps a perfect reconstruction at 20 log10(255) = 48.1 dB
    return 20 * math.log10(2 / abs(delta))


# exercise 1b: MSEs add, dBs do not. SR3's 23.39 dB is an MSE of 4 * 10^-2.339 = 0.0183 (on [-1, 1]); independent noise
# of sd 0.05 adds 0.05^2 = 0.0025, so 10 log10(1 + 0.0025 / 0.0183) = 0.56 dB. Per crop the loss is larger on the crops
# with the smaller MSE, so the mean over the 8 crops loses a little more (0.74 measured). The same noise takes the
# photo itself from +inf to 20 log10(2 / 0.05) = 32 dB.
my_guess_noise_drop = 0.6


def my_back_project(y_hat, x, rounds=20):
    # downsample(upsample(x)) is not x: both are low-pass filters (bicubic interpolation, then an anti-aliased bicubic
    # kernel 4 times wider), so the round trip damps the LR image's finer frequencies. Feed the residual back
    # (iterative back-projection, Irani & Peleg 1991): each round multiplies it by 1 - H(f), H the round trip's
    # response, which lies in (0, 1]; the corrections are upsampled LR images: smooth, no detail x does not carry
    from sr3_mini.resize import downsample, upsample
    y = y_hat
    for _ in range(rounds):
        y = y + upsample(x - downsample(y, 4), 4)
    return y


# exercise 3: log gamma_T = sum_t log(1 - beta_t) ~ -sum_t beta_t = -1000 (1e-4 + 0.02) / 2 = -10.05, gamma_T ~ 4.3e-5
# (the terms beta^2 / 2 take it to 4.0e-5). Or from the table: 10 times the steps between the same end points is
# 10 times sum beta, so gamma_T = 0.36^10 = 3.7e-5.
my_guess_gamma_T = 4e-5


def my_ratio_big_steps(t):
    # respaced step t ends at training step k t (k = 2000 / steps). The training beta_j grows linearly from 1e-6, so
    # 1 - gamma_{kt} ~ sum_{j <= kt} beta_j ~ slope (k t)^2 / 2 once k t >> 1 and while gamma is near 1:
    # (1 - gamma_{t-1}) / (1 - gamma_t) = ((t - 1) / t)^2, whatever the number of steps
    return ((t - 1) / t) ** 2


ANSWERS["07, exercise 2"] = (
    "x_up = upsample(x) interpolates x with the bicubic kernel, and downsample averages with an anti-aliased bicubic "
    "kernel four times wider: both are low-pass filters, so downsample(upsample(x)) is a blurred x, not x, and "
    "bicubic's consistency error is the energy of that blur (24e-5 in section 2). Back-projection feeds the residual "
    "x - downsample(y) back through upsample; the first round divides bicubic's consistency error by 6 (24e-5 to "
    "4e-5), and 20 rounds take every output below 1e-9. The corrections are upsampled LR images, smooth: they add "
    "no detail that x does not carry. Bicubic gains 0.36 dB PSNR (23.16 to 23.51) and triples its energy above "
    "the LR Nyquist frequency (0.07 to 0.20 of the photo's): back-projection undoes part of the round trip's "
    "blur, and the sharper edges reach above that frequency. SR3 and regression, already almost consistent, move "
    "by under 0.1 dB.")

ANSWERS["07, exercise 4"] = (
    "(1 - gamma_{t-1}) / (1 - gamma_t) = ((t - 1) / t)^2 needs 1 - gamma ~ sum beta ~ slope (k t)^2 / 2, that is, "
    "both the first training beta (1e-6) negligible against the growth over k steps and gamma still near 1. With all "
    "2000 steps (k = 1) the first fails: 1 - gamma_1 = beta_1 = 1e-6 and 1 - gamma_2 = beta_1 + beta_2 = 7e-6, a ratio "
    "of 0.14. With 10 steps (k = 200) the second fails: sum beta is 0.1 at t = 1 and 0.4 at t = 2, and "
    "1 - gamma = 1 - exp(-sum beta) falls short of it, little at t = 1 (0.095) and more at t = 2 (0.33), so the ratio "
    "rises to 0.29. In between, 25 to 500 steps, the last steps of every respaced schedule have about the same "
    "ratios, 1/4, 4/9, 9/16, ...: the posterior variance removes three quarters of the paper's noise at t = 2, "
    "however many steps the sampler takes.")


# ---- notebook 08: cascading (exercises that ask) ----------------------------------------------------------------
# exercise 1a: one evaluation costs in proportion to its pixels, 16 times more at 256x256 than at 64x64: the cascade
# is 25 + 50 / 16 = 28 evaluations at 256x256 (27.9 by the FLOP count: 17.5 times, attention grows faster)
my_guess_equal_steps = 28.1


def my_cost_ratio(steps_1, steps_2, steps_single):
    # in units of one 64x64 evaluation: the single network costs 16 steps_single, the cascade steps_1 + 16 steps_2
    return 16 * steps_single / (steps_1 + 16 * steps_2)


# exercise 2: a convolution's cost is (pixels) x C_in x C_out: half the channels, a quarter of the cost (notebook 05,
# exercise 5, for parameters). Stage 2: 25 x 9.25 / 4 = 58 GFLOP against stage 1's 26: 0.69 of the whole (0.71
# counted: norms, attention's softmax and the embedding shrink less than 4-fold)
my_guess_thin_share = 0.69

# exercise 3a: x_16 is 16 x 16 numbers per channel, the output 256 x 256: x fixes 1/256 of them, 0.4 %
my_guess_fixed_share = 1 / 256
# exercise 3b: open after x: 256^2 - 16^2; stage 1 decides 64^2 - 16^2 of them (its output is what stage 2 must be
# consistent with), stage 2 the remaining 256^2 - 64^2: 61,440 of 65,280 = 94 %, about its 90 % share of the compute
my_guess_stage_2_open = (256**2 - 64**2) / (256**2 - 16**2)


ANSWERS["08, exercise 1"] = (
    "Counting pixels, one evaluation at 256x256 costs 16 at 64x64, so the cascade of section 2 costs 50 + 16 x 25 = "
    "450 units, 28 evaluations at 256x256, and a single network run for n steps at 256x256 costs 16 n / 450 of it. "
    "The FLOP count says 17.5, not 16: self-attention grows with the square of the pixels at its level, so the larger "
    "image costs more than its pixel share. The pixel count therefore underestimates the single network most where "
    "the cascade's cost is mostly at 64x64 (1000 steps there and 10 at 256x256: 1.38 counted by pixels, 1.49 by FLOPs, "
    "7% short), and hardly at all where both sides are dominated by 256x256 steps. The gap widens with the size: at "
    "1024x1024 the same network costs 38 times its 256x256 evaluation, not 16, because its attention, placed at the "
    "8x8 level of a 64x64 input, then runs on 128x128 feature maps.")


# ---- notebook 10: the exact posterior --------------------------------------------------------------------------
def my_guess_average():
    # s = (s_1 + s_2) / 2 has Var[s | x] = V / 2: pairs differ by 2 (V / 2) = V, a sample misses the photo by
    # V / 2 + V = 3 V / 2, so the ratio is 2 / 3
    return 2 / 3


def my_guess_fake():
    # y = E[y_0 | x] + sqrt(Var[y_0 | x]) z: pairs differ by 2 V, a sample misses the photo by V + V = 2 V
    return 1.0


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
    "From (4): c_0 = sqrt(gamma_{t-1}) (1 - alpha_t) / (1 - gamma_t), the weight of y_0 in the mean (notebook 02's "
    "name; sections 3-4 of notebook 10 write it c_t), and sigma~^2 = (1 - gamma_{t-1})(1 - alpha_t) / "
    "(1 - gamma_t). For y_0 ~ N(m, lam) the pair (y_{t-1}, y_t) is Gaussian: by (3) Var y_{t-1} = "
    "gamma_{t-1} lam + 1 - gamma_{t-1} =: V', by (1) Cov(y_{t-1}, y_t) = sqrt(alpha_t) V' and Var y_t = "
    "gamma_t lam + 1 - gamma_t =: V. Schur complement: Var[y_{t-1} | y_t] = V' - alpha_t V'^2 / V = "
    "V' (V - alpha_t V') / V = (1 - alpha_t) V' / V, because V - alpha_t V' = 1 - alpha_t once "
    "gamma_t = alpha_t gamma_{t-1}. On the other "
    "side, with v = Var[y_0 | y_t] = lam (1 - gamma_t) / V: sigma~^2 + c_0^2 v = (1 - alpha_t) / ((1 - gamma_t) V) "
    "[(1 - gamma_{t-1}) V + gamma_{t-1} (1 - alpha_t) lam], and the bracket equals (1 - gamma_t) V' (expand it), so "
    "both are (1 - alpha_t) V' / V. For Gaussian data the KL-optimal sigma*^2 is therefore not an approximation: it "
    "is the exact variance of the true reverse step, direction by direction of the covariance. For other data the "
    "true step is not Gaussian, and one isotropic sigma*^2 is only the best average over directions.")


def my_seen_diversity(w):
    # where x is sharp, what x sees of a draw of p(y | x) is x plus noise: A y ~ N(x, sigma_x^2 I), and the photo's own
    # A y_0 = x - sigma_x n. Guidance aims at sigma_x / sqrt(1 + w): A s ~ N(x, sigma_x^2 / (1 + w) I). Two draws differ
    # by 2 sigma_x^2 / (1 + w) per LR number, a draw and the photo by sigma_x^2 / (1 + w) + sigma_x^2
    return 2 / (2 + w)


ANSWERS["10, exercise 4"] = (
    "With sigma_x = 0.01 the prior's spread in every direction that x sees is larger than sigma_x^2 (its smallest "
    "eigenvalue there is about 2e-4, against 1e-4), so given x, A y_0 is x plus noise of variance about sigma_x^2, and "
    "the guided target, the same problem with sigma_x^2 / (1 + w), has A y ~ N(x, sigma_x^2 / (1 + w)). Pairs of draws "
    "differ by 2 sigma_x^2 / (1 + w) per number; a draw and the true image, independent given x, by "
    "sigma_x^2 / (1 + w) + sigma_x^2. So the diversity of what x sees is 2 / (2 + w): 0.67, 0.40, 0.22 at w = 1, 3, 7, "
    "and exact draws of the target give 0.67, 0.40, 0.22. With section 7's sigma_x = 0.2 the prior's spread is smaller "
    "than sigma_x^2 in many seen directions: there p(A y | x) is already narrower than sigma_x^2, it leans on the "
    "prior, and raising the likelihood to the power 1 + w narrows it by less than 1 + w (not at all where the prior "
    "alone decides). Hence section 7's 0.56 for exact draws at w = 3 instead of 0.40: guidance sharpens only what the "
    "likelihood decides.")
