"""The residual target (UNetConfig.target = "residual", a named deviation after SRDiff): the trainer diffuses
r = (y - x_up) / scale, the sampler returns x_up + scale r with y^_0 clamped to the image's range, and the
regression baseline predicts x_up + scale F. Checked against the variable change done by hand. What a network
predicts is decided in one place, ``unet.target_of`` (a ``diffusion.Target``), read through wrappers: a
DataParallel model gives the bare model's images (issue 18: 11 dB instead of 26 on the bundled model, silently),
and a wrapper that hides the config raises."""
import pytest
import torch

from sr3_mini import accel
from sr3_mini import diffusion as D
from sr3_mini.diffusion import Target
from sr3_mini.resize import downsample, upsample
from sr3_mini.sample import regression_predict, super_resolve
from sr3_mini.tiling import Tiled
from sr3_mini.train import step_loss
from sr3_mini.unet import UNet, UNetConfig, target_of

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class ResidualOracle(torch.nn.Module):
    """eps for a known y: (5) solved for eps, in the residual variable r = (y - x_up) / s (or in y itself for
    ``target="y"``)."""
    multiple = 1

    def __init__(self, y, s=0.25, target="residual"):
        super().__init__()
        self.y, self.config = y, UNetConfig(target=target, residual_scale=s)

    def forward(self, y_t, x_up, gamma):
        r = D.to_residual(self.y, x_up, self.config.residual_scale) if self.config.target == "residual" else self.y
        g = gamma.view(-1, 1, 1, 1).to(y_t.dtype)
        return (y_t - g.sqrt() * r) / (1 - g).sqrt()


def photo(seed=0, H=16):
    return (torch.rand(2, 3, H, H, generator=gen(seed)) * 1.6 - 0.8)


def test_config_validates_and_round_trips_the_variable_change():
    with pytest.raises(ValueError, match="target"):
        UNetConfig(target="x")
    with pytest.raises(ValueError, match="residual_scale"):
        UNetConfig(target="residual", residual_scale=0)
    y, x_up = photo(0), photo(1)
    r = D.to_residual(y, x_up, 0.25)
    torch.testing.assert_close(r, (y - x_up) * 4)
    torch.testing.assert_close(D.from_residual(r, x_up, 0.25), y)
    assert target_of(UNet.from_preset("tiny")) == Target() == Target("y")
    assert target_of(UNet.from_preset("tiny", target="residual", residual_scale=0.5)) == Target("residual", 0.5)
    res, paper = Target("residual", 0.25), Target()
    torch.testing.assert_close(res.encode(y, x_up), r)
    torch.testing.assert_close(res.decode(r, x_up), y)
    assert paper.encode(y, x_up) is y and paper.decode(r, x_up) is r and paper.bounds(x_up, -0.5, 1) == (-0.5, 1)
    low, high = res.bounds(x_up)                  # the y_0 whose image x_up + s y_0 is -1 and 1
    torch.testing.assert_close(res.decode(low, x_up), -torch.ones_like(x_up))
    torch.testing.assert_close(res.decode(high, x_up), torch.ones_like(x_up))
    with pytest.raises(ValueError, match="target"):
        Target("x")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampler_with_a_residual_oracle_returns_the_photo_and_image_space_trajectory(sampler):
    y = photo(0)
    x = downsample(y, 4)
    out, traj = super_resolve(ResidualOracle(y), x, steps=20, generator=gen(0), sampler=sampler,
                              variance="posterior", clip=False, progress=False, return_trajectory=True)
    torch.testing.assert_close(out, y, rtol=0, atol=1e-4)
    # the trajectory is in image space: its first y^_0 (an oracle's, so exact) is the photo, not the residual
    torch.testing.assert_close(traj.y0_hat[0], y, rtol=0, atol=1e-4)
    assert torch.equal(traj.y_t[-1], out)


def test_clip_keeps_the_image_not_the_residual_in_range():
    y = photo(0)
    x = downsample(y, 4)
    x_up = upsample(x, 4)
    target = (y * 3).clamp(-3, 3)                 # far out of range: clipping must bring x_up + s r to [-1, 1]
    out, traj = super_resolve(ResidualOracle(target), x, steps=5, generator=gen(0), progress=False,
                              return_trajectory=True, variance="posterior")
    y0 = traj.y0_hat[:-1]
    assert y0.min() >= -1 - 1e-5 and y0.max() <= 1 + 1e-5
    # and it is the image's range, not r's: r itself reaches far beyond [-1, 1] here
    assert D.to_residual(y0[0], x_up, 0.25).abs().max() > 2


