"""The variance sigma_t^2 of the reverse step (10): the paper's, the posterior's, and the KL-optimal one.

(10) draws y_{t-1} ~ N(mu_theta, sigma_t^2 I). Three choices, as ``sample_loop(variance=...)``:

- ``"paper"``: sigma_t^2 = 1 - alpha_t, SR3's (and DDPM's) choice.
- ``"posterior"``: sigma_t^2 = sigma~_t^2 = (1 - gamma_{t-1})(1 - alpha_t)/(1 - gamma_t), the variance of (4):
  right if y_0 were known exactly.
- ``"analytic"`` (a named deviation, Bao et al. 2022, "Analytic-DPM"): the Gaussian p(y_{t-1} | y_t, x) closest in
  KL to the true reverse step, whose mean is (4)'s at y^_0, has

      sigma*_t^2 = sigma~_t^2 + c_t^2 v_t,   c_t = sqrt(gamma_{t-1})(1 - alpha_t)/(1 - gamma_t)   (y_0's weight in (4))

  where v_t is the per-pixel mean of E||y_0 - y^_0||^2: the uncertainty left about y_0 at noise level gamma_t
  (law of total variance: y_{t-1} - mu = the posterior's own spread + c_t (y_0 - y^_0)). For the optimal
  denoiser v_t = mean Var[y_0 | y_t, x] = (1 - gamma)/gamma (1 - E||eps^||^2 / d) by Tweedie; for a real
  network, its own error is what the step must make up for, and v_t is never negative. So sigma*^2 lies between
  sigma~^2 (v = 0) and, for data of unit spread, about 1 - alpha_t; we clamp it to [sigma~^2, 1 - alpha_t].

``evaluate.estimate_var_y0`` measures v as a function of gamma for a trained network on training crops, once; the result,
a ``VarianceTable``, travels beside the checkpoint (``<checkpoint>.variance.json``, tied to the checkpoint's
SHA-256) and is attached to the model by ``load_pretrained`` as ``model.var_y0``.
Pure arithmetic on Python floats; relies on nothing else in the package.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path


__all__ = ["VARIANCES", "kl_optimal_variance", "reverse_variance", "require_var_y0", "VarianceTable",
           "table_path", "save_table", "load_table"]

VARIANCES = ("paper", "posterior", "analytic")


def kl_optimal_variance(alpha_t, gamma_t, gamma_prev, var_y0):
    """sigma*_t^2 = sigma~_t^2 + c_t^2 var_y0 (Bao et al. 2022): the isotropic variance of p(y_{t-1} | y_t, x)
    closest in KL to the true reverse step when its mean is (4)'s at E[y_0 | y_t, x]. Floats or tensors."""
    post = (1 - gamma_prev) * (1 - alpha_t) / (1 - gamma_t)          # (4): sigma~^2
    c = gamma_prev ** 0.5 * (1 - alpha_t) / (1 - gamma_t)            # (4): y_0's coefficient in the mean
    return post + c ** 2 * var_y0


def require_var_y0(var_y0) -> None:
    """``variance="analytic"`` needs the network's v(gamma): raise, with what to do, when there is none."""
    if var_y0 is None:
        raise ValueError("variance='analytic' needs the network's v(gamma): pass var_y0= (a VarianceTable from "
                         "evaluate.estimate_var_y0), or load the model with load_pretrained, which attaches it")


def reverse_variance(variance: str, alpha_t: float, gamma_t: float, gamma_prev: float, var_y0=None) -> float:
    """sigma_t^2 of (10) under ``variance`` ("paper", "posterior" or "analytic"); ``var_y0``: a callable
    gamma -> v (a ``VarianceTable``) or a number, needed by "analytic" only."""
    if variance == "paper":
        return 1 - alpha_t                                           # (10): sigma_t^2 = 1 - alpha_t
    post = (1 - gamma_prev) * (1 - alpha_t) / (1 - gamma_t)          # (4)
    if variance == "posterior":
        return post
    if variance != "analytic":
        raise ValueError(f"variance must be one of {list(VARIANCES)}, got {variance!r}")
    require_var_y0(var_y0)
    v = var_y0(gamma_t) if callable(var_y0) else float(var_y0)
    # deviation (Analytic-DPM): clamped to [sigma~^2, 1 - alpha_t], the range the theory allows for unit data
    return min(max(kl_optimal_variance(alpha_t, gamma_t, gamma_prev, max(v, 0.0)), post), 1 - alpha_t)


@dataclass
class VarianceTable:
    """v(gamma), the per-pixel mean error E||y_0 - y^_0||^2 of a network, at increasing log-SNR
    log(gamma / (1 - gamma)); read between the points by linear interpolation in log-SNR (constant beyond)."""
    log_snr: list
    var_y0: list
    sha256: str = ""          # of the checkpoint it was measured for ("" = not tied to a file)

    def __call__(self, gamma: float) -> float:
        lam = math.log(gamma / (1 - gamma)) if 0 < gamma < 1 else (math.inf if gamma >= 1 else -math.inf)
        xs, ys = self.log_snr, self.var_y0
        if lam <= xs[0]:
            return ys[0]
        if lam >= xs[-1]:
            return ys[-1]
        i = next(k for k in range(1, len(xs)) if xs[k] >= lam)
        w = (lam - xs[i - 1]) / (xs[i] - xs[i - 1])
        return (1 - w) * ys[i - 1] + w * ys[i]

    def to_dict(self) -> dict:
        return {"log_snr": list(self.log_snr), "var_y0": list(self.var_y0), "sha256": self.sha256}


def table_path(checkpoint) -> Path:
    """Where a checkpoint's v(gamma) lives: ``<checkpoint>.variance.json`` beside it."""
    p = Path(checkpoint)
    return p.with_name(p.name + ".variance.json")


def save_table(table: VarianceTable, checkpoint) -> Path:
    """Write ``table`` beside ``checkpoint``, tied to the checkpoint's SHA-256."""
    table.sha256 = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    path = table_path(checkpoint)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(table.to_dict(), indent=1))
    tmp.replace(path)
    return path


def load_table(checkpoint) -> VarianceTable | None:
    """The v(gamma) stored beside ``checkpoint``, or None when there is none. Raises when it was measured for
    another file (the checkpoint changed since: re-run ``scripts/estimate_variance.py``)."""
    path = table_path(checkpoint)
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    table = VarianceTable(d["log_snr"], d["var_y0"], d.get("sha256", ""))
    if table.sha256 and table.sha256 != hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest():
        raise ValueError(f"{path.name} was measured for another version of {Path(checkpoint).name}: re-run "
                         "scripts/estimate_variance.py for it")
    return table
