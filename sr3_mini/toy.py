"""A conditional super-resolution problem with an exact p(y | x): the ground truth to check Algorithm 2 against.

SR3 claims to *sample* p(y | x), not to regress its mean. On photos nobody knows p(y | x); here everything is
closed form, so a sampler run with the exact denoiser can be checked for mode weights, per-pixel moments and
diversity, and a learned f_theta against eps*. Equation numbers are those of ``notebooks/EQUATIONS.md``.

The problem (all float64, built from one seeded generator):
  * prior  p(y_0) = sum_k w_k N(mu_k, Sigma_k) over images ``[C, H, W]`` (d = C H W). Components 0 and 1 share
    their smooth mean and covariance and differ by a +-checkerboard ``texture`` above the LR Nyquist frequency,
    projected onto the null space of A, so x cannot tell them apart: p(y_0 | x) is bimodal for every such x,
    and its mean (what a regression model learns) is blurry. Component 2 has another smooth mean plus stripes.
    Sigma_k = V_k V_k^T (smooth, low rank) + tau^2 (I - L L^T) (the DCT detail band) + s0^2 I.
  * degradation  x = A y_0 + sigma_x n, n ~ N(0, I), A = ``resize.downsample(., scale)`` written as an
    ``[m, d]`` matrix: that map without its clamp to [-1, 1] (a Gaussian prior has unbounded support; with the
    defaults about 5 % of the pixels of y_0 fall outside [-1, 1]).
  * p(y_0 | x) = sum_k w'_k N(m_k, S_k): Gaussian conditioning per component, w'_k from N(x; A mu_k, C_k).
  * y_t by (5); p(y_0 | y_t, x) is again a mixture (y_t / sqrt(gamma) is a second linear Gaussian observation
    of y_0). With S_k = U diag(lambda) U^T, every gamma-dependent matrix is diagonal in U, so any per-sample
    gamma ``[B]`` costs two ``[B, d] x [d, d]`` products per component.
  * eps* = (y_t - sqrt(gamma) E[y_0 | y_t, x]) / sqrt(1 - gamma), (5) solved for eps at the posterior mean:
    the minimiser of the L2 objective (6). ``exact_f_theta(x)`` wraps it with the sampler's protocol
    ``f(y_t, x_up, gamma[B]) -> eps``; x is bound in the closure (x_up is ignored: the clamped bicubic
    upsampling cannot be inverted), so pass any x_up of the right batch, e.g. ``resize.upsample(x, scale)``.
  * the KL-optimal reverse variance of Bao et al. (2022, Analytic-DPM), compared to (10)'s 1 - alpha_t and
    (4)'s posterior variance: ``variance.kl_optimal_variance`` and ``ToyProblem.kl_optimal_variances``.

Shapes: y_0, y_t ``[B, C, H, W]``; x ``[B, C, H/scale, W/scale]`` (a batch of 1 broadcasts); gamma a float or
``[B]``; posterior samples ``[n, B, C, H, W]`` (the layout of ``metrics.diversity``). Relies on ``diffusion``
((5)), ``schedule``, ``resize`` and ``variance`` (the KL-optimal formula) only.
"""
from __future__ import annotations

import math

import torch

from sr3_mini import diffusion as D
from sr3_mini.resize import downsample
from sr3_mini.schedule import Schedule
from sr3_mini.variance import kl_optimal_variance

__all__ = ["ToyProblem"]
F64 = torch.float64