def drawn(**kw) -> UNet:
    """The tiny U-Net with every weight drawn: the zero-initialised output convolution of a fresh one makes its
    output F exactly 0, and then x_up + s F = x_up holds for any scale s, so nothing about s would be checked."""
    torch.manual_seed(0)
    net = UNet.from_preset("tiny", **kw).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(std=0.1)
    return net


def test_training_loss_diffuses_the_scaled_residual_and_regression_adds_x_up():
    net = drawn(target="residual", residual_scale=0.25, head="v")
    y_0 = photo(2, H=net.multiple * 2)
    x_up = upsample(downsample(y_0, 4), 4)
    gamma = torch.tensor([0.3, 0.9], dtype=torch.float64)
    eps = torch.randn(y_0.shape, generator=gen(3))
    r = (y_0 - x_up) / 0.25
    y_t = gamma.sqrt().view(-1, 1, 1, 1).float() * r + (1 - gamma).sqrt().view(-1, 1, 1, 1).float() * eps
    by_hand = (net(y_t, x_up, gamma.float()) - eps).abs().mean()
    torch.testing.assert_close(step_loss(net, "sr3", y_0, x_up, gamma, eps, p=1), by_hand, rtol=1e-5, atol=1e-6)


def test_regression_of_a_residual_network_is_x_up_plus_scale_times_its_output():
    """regression_predict = x_up + s F, F = f_theta(0, x_up, 1), for a network whose F is far from 0 (|F| ~ 1),
    at two scales: the same weights with s = 0.5 move the prediction by another 0.25 F."""
    x_up = upsample(downsample(photo(2, H=16), 4), 4)
    for s in (0.25, 0.5):
        net = drawn(target="residual", residual_scale=s)
        F = net(torch.zeros_like(x_up), x_up, torch.ones(2))
        assert F.abs().mean() > 0.1
        torch.testing.assert_close(regression_predict(net, x_up), x_up + s * F)
    paper = drawn()
    torch.testing.assert_close(regression_predict(paper, x_up), paper(torch.zeros_like(x_up), x_up, torch.ones(2)))
    assert (regression_predict(paper, x_up) - x_up).abs().mean() > 0.1    # the paper's network predicts y itself


