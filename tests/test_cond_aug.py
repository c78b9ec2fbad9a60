"""cond_aug.py, conditioning augmentation (Ho et al. 2021): the training noise and blur, the sampling corruption,
and how the trainer and the sampler use them. That two processes draw the same noise as one with the global batch is checked
by test_train.py's DDP test, whose runs use cond_noise."""
import pytest
import torch

from sr3_mini import checkpoint as C
from sr3_mini import cond_aug
from sr3_mini.resize import downsample, upsample
from sr3_mini.sample import Stage, cascade, super_resolve
from sr3_mini.train import ConfigError, TrainConfig, train
from sr3_mini.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_training_noise_has_one_uniform_level_per_example():
    z = cond_aug.noise((4000, 3, 8, 8), 0.3, torch.Generator().manual_seed(0))
    s = z.flatten(1).std(dim=1)                          # each example's level, up to the noise of 192 draws
    assert z.shape == (4000, 3, 8, 8) and s.max() < 0.3 * 1.25
    # s ~ U(0, 0.3): mean 0.15, and a quarter of the examples below 0.075
    assert abs(s.mean() - 0.15) < 0.01 and abs((s < 0.075).float().mean() - 0.25) < 0.03
    assert torch.equal(z, cond_aug.noise((4000, 3, 8, 8), 0.3, torch.Generator().manual_seed(0)))
    assert torch.equal(cond_aug.noise((2, 3, 4, 4), 0.0), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="s_max"):
        cond_aug.noise((2, 3), -0.1)


def test_blur_is_a_normalised_gaussian_per_example():
    x = torch.zeros(3, 3, 33, 33)
    x[:, :, 16, 16] = 1                                                   # an impulse in every channel
    y = cond_aug.blur(x, torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(y[0], x[0])                                        # b = 0: unchanged
    k = torch.arange(33.0) - 16
    for i, b in ((1, 1.0), (2, 2.0)):
        assert abs(y[i, 1].sum() - 1) < 1e-5                              # mass kept
        assert abs((y[i, 1].sum(dim=0) * k**2).sum() / b**2 - 1) < 0.03   # variance b^2 (cut at 3 b) per axis
        assert torch.allclose(y[i, 1], y[i, 1].T, atol=1e-7)              # the same along rows and columns
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(cond_aug.blur(flat, 1.5), flat)                 # constants stay (reflected borders)
    with pytest.raises(ValueError, match="too wide"):
        cond_aug.blur(flat, 6.0)


def test_sampling_corruption_at_a_fixed_level_and_none_at_zero():
    x, g = torch.zeros(2, 3, 64, 64), torch.Generator().manual_seed(0)
    state = g.get_state()
    assert cond_aug.corrupt(x, 0.0, g) is x and torch.equal(g.get_state(), state)     # s = 0 draws nothing
    z = cond_aug.corrupt(x, 0.2, g)
    assert abs(z.std() - 0.2) < 0.01 and abs(z.mean()) < 0.01
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="conditioning noise"):
            cond_aug.corrupt(x, bad, g)
        with pytest.raises(ValueError, match="conditioning blur"):
            cond_aug.corrupt(x, 0.0, g, b=bad)
    smooth = torch.rand(2, 3, 16, 16)
    assert torch.equal(cond_aug.corrupt(smooth, 0.0, g, b=1.0), cond_aug.blur(smooth, 1.0))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = UNet.from_preset("tiny", target="residual").eval()
    net.scale = 4
    return net


def test_super_resolve_conditions_on_the_corrupted_x(tiny, monkeypatch):
    x = downsample(torch.rand(1, 3, 16, 16) * 2 - 1, 4)
    run = lambda s, **kw: super_resolve(tiny, x, steps=3, cond_noise=s, progress=False,    # noqa: E731
                                        generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(run(0.0), super_resolve(tiny, x, steps=3, progress=False,
                                               generator=torch.Generator().manual_seed(1)))
    seen = []
    real = tiny.forward
    monkeypatch.setattr(tiny, "forward", lambda y_t, x_up, gamma: seen.append(x_up) or real(y_t, x_up, gamma))
    out = run(0.3)
    g = torch.Generator().manual_seed(1)
    expected = upsample(x + 0.3 * torch.randn(x.shape, generator=g), 4)  # drawn first, from the same generator
    assert all(torch.allclose(s, expected, atol=1e-6) for s in seen) and len(seen) == 3
    assert torch.equal(out, run(0.3)) and not torch.equal(out, run(0.0))
    seen.clear()
    super_resolve(tiny, x, steps=3, cond_blur=1.0, progress=False)
    assert all(torch.allclose(s, upsample(cond_aug.blur(x, 1.0), 4), atol=1e-6) for s in seen) and len(seen) == 3
    grey = x.mean(dim=1, keepdim=True).expand_as(x).contiguous()           # a grey x stays grey, noise or not
    y = super_resolve(tiny, grey, steps=3, cond_noise=0.3, progress=False)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


def test_a_cascade_stage_passes_its_level(tiny):
    x = torch.rand(1, 3, 4, 4) * 2 - 1
    g = lambda: torch.Generator().manual_seed(2)                                       # noqa: E731
    out = cascade([Stage(tiny, steps=2), Stage(tiny, steps=2, cond_noise=0.2, cond_blur=0.5)], x, generator=g(),
                  progress=False)
    h = g()
    mid = super_resolve(tiny, x, steps=2, generator=h, progress=False)
    assert torch.equal(out, super_resolve(tiny, mid, steps=2, generator=h, cond_noise=0.2, cond_blur=0.5,
                                          progress=False))


POOL = (torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)


def test_training_with_noise_on_x_differs_and_resumes_exactly(tmp_path, monkeypatch):
    def cfg(name, **kw):
        base = dict(preset="tiny", crop=16, batch_size=2, steps=4, warmup_steps=2, val_every=0, log_every=1,
                    save_every=2, progress=False, device="cpu", lr=1e-3, out_dir=str(tmp_path / name))
        return TrainConfig(**{**base, **kw})
    weights = lambda name: C.load_checkpoint(tmp_path / name / "last.pt")["model"]     # noqa: E731
    from sr3_mini import train as T
    seen, real = [], T.step_loss
    monkeypatch.setattr(T, "step_loss", lambda net, kind, y_0, x_up, *a: seen.append(
        x_up - upsample(downsample(y_0, 4), 4)) or real(net, kind, y_0, x_up, *a))
    train(cfg("clean"), pool=POOL)
    assert len(seen) == 4 and all(torch.equal(d, torch.zeros_like(d)) for d in seen)   # x_up of the clean x
    seen.clear()
    train(cfg("noisy", cond_noise=0.5), pool=POOL)
    assert len(seen) == 4 and all(0 < d.std() < 0.5 for d in seen)     # the noise of x, smoothed by upsampling
    seen.clear()
    train(cfg("blurred", cond_blur=1.0), pool=POOL)                      # POOL is noise: blur takes energy out
    assert len(seen) == 4 and all(d.std() > 0 for d in seen)
    train(cfg("split", cond_noise=0.5, steps=2), pool=POOL)
    train(cfg("split", cond_noise=0.5, resume="auto"), pool=POOL)
    a, b, c = weights("clean"), weights("noisy"), weights("split")
    assert not torch.equal(a["conv_in.weight"], b["conv_in.weight"])
    assert all(torch.equal(b[k], c[k]) for k in b)                       # the noise is part of the saved stream
    for field in ("cond_noise", "cond_blur"):
        with pytest.raises(ConfigError, match=f"{field} must be a finite number >= 0"):
            cfg("bad", **{field: -0.1})
