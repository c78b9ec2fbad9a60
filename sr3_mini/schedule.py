"""The noise schedule of SR3: the constants alpha_t and gamma_t of equations (1)-(3), and p(gamma).

Saharia et al., "Image Super-Resolution via Iterative Refinement" (2021), section 2.1 and Algorithm 1;
equation numbers are those of ``notebooks/EQUATIONS.md``.

The index convention, written down once for the whole project:

    t = 1..T                       the forward steps of (1)
    alpha_t in (0, 1)              per-step constant of (1);  ``alphas[t - 1] == alpha_t``
    gamma_t = prod_{i<=t} alpha_i  constant of (3);            ``gammas[t] == gamma_t``
    gamma_0 = 1                    no noise at all;            ``gammas[0] == 1``

so ``alphas`` has T entries and ``gammas`` has T + 1. Everything is float64: gamma_T of the training
schedule is ~4.5e-5 and 1 - gamma_1 is ~1e-6, values float32 rounds badly. Every other module asks this
one for alpha and gamma and never indexes by its own convention.

Because the network is conditioned on the continuous noise level gamma rather than on t, a model trained
with one schedule can be sampled with any other (``respaced``, or a fresh ``linear``/``cosine``).
"""
from __future__ import annotations

import math

import torch

__all__ = ["Schedule"]