def test_v_head_keeps_eps_hat_in_float32_under_autocast():
    torch.manual_seed(0)
    net = UNet.from_preset("tiny", head="v").eval()
    y_t = torch.randn(2, 3, net.multiple, net.multiple, generator=gen(4))
    gamma = torch.tensor([1e-4, 0.5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eps_hat = net(y_t, y_t, gamma)
    assert eps_hat.dtype == torch.float32
    # at gamma = 1e-4, eps_hat = sqrt(1 - gamma) y_t + 0.01 F: y_t comes through at float32 precision, so the
    # autocast result is within 0.01 x (F's bf16 error) of float32's; a bf16 eps_hat (|y_t| ~ 3) is off by ~1e-2
    eps_32 = net(y_t, y_t, gamma)
    assert (eps_hat[0] - eps_32[0]).abs().max() < 1e-3


def test_tiled_upscale_of_a_residual_model_is_super_resolve_and_tiles_agree():
    """The CLI's path (tiling.upscale_image -> Tiled) must sample the residual target too."""
    from sr3_mini.tiling import upscale_image
    torch.manual_seed(0)
    net = UNet.from_preset("tiny", target="residual", head="v").eval()
    m = net.multiple
    x = photo(5, H=2 * m)[:1]                       # LR [1, 3, 2m, 2m] -> HR 8m: one tile of 8m, or four of 4m
    whole = upscale_image(net, "sr3", x, 4, steps=3, generator=gen(1), progress=False, tile=2 * m)
    direct = super_resolve(net, x, steps=3, generator=gen(1), progress=False)
    torch.testing.assert_close(whole, direct, rtol=0, atol=1e-5)
    tiled = upscale_image(net, "sr3", x, 4, steps=3, generator=gen(1), progress=False, tile=m)
    assert (tiled - direct).abs().mean() < 0.05     # blended tiles of the same residual sampler, not of y


class Hidden(torch.nn.Module):
    """A wrapper that keeps its network where target_of does not look, and has no config of its own."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, *args):
        return self.net(*args)


def test_wrapped_models_predict_what_the_bare_model_predicts():
    """DataParallel (and DDP: ``.module``), torch.compile's wrapper (``._orig_mod``), tiling.Tiled and
    accel.SamplingNet (``.model``) all have the bare network's target; sampling, the regression baseline and the
    training loss of a DataParallel-wrapped residual model equal the bare model's. Before issue 18 the wrapper
    hid the config and the model was sampled as if it predicted y."""
    net = drawn(target="residual", residual_scale=0.25, head="v")
    wrapped = torch.nn.DataParallel(net)
    for w in (wrapped, torch.compile(net), Tiled(net, 4 * net.multiple), accel.SamplingNet(wrapped, "cpu"),
              Tiled(torch.compile(net), 4 * net.multiple)):
        assert target_of(w) == Target("residual", 0.25)
    x = photo(6, H=4)[:1]
    run = lambda m: super_resolve(m, x, steps=3, generator=gen(2), progress=False)  # noqa: E731
    bare = run(net)
    assert (bare - upsample(x, 4)).abs().mean() > 1e-3       # the residual is not zero: the check has teeth
    assert torch.equal(run(wrapped), bare)
    x_up = upsample(x, 4)
    torch.testing.assert_close(regression_predict(wrapped, x_up), regression_predict(net, x_up), rtol=0, atol=0)
    y_0, gamma, eps = photo(7, H=16)[:1], torch.tensor([0.5], dtype=torch.float64), torch.randn(x_up.shape)
    x_up = upsample(downsample(y_0, 4), 4)
    assert step_loss(wrapped, "sr3", y_0, x_up, gamma, eps, p=1) == step_loss(net, "sr3", y_0, x_up, gamma, eps, p=1)


def test_distributed_data_parallel_is_read_through():
    """DDP keeps its network under ``.module`` too (a one-process gloo group, made and torn down here)."""
    import torch.distributed as dist
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable, or a process group already exists")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(drawn(target="residual", residual_scale=0.5))
        assert target_of(ddp) == target_of(torch.compile(ddp)) == Target("residual", 0.5)
    finally:
        dist.destroy_process_group()


def test_a_wrapper_without_config_raises_everywhere():
    net = Hidden(drawn(target="residual"))
    x = photo(6, H=4)[:1]
    x_up = upsample(x, 4)
    for call in (lambda: target_of(net), lambda: super_resolve(net, x, steps=2, progress=False),
                 lambda: regression_predict(net, x_up),
                 lambda: step_loss(net, "sr3", x_up, x_up, torch.tensor([0.5]), torch.zeros_like(x_up), p=1),
                 lambda: super_resolve(lambda y_t, x_up, g: y_t, x, steps=2, progress=False)):
        with pytest.raises(TypeError, match="no config"):
            call()
    net.config = UNetConfig(target="residual")                 # a wrapper may carry the config itself
    assert target_of(net) == Target("residual", 0.25)
    net.config = {"target": "residual"}                        # a config that does not say it
    with pytest.raises(TypeError, match="target and residual_scale"):
        target_of(net)


@pytest.mark.parametrize("target", ["y", "residual"])
def test_a_callers_clip_bounds_are_the_images_for_both_targets(target):
    """super_resolve(clip=(low, high)) keeps the image's y^_0 in [low, high], for the residual target too (it
    was silently replaced by [-1, 1] there)."""
    y = photo(0)
    x = downsample(y, 4)
    oracle = ResidualOracle((y * 3).clamp(-3, 3), target=target)   # a y^_0 far out of range at every step
    _, traj = super_resolve(oracle, x, steps=5, generator=gen(0), progress=False, return_trajectory=True,
                            variance="posterior", clip=(-0.5, 0.25))
    y0 = traj.y0_hat[:-1]
    assert y0.min() >= -0.5 - 1e-5 and y0.max() <= 0.25 + 1e-5
    assert y0.min() < -0.49 and y0.max() > 0.24                # the bounds are reached, not just respected
