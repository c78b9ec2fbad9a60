"""The index convention of sr3_mini.schedule, pinned, and p(gamma) checked against its CDF."""
import math

import pytest
import torch
from scipy import stats

from sr3_mini.schedule import Schedule


def test_index_convention_is_pinned():
    s = Schedule.linear(T=2000, beta_start=1e-6, beta_end=1e-2)
    assert s.T == 2000 and len(s) == 2000
    assert s.alphas.shape == (2000,) and s.gammas.shape == (2001,)
    assert s.alphas.dtype == s.gammas.dtype == torch.float64
    assert s.gamma(0).item() == 1.0 and s.gammas[0].item() == 1.0
    assert s.alpha(1).item() == pytest.approx(1 - 1e-6, abs=1e-15)       # alpha_1 = 1 - beta_start
    assert s.alpha(2000).item() == pytest.approx(1 - 1e-2, abs=1e-15)    # alpha_T = 1 - beta_end
    assert s.gamma(1).item() == s.alpha(1).item()                        # gamma_1 = alpha_1
    # gamma_T = prod alpha_t = exp(sum log(1 - beta_t)), the betas rebuilt independently in plain Python
    betas = [1e-6 + (1e-2 - 1e-6) * i / 1999 for i in range(2000)]
    assert s.gamma(2000).item() == pytest.approx(math.exp(math.fsum(math.log1p(-b) for b in betas)), rel=1e-10)
    assert 4.3e-5 < s.gamma(2000).item() < 4.5e-5
    t = torch.arange(1, 2001)
    torch.testing.assert_close(s.gamma(t), s.gamma(t - 1) * s.alpha(t), rtol=1e-14, atol=0)


def test_accessors_are_vectorised_and_keep_shape():
    s = Schedule.linear(T=10, beta_start=0.01, beta_end=0.2)
    t = torch.tensor([[1, 2], [10, 3]])
    assert s.alpha(t).shape == (2, 2) and s.gamma(t).shape == (2, 2)
    assert s.alpha(t)[1, 0] == s.alphas[9]
    assert s.gamma(torch.tensor(0)).item() == 1.0


@pytest.mark.parametrize("t", [0, 11, -1])
def test_alpha_index_out_of_range(t):
    with pytest.raises(ValueError, match="t must be in 1..T"):
        Schedule.linear(T=10).alpha(t)


def test_gamma_index_errors():
    s = Schedule.linear(T=10)
    with pytest.raises(ValueError, match=r"0\.\.T = 0\.\.10"):
        s.gamma(11)
    with pytest.raises(ValueError, match="integer"):
        s.gamma(1.5)


@pytest.mark.parametrize("alphas", [[0.5, 1.0], [0.0, 0.5], [1.2], [float("nan")], []])
def test_bad_alphas(alphas):
    with pytest.raises(ValueError, match="alphas"):
        Schedule(alphas)


def test_from_gammas_requires_decreasing():
    with pytest.raises(ValueError, match="strictly decreasing"):
        Schedule.from_gammas([0.9, 0.95, 0.5])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Schedule.from_gammas([1.0, 0.5])
    s = Schedule.from_gammas([0.9, 0.5, 0.1])
    torch.testing.assert_close(s.gammas, torch.tensor([1, 0.9, 0.5, 0.1], dtype=torch.float64))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_T(bad):
    with pytest.raises(ValueError, match="T must be a positive integer"):
        Schedule.linear(T=bad)


def test_respaced_visits_training_gammas_and_ends_at_gamma_T():
    s = Schedule.linear()
    r = s.respaced(100)
    assert r.T == 100
    assert r.gammas[-1].item() == s.gammas[-1].item()
    assert all(any(abs(g - h) < 1e-15 for h in s.gammas.tolist()) for g in r.gammas.tolist())
    assert (r.gammas[1:] < r.gammas[:-1]).all()
    assert s.respaced(s.T).gammas.allclose(s.gammas, rtol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        s.respaced(2001)


def test_cosine_is_a_valid_schedule():
    s = Schedule.cosine(1000)
    assert (s.gammas[1:] < s.gammas[:-1]).all()
    assert s.gamma(1000).item() < 1e-4 and s.gamma(1).item() > 0.999


def test_dict_round_trip():
    s = Schedule.linear(50, 1e-4, 0.05)
    r = Schedule.from_dict(s.to_dict())
    assert torch.equal(r.alphas, s.alphas) and r.name == s.name


def test_sample_gamma_matches_p_gamma():
    """KS test of draws against the CDF of p(gamma) = sum_t (1/T) U(gamma_t, gamma_{t-1})."""
    s = Schedule.linear(T=8, beta_start=0.05, beta_end=0.4)  # few, wide pieces: a wrong piece would show
    g = s.sample_gamma(50_000, generator=torch.Generator().manual_seed(0))
    assert g.dtype == torch.float64 and g.shape == (50_000,)
    assert (g > s.gammas[-1]).all() and (g < 1).all()
    res = stats.kstest(g.numpy(), lambda v: s.gamma_cdf(torch.as_tensor(v)).numpy())
    assert res.pvalue > 1e-3, res
    # each piece t carries probability 1/T
    counts = torch.histc(g, bins=1, min=s.gammas[4].item(), max=s.gammas[3].item())
    assert abs(counts.item() / g.numel() - 1 / 8) < 5 * math.sqrt((1 / 8) * (7 / 8) / g.numel())


def test_sample_gamma_is_per_sample_and_seeded():
    s = Schedule.linear()
    a = s.sample_gamma(4096, generator=torch.Generator().manual_seed(1))
    b = s.sample_gamma(4096, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.unique().numel() == a.numel()  # not one gamma shared by the batch
    r = stats.pearsonr(a[:-1].numpy(), a[1:].numpy())[0]
    assert abs(r) < 5 / math.sqrt(a.numel())  # neighbours in a batch are independent
    with pytest.raises(ValueError, match="batch_size"):
        s.sample_gamma(0)


def test_gammas_on_a_device_are_copied_once_and_follow_the_schedule():
    """sample_gamma's table on the generator's device is cached (no copy per training step, tests/test_transfers.py),
    and never stale: from_gammas replaces ``gammas`` after construction."""
    s = Schedule.linear(10, 1e-3, 0.1)
    table = s.gammas_on("cpu", torch.float32)
    assert s.gammas_on("cpu", torch.float32) is table and torch.equal(table, s.gammas.float())
    assert s.gammas_on("cpu") is not table and s.gammas_on("cpu").dtype == torch.float64
    r = s.respaced(4)                                       # built by from_gammas
    assert torch.equal(r.gammas_on("cpu"), r.gammas)
    r.gammas = r.gammas.clone() * 0.5
    assert torch.equal(r.gammas_on("cpu"), r.gammas)