class Schedule:
    """alpha_1..alpha_T and gamma_0..gamma_T, with the paper's indexing.

    Build one with ``Schedule(alphas)`` (alpha_1..alpha_T, each in (0, 1)), ``Schedule.linear``,
    ``Schedule.cosine`` or ``Schedule.from_gammas``.
    """

    def __init__(self, alphas, name: str | None = None):
        alphas = torch.as_tensor(alphas, dtype=torch.float64).detach().clone().cpu()
        if alphas.ndim != 1 or alphas.numel() == 0:
            raise ValueError(f"alphas must be a non-empty 1-D sequence, got shape {tuple(alphas.shape)}")
        if not torch.isfinite(alphas).all() or (alphas <= 0).any() or (alphas >= 1).any():
            raise ValueError(f"alphas must lie in the open interval (0, 1); got min {alphas.min().item():.6g}, "
                             f"max {alphas.max().item():.6g}")
        self.alphas = alphas                                            # [T], alphas[t-1] = alpha_t
        # gamma_t = prod_{i=1..t} alpha_i, gamma_0 = 1  (the constant of (3))
        self.gammas = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(alphas, 0)])  # [T+1]
        self.T = int(alphas.numel())
        self.name = name or f"custom(T={self.T})"
        self._on_device = {}  # (what, device, dtype) -> (self.gammas, a table there): see ``_cached``

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 2000, beta_start: float = 1e-6, beta_end: float = 1e-2) -> "Schedule":
        """beta_t = 1 - alpha_t linear from beta_start to beta_end (SR3/WaveGrad training default:
        T = 2000, 1e-6 -> 1e-2)."""
        T = positive_int(T, "T")
        if not (0 < beta_start < 1 and 0 < beta_end < 1):
            raise ValueError(f"beta_start and beta_end must lie in (0, 1); got {beta_start}, {beta_end}")
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(1 - betas, name=f"linear(T={T}, {beta_start:g}, {beta_end:g})")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "Schedule":
        """The cosine schedule of Nichol & Dhariwal (2021): gamma(t) = f(t)/f(0),
        f(t) = cos^2(pi/2 (t/T + s)/(1 + s)); each beta is capped at ``max_beta`` as in their paper.
        Not used by SR3; offered for comparison."""
        T = positive_int(T, "T")
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        gammas = f / f[0]
        alphas = (gammas[1:] / gammas[:-1]).clamp(min=1 - max_beta)  # alpha_t = gamma_t / gamma_{t-1}
        return cls(alphas, name=f"cosine(T={T}, s={s:g})")

    @classmethod
    def from_gammas(cls, gammas) -> "Schedule":
        """An explicit gamma_1..gamma_T (gamma_0 = 1 is implied): strictly decreasing, in (0, 1)."""
        g = torch.as_tensor(gammas, dtype=torch.float64).cpu()
        if g.ndim != 1 or g.numel() == 0:
            raise ValueError(f"gammas must be a non-empty 1-D sequence, got shape {tuple(g.shape)}")
        if (g <= 0).any() or (g >= 1).any():
            raise ValueError("gammas (gamma_1..gamma_T) must lie in the open interval (0, 1)")
        full = torch.cat([torch.ones(1, dtype=torch.float64), g])
        if not (full[1:] < full[:-1]).all():
            raise ValueError("gammas must be strictly decreasing in t (gamma_0 = 1 > gamma_1 > ... > gamma_T)")
        out = cls(full[1:] / full[:-1])  # alpha_t = gamma_t / gamma_{t-1}
        out.gammas = full  # keep the given gammas exactly, not their re-multiplied alphas
        return out

    def respaced(self, steps: int) -> "Schedule":
        """An inference schedule of ``steps`` steps that visits ``steps`` of this schedule's gammas, evenly
        spaced in t and always ending at gamma_T: new alpha_k = gamma_{t_k} / gamma_{t_{k-1}}.
        The network only sees gamma, so it needs no retraining for this."""
        steps = positive_int(steps, "steps")
        if steps > self.T:
            raise ValueError(f"steps must be in 1..T = 1..{self.T}, got {steps}")
        ts = torch.linspace(0, self.T, steps + 1, dtype=torch.float64).round().long()
        out = Schedule.from_gammas(self.gammas[ts[1:]])
        out.name = f"{self.name}.respaced({steps})"
        return out

    # ---- accessors with the paper's indexing -------------------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        """alpha_t for t in 1..T (int or integer tensor of any shape), float64."""
        return self.alphas[self._index(t, 1, "t") - 1]

    def gamma(self, t) -> torch.Tensor:
        """gamma_t for t in 0..T (int or integer tensor of any shape), float64; gamma(0) == 1."""
        return self.gammas[self._index(t, 0, "t")]

    def _index(self, t, low: int, name: str) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer step index, got dtype {t.dtype}")
        t = t.long().cpu()
        if t.numel() and (t.min() < low or t.max() > self.T):
            raise ValueError(f"{name} must be in {low}..T = {low}..{self.T}; got values in "
                             f"{t.min().item()}..{t.max().item()}")
        return t

    # ---- p(gamma) of Algorithm 1 -------------------------------------------------------------------------
    def sample_gamma(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw gamma ~ p(gamma) = sum_t (1/T) U(gamma_t, gamma_{t-1}) independently for each sample:
        t uniform in 1..T, then gamma uniform between gamma_t and gamma_{t-1}. Returns [B] on the generator's
        device (CPU when no generator is given): float64 on the CPU, float32 elsewhere (MPS has no float64;
        the network sees gamma in float32 anyway)."""
        batch_size = positive_int(batch_size, "batch_size")
        device = generator.device if generator is not None else torch.device("cpu")
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        t = torch.randint(1, self.T + 1, (batch_size,), generator=generator, device=device)
        u = torch.rand(batch_size, generator=generator, device=device, dtype=dtype)
        gammas = self.gammas_on(device, dtype)
        lo, hi = gammas[t], gammas[t - 1]  # gamma_t < gamma_{t-1}
        return lo + u * (hi - lo)

    def gammas_on(self, device, dtype=torch.float64) -> torch.Tensor:
        """gamma_0..gamma_T ([T + 1], as ``gammas``) in ``dtype`` on ``device``, copied there once and then reused:
        a copy per training step would be a host-device synchronisation every step. Do not modify the result."""
        return self._cached("gammas", device, dtype, lambda: self.gammas)

    def _cached(self, what: str, device, dtype, build) -> torch.Tensor:
        """``build()`` (a float64 CPU tensor made from ``gammas``) in ``dtype`` on ``device``, made and copied once,
        and again only if ``gammas`` was replaced (``from_gammas`` does)."""
        key = (what, torch.device(device), dtype)
        source, copy = self._on_device.get(key, (None, None))
        if source is not self.gammas:
            source, copy = self.gammas, build().to(dtype).to(device)
            self._on_device[key] = source, copy
        return copy

    def gamma_cdf(self, g) -> torch.Tensor:
        """P(Gamma <= g) under p(gamma): (1/T) sum_t clamp((g - gamma_t)/(gamma_{t-1} - gamma_t), 0, 1)."""
        g = torch.as_tensor(g, dtype=torch.float64).cpu()
        lo, hi = self.gammas[1:], self.gammas[:-1]
        return ((g.unsqueeze(-1) - lo) / (hi - lo)).clamp(0, 1).mean(-1)

    def gamma_density(self, g) -> torch.Tensor:
        """p(gamma) at g: (1/T) sum_t 1[gamma_t <= g < gamma_{t-1}] / (gamma_{t-1} - gamma_t), the derivative of
        ``gamma_cdf``, shaped like g. A floating tensor g keeps its device and dtype (training calls this every step:
        no host-device copy); anything else is read as float64 on the CPU. The interval is found by search among
        ``gammas_on(g's device, dtype)``; the per-interval densities are computed once in float64."""
        g = torch.as_tensor(g)
        if not g.is_floating_point():
            g = g.to(torch.float64)
        ascending = self._cached("ascending", g.device, g.dtype, lambda: self.gammas.flip(0))   # gamma_T..gamma_0
        table = self._cached("density", g.device, g.dtype, self._density_table)
        return table[torch.searchsorted(ascending, g.contiguous(), right=True)]

    def _density_table(self) -> torch.Tensor:
        """[T + 2]: entry j is p(gamma) on [gamma_{T-j+1}, gamma_{T-j}) (j = 1..T), 0 below gamma_T and at 1."""
        a = self.gammas.flip(0)
        zero = torch.zeros(1, dtype=torch.float64)
        return torch.cat([zero, (1 / (a[1:] - a[:-1])) / self.T, zero])

    # ---- persistence --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "alphas": self.alphas.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        return cls(d["alphas"], name=d.get("name"))

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        return f"Schedule({self.name}, gamma_1={self.gammas[1].item():.6g}, gamma_T={self.gammas[-1].item():.6g})"


def positive_int(v, name: str) -> int:
    """``v`` as an int >= 1, else a ValueError naming ``name`` (bools, 2.5, "3" and None are refused). The
    sampler checks its counts with it too."""
    try:
        ok = not isinstance(v, bool) and int(v) == v and int(v) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)
