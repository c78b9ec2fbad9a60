"""guidance.py: condition dropping, the guided combination, and classifier-free guidance on the toy problem, whose
conditional and unconditional denoisers are both exact (toy.py with x=None).

What guidance is known to do, checked with exact denoisers: w = 0 is plain conditional sampling; the exact
unconditional denoiser samples the prior p(y_0); a weight w > 0 trades diversity for fidelity to x (outputs whose
downsampling lies closer to x, drawn closer together)."""
import pytest
import torch

from sr3_mini import metrics
from sr3_mini.guidance import drop_condition, guided, null_condition
from sr3_mini.resize import downsample, upsample
from sr3_mini.sample import sample_loop
from sr3_mini.schedule import Schedule
from sr3_mini.toy import ToyProblem

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)



def test_drop_condition_drops_whole_examples_with_probability_p():
    x_up = torch.randn(4000, 3, 4, 4) + 5                       # never zero by chance
    assert torch.equal(drop_condition(x_up, 0.0, gen(0)), x_up)
    assert torch.equal(drop_condition(x_up, 1.0, gen(0)), null_condition(x_up))
    out = drop_condition(x_up, 0.2, gen(1))
    dropped = (out == 0).flatten(1)
    assert (dropped.all(1) | ~dropped.any(1)).all()              # an example is dropped whole or not at all
    kept = ~dropped.any(1)
    assert torch.equal(out[kept], x_up[kept])
    frac = dropped.all(1).double().mean().item()
    assert abs(frac - 0.2) < 4 * (0.2 * 0.8 / 4000) ** 0.5       # 4 standard deviations of a binomial fraction
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p must lie in"):
            drop_condition(x_up, p)


def test_guided_is_the_stated_combination():
    calls = []

    def f(y_t, x_up, gamma):                                      # a stand-in network: remembers its conditions
        calls.append(x_up.abs().sum().item())
        return y_t * 2 + x_up.mean() + gamma.view(-1, 1, 1, 1)

    y_t, x_up, g = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([0.3, 0.6])
    assert torch.equal(guided(f, 0.0)(y_t, x_up, g), f(y_t, x_up, g))
    calls.clear()
    out = guided(f, 1.5)(y_t, x_up, g)
    assert calls[1] == 0                                           # the second call saw the null condition
    torch.testing.assert_close(out, 2.5 * f(y_t, x_up, g) - 1.5 * f(y_t, null_condition(x_up), g))
    f_u = lambda y, xu, gm: torch.ones_like(y)                     # noqa: E731 - an explicit unconditional f
    torch.testing.assert_close(guided(f, 2.0, f_u)(y_t, x_up, g), 3 * f(y_t, x_up, g) - 2)
    with pytest.raises(ValueError, match="w must be >= 0"):
        guided(f, -1.0)


def test_exact_unconditional_denoiser_limits_and_prior_sampling(toy):
    """E[y_0 | y_t] is sum_k w_k mu_k at gamma = 0 and y_t at gamma = 1; Algorithm 2 driven by it draws the prior:
    mode counts within 4 standard deviations of n w_k."""
    y_t = torch.randn(5, *toy.shape, generator=gen(2), dtype=F64)
    prior_mean = (toy.weights[:, None] * toy.mu).sum(0).reshape(toy.shape)
    torch.testing.assert_close(toy.posterior_mean(y_t, None, 0.0), prior_mean.expand(5, *toy.shape))
    torch.testing.assert_close(toy.posterior_mean(y_t, None, 1.0), y_t)
    n = 600
    f_u = toy.exact_f_theta(None)
    x_up = torch.zeros(n, 3, 8, 8, dtype=F64)
    y_0 = sample_loop(f_u, x_up, Schedule.linear(2000, 1e-6, 1e-2).respaced(50), generator=gen(3), progress=False)
    counts = torch.bincount(toy.component_probs(y_0).argmax(1), minlength=toy.K).to(F64)
    sd = (n * toy.weights * (1 - toy.weights)).sqrt()
    assert ((counts - n * toy.weights).abs() <= 4 * sd).all(), (counts, n * toy.weights)


def test_guidance_trades_diversity_for_fidelity_on_the_toy():
    """Exact conditional and unconditional denoisers on a toy whose x is measured with noise (sigma_x = 0.2, so x
    leaves room to sharpen), w = 0 against w = 7: the guided outputs' downsampling lies closer to x than the true
    images' own does (consistency), the draws lie closer together (diversity), and the split between the two
    checkerboard phases, which x cannot see, is left alone. Margins: several times the run-to-run noise of these
    sizes (diversity: about 0.03; measured with other seeds)."""
    P = ToyProblem(channels=3, size=8, scale=2, sigma_x=0.2)
    B, S = 200, 2
    x, y = P.sample(B, gen(4))
    xr = x.repeat(S, 1, 1, 1)
    f_c, f_u = P.exact_f_theta(xr), P.exact_f_theta(None)
    schedule = Schedule.linear(2000, 1e-6, 1e-2).respaced(100)
    truth = (downsample(y, P.scale) - x).pow(2).mean().item()
    res = {}
    for w in (0.0, 7.0):
        out = sample_loop(guided(f_c, w, f_u), upsample(xr, P.scale), schedule, generator=gen(5), progress=False)
        fidelity = (downsample(out, P.scale) - xr).pow(2).mean().item()
        k = torch.bincount(P.component_probs(out).argmax(1), minlength=P.K).to(F64)
        res[w] = fidelity, metrics.diversity(out.reshape(S, B, *P.shape), y).mean().item(), k[0] / (k[0] + k[1])
    assert abs(res[0.0][0] / truth - 1) < 0.1, (res, truth)       # w = 0: as consistent as the truth, no more
    assert res[7.0][0] < 0.8 * truth, (res, truth)                 # w = 7: more consistent than the truth itself
    assert res[7.0][1] < res[0.0][1] - 0.06 and 0.8 < res[0.0][1] < 1.3, res
    assert abs(res[7.0][2] - res[0.0][2]) < 0.06, res              # the phase split x cannot see: unchanged