class ToyProblem:
    """p(y_0) a K = 3 Gaussian mixture over ``[channels, size, size]`` images, x = A y_0 + sigma_x n (CPU, float64).

    Attributes: ``weights`` w_k ``[K]``, ``mu`` ``[K, d]``, ``Sigma`` ``[K, d, d]``, ``A`` ``[m, d]``, ``sigma_x``;
    p(y_0 | x)'s covariances ``S`` ``[K, d, d]`` = ``U diag(lam) U^T``. ``texture``: amplitude of the +-pattern;
    ``detail``: std of the DCT detail band; ``smooth``: per-pixel std of the smooth low-rank part."""

    def __init__(self, channels: int = 3, size: int = 16, scale: int = 4, sigma_x: float = 0.01,
                 weights=(0.35, 0.45, 0.2), texture: float = 0.3, detail: float = 0.2, smooth: float = 0.25,
                 rank: int = 6, seed: int = 0):
        if size % scale:
            raise ValueError(f"size={size} must be a multiple of scale={scale}")
        g = torch.Generator().manual_seed(seed)
        C, H, h = channels, size, size // scale
        self.shape, self.lr_shape, self.scale, self.sigma_x = (C, H, H), (C, h, h), scale, float(sigma_x)
        self.d, self.m = C * H * H, C * h * h
        d, m = self.d, self.m
        # A: downsample applied to the identity basis, one column per HR pixel (impulses stay inside [-1, 1])
        self.A = downsample(torch.eye(d, dtype=F64).reshape(d, C, H, H), scale).reshape(d, m).T  # [m, d]
        null = torch.eye(d, dtype=F64) - self.A.T @ torch.linalg.solve(self.A @ self.A.T, self.A)  # I - A^+ A
        # the low DCT band: the first size/scale cosines per axis, what an LR image of h pixels can carry
        i = torch.arange(H, dtype=F64)
        dct = torch.cos(math.pi * (2 * i[None] + 1) * i[:, None] / (2 * H)) * math.sqrt(2 / H)
        dct[0] /= math.sqrt(2)                                            # orthonormal DCT-II rows
        low2 = torch.einsum("ui,vj->uvij", dct[:h], dct[:h]).reshape(h * h, H * H)
        L = torch.block_diag(*[low2.T] * C)                               # [d, m], orthonormal columns
        freq = (torch.arange(h, dtype=F64)[:, None] ** 2 + torch.arange(h, dtype=F64) ** 2).reshape(-1).repeat(C)

        def smooth_field(rms):                                            # low-band field, 1/f-like spectrum
            v = L @ (torch.randn(m, generator=g, dtype=F64) / (1 + freq).sqrt())
            return v * rms / v.pow(2).mean().sqrt()

        jj, ii = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="xy")
        checker = ((-1.0) ** (ii + jj)).to(F64).expand(C, H, H).reshape(d)
        stripes = ((-1.0) ** jj).to(F64).expand(C, H, H).reshape(d)
        p, q = null @ checker, null @ stripes                             # A p = A q = 0: invisible in x
        mean_a, mean_b = smooth_field(0.3), smooth_field(0.3)
        self.weights = torch.as_tensor(weights, dtype=F64)               # w_k [K]
        self.mu = torch.stack([mean_a + texture * p, mean_a - texture * p, mean_b + texture * q])  # [K, d]

        def cov(detail_k):
            V = L @ (torch.randn(m, rank, generator=g, dtype=F64) / (1 + freq[:, None]).sqrt())
            V = V * smooth / V.pow(2).sum(1).mean().sqrt()                # per-pixel variance smooth^2
            # Sigma_k = V V^T + tau^2 (I - L L^T) + s0^2 I: smooth low rank + detail band + isotropic floor
            return V @ V.T + detail_k ** 2 * (torch.eye(d, dtype=F64) - L @ L.T) + 1e-3 * torch.eye(d, dtype=F64)

        shared = cov(detail)
        self.Sigma = torch.stack([shared, shared, cov(0.75 * detail)])    # [K, d, d]
        self.chol_Sigma = torch.linalg.cholesky(self.Sigma)
        # p(y_0 | x) per component: C_k = A Sigma_k A^T + sigma_x^2 I, m_k = mu_k + Sigma_k A^T C_k^-1 (x - A mu_k),
        # S_k = Sigma_k - Sigma_k A^T C_k^-1 A Sigma_k
        ASigma = self.A @ self.Sigma                                      # [K, m, d]
        Ck = ASigma @ self.A.T + self.sigma_x ** 2 * torch.eye(m, dtype=F64)
        self._chol_C = torch.linalg.cholesky(Ck)
        self._SigmaAT = ASigma.transpose(1, 2)                                # Sigma_k A^T  [K, d, m]
        self.S = self.Sigma - self._SigmaAT @ torch.cholesky_solve(ASigma, self._chol_C)  # [K, d, d]
        self.S = (self.S + self.S.transpose(1, 2)) / 2
        self.lam, self.U = torch.linalg.eigh(self.S)                        # S_k = U diag(lambda) U^T
        self._prior_lam, self._prior_U = torch.linalg.eigh(self.Sigma)      # Sigma_k: the unconditional denoiser

    @property
    def K(self) -> int:
        return self.weights.numel()

    # ---- the joint and the posterior given x -----------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None):
        """(x, y_0) from the joint: k ~ w, y_0 ~ N(mu_k, Sigma_k), x = A y_0 + sigma_x n.
        Shapes ``[n, C, h, h]``, ``[n, C, H, H]``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=F64)
        y_0 = self.mu[k] + self._per_component(k, z, self.chol_Sigma)   # y_0 = mu_k + L_k z, L_k L_k^T = Sigma_k
        x = y_0 @ self.A.T + self.sigma_x * torch.randn(n, self.m, generator=generator, dtype=F64)
        return x.reshape(n, *self.lr_shape), y_0.reshape(n, *self.shape)

    def posterior(self, x: torch.Tensor):
        """p(y_0 | x) = sum_k w'_k N(m_k, S_k): ``(w' [B, K], m [B, K, d], S [K, d, d])``; S_k does not depend
        on x (m_k of a component with w'_k = 0 may be far off: it is never used)."""
        r = x.reshape(-1, 1, self.m).to(F64) - self.mu @ self.A.T        # x - A mu_k  [B, K, m]
        sol = torch.cholesky_solve(r.permute(1, 2, 0), self._chol_C)     # C_k^-1 (x - A mu_k)  [K, m, B]
        logdet = 2 * self._chol_C.diagonal(dim1=1, dim2=2).log().sum(1)  # log det C_k
        # log N(x; A mu_k, C_k) up to a constant shared by all k; w'_k proportional to w_k N(x; A mu_k, C_k)
        loglik = -0.5 * (r * sol.permute(2, 0, 1)).sum(-1) - 0.5 * logdet
        w_post = torch.softmax(self.weights.log() + loglik, dim=1)
        m_k = self.mu + (self._SigmaAT @ sol).permute(2, 0, 1)            # mu_k + Sigma A^T C^-1 (x - A mu_k)
        return w_post, m_k, self.S

    def posterior_moments(self, x: torch.Tensor):
        """E[y_0 | x] and the per-pixel Var[y_0 | x] (within- plus between-component), each ``[B, C, H, W]``."""
        w, m_k, S = self.posterior(x)
        mean = (w[..., None] * m_k).sum(1)
        var = (w[..., None] * (S.diagonal(dim1=1, dim2=2) + (m_k - mean[:, None]) ** 2)).sum(1)
        return mean.reshape(-1, *self.shape), var.reshape(-1, *self.shape)

    def sample_posterior(self, x: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws of p(y_0 | x) for each of the B inputs: ``[n, B, C, H, W]``."""
        w, m_k, _ = self.posterior(x)
        B = w.shape[0]
        k = torch.multinomial(w, n, replacement=True, generator=generator).T.reshape(-1)   # [n B], b fastest
        z = torch.randn(n * B, self.d, generator=generator, dtype=F64)
        # y_0 = m_k + U_k diag(sqrt(lambda_k)) z
        root = self.U * self.lam.clamp_min(0).sqrt()[:, None]                         # U_k diag(sqrt(lambda_k))
        y = m_k[torch.arange(B).repeat(n), k] + self._per_component(k, z, root)
        return y.reshape(n, B, *self.shape)

    def _per_component(self, k: torch.Tensor, z: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """M_k z for each row z of ``z [N, d]`` with its component ``k [N]``, one matrix product per component."""
        out = torch.empty_like(z)
        for j in range(self.K):
            out[k == j] = z[k == j] @ M[j].T
        return out

    def component_probs(self, y_0: torch.Tensor) -> torch.Tensor:
        """p(k | y_0) proportional to w_k N(y_0; mu_k, Sigma_k), ``[B, K]``; it is also p(k | y_0, x), since x
        depends on y_0 only. Used to sort draws into modes."""
        r = (y_0.reshape(-1, 1, self.d).to(F64) - self.mu).permute(1, 2, 0)             # [K, d, B]
        white = torch.linalg.solve_triangular(self.chol_Sigma, r, upper=False)         # L_k^-1 (y_0 - mu_k)
        logdet = 2 * self.chol_Sigma.diagonal(dim1=1, dim2=2).log().sum(1)
        return torch.softmax(self.weights.log() - 0.5 * white.pow(2).sum(1).T - 0.5 * logdet, dim=1)

    # ---- the exact denoiser at noise level gamma ------------------------------------------------------------
    def _denoise(self, y_t, x, gamma):
        """E[y_0 | y_t, x] ``[B, d]`` and the per-pixel mean of tr Cov[y_0 | y_t, x] ``[B]``. ``x=None``: without
        the condition, E[y_0 | y_t] under the prior (the same mixture algebra with w_k, mu_k, Sigma_k in place of
        w'_k, m_k, S_k): the unconditional denoiser of classifier-free guidance (``guidance.py``)."""
        y_t = y_t.reshape(y_t.shape[0], self.d).to(F64)
        B = y_t.shape[0]
        g = torch.as_tensor(gamma, dtype=F64).reshape(-1, 1).expand(B, 1)
        if bool(((g < 0) | (g > 1)).any()):
            raise ValueError("gamma must lie in [0, 1]")
        if x is None:
            w, m_k, lams, Us = self.weights[None], self.mu[None], self._prior_lam, self._prior_U
        else:
            (w, m_k, _), lams, Us = self.posterior(x), self.lam, self.U
        w, m_k = w.expand(B, -1), m_k.expand(B, -1, -1)
        logits, means, traces = [], [], []
        for k in range(self.K):
            lam, U = lams[k], Us[k]
            z = (y_t - g.sqrt() * m_k[:, k]) @ U   # y_t - sqrt(gamma) m_k in S_k's eigenbasis
            den = g * lam + 1 - g                   # eigenvalues of gamma S_k + (1 - gamma) I = Cov[y_t | x, k]
            # log w'_k + log N(y_t; sqrt(gamma) m_k, gamma S_k + (1 - gamma) I), up to a constant shared by all k
            logits.append(w[:, k].log() - 0.5 * den.log().sum(1) - 0.5 * (z ** 2 / den).sum(1))
            # E[y_0 | y_t, x, k] = m_k + sqrt(gamma) S_k (gamma S_k + (1 - gamma) I)^-1 (y_t - sqrt(gamma) m_k)
            means.append(m_k[:, k] + (z * g.sqrt() * lam / den) @ U.T)
            # tr Cov[y_0 | y_t, x, k] = sum_i lambda_i (1 - gamma) / (gamma lambda_i + 1 - gamma)
            traces.append((lam * (1 - g) / den).sum(1))
        pi = torch.softmax(torch.stack(logits, 1), dim=1)       # p(k | y_t, x)  [B, K]
        means = torch.stack(means, 1)
        mean = (pi[..., None] * means).sum(1)
        # law of total variance: E_k[tr Cov_k] + E_k ||E_k - E||^2, per pixel
        var = (pi * (torch.stack(traces, 1) + (means - mean[:, None]).pow(2).sum(-1))).sum(1) / self.d
        return mean, var

    def posterior_mean(self, y_t: torch.Tensor, x: torch.Tensor | None, gamma) -> torch.Tensor:
        """E[y_0 | y_t, x] ``[B, C, H, W]``, gamma in [0, 1] (a float or ``[B]``): y_t at gamma = 1, E[y_0 | x] at 0.
        ``x=None``: E[y_0 | y_t], the condition left out."""
        return self._denoise(y_t, x, gamma)[0].reshape(-1, *self.shape)

    def posterior_variance(self, y_t: torch.Tensor, x: torch.Tensor, gamma) -> torch.Tensor:
        """tr Cov[y_0 | y_t, x] / d, the per-pixel mean posterior variance, ``[B]``."""
        return self._denoise(y_t, x, gamma)[1]

    def eps(self, y_t: torch.Tensor, x: torch.Tensor | None, gamma) -> torch.Tensor:
        """eps* = E[eps | y_t, x] = (y_t - sqrt(gamma) E[y_0 | y_t, x]) / sqrt(1 - gamma), ``[B, C, H, W]``, gamma < 1.
        The minimiser of the L2 objective (6). ``x=None``: E[eps | y_t], what (6) learns when x is always dropped."""
        g = torch.as_tensor(gamma, dtype=F64).reshape(-1, 1, 1, 1)
        # (5) solved for eps, at the posterior mean of y_0
        return (y_t.to(F64) - g.sqrt() * self.posterior_mean(y_t, x, gamma)) / (1 - g).sqrt()

    def exact_f_theta(self, x: torch.Tensor | None):
        """The Bayes-optimal f_theta for the inputs x ``[B, C, h, h]``: ``f(y_t, x_up, gamma[B]) -> eps*`` in
        y_t's dtype. x_up is only checked for its batch size (x itself is bound here). ``x=None``: the exact
        unconditional f_theta, E[eps | y_t] under the prior (x_up is then ignored but for its batch size)."""
        x = None if x is None else x.to(F64)

        def f(y_t, x_up, gamma):
            if x_up.shape[0] != y_t.shape[0] or (x is not None and x.shape[0] not in (1, y_t.shape[0])):
                raise ValueError(f"batch mismatch: y_t {tuple(y_t.shape)}, x_up {tuple(x_up.shape)}, "
                                 f"x {None if x is None else tuple(x.shape)}")
            return self.eps(y_t, x, gamma).to(y_t.dtype)
        return f

    # ---- Analytic-DPM --------------------------------------------------------------------------------------
    def kl_optimal_variances(self, schedule: Schedule, x: torch.Tensor, n: int = 32,
                             generator: torch.Generator | None = None) -> dict:
        """sigma*_t^2 for t = 1..T of ``schedule``, with v_t averaged over y_t ~ q(y_t | x) (n Monte Carlo draws
        of y_0 ~ p(y_0 | x) per input, then (5); Var[y_0 | y_t, x] itself is exact) and over the batch of x.
        Returns ``[T]`` tensors (index t - 1): "kl_optimal", "posterior" (sigma~^2 of (4)), "paper" (1 - alpha_t
        of (10)), "var_y0" (v_t)."""
        y_0 = self.sample_posterior(x, n, generator).reshape(-1, *self.shape)    # [n B, C, H, W]
        x_rep = x.to(F64).repeat(n, *[1] * (x.ndim - 1))                         # matches y_0's [n, B] order
        T = schedule.T
        a, g, g_prev = schedule.alphas, schedule.gammas[1:], schedule.gammas[:-1]
        v = torch.empty(T, dtype=F64)
        for t in range(1, T + 1):
            eps = torch.randn(y_0.shape, generator=generator, dtype=F64)
            y_t = D.q_sample(y_0, g[t - 1].item(), eps)                           # (5)
            v[t - 1] = self.posterior_variance(y_t, x_rep, g[t - 1].item()).mean()
        return {"kl_optimal": kl_optimal_variance(a, g, g_prev, v), "posterior": kl_optimal_variance(a, g, g_prev, 0),
                "paper": 1 - a, "var_y0": v}
