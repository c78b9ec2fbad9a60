"""No host-to-device copy per step (issue 18, item 7): each one is a stream synchronisation that CUDA graphs
cannot hide. The steps run on PyTorch's "meta" device, an accelerator stand-in that exists on every machine, and
every copy between devices that the aten ops make is recorded (``aten._to_copy``, ``aten.copy_``). A first step
may copy what is then cached (the schedule's gammas); the steps after it must copy nothing.

The training step is the loop body of ``train._train`` (``sample_batch``, x = downsample(y_0), ``step_loss``,
backward, clipping, Adam, the EMA, the non-finite flag); the sampling steps run ``sample_loop`` and ``ddim_loop``
with the tiny U-Net through ``accel.SamplingNet``, as ``super_resolve`` does."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sr3_mini import accel
from sr3_mini.resize import downsample, upsample
from sr3_mini.sample import ddim_loop, sample_loop
from sr3_mini.schedule import Schedule
from sr3_mini.train import TrainConfig, ema_decay_at, ema_update, make_adam, sample_batch, step_loss
from sr3_mini.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICE = torch.device("meta")


class Transfers(TorchDispatchMode):
    """Records (op, source device, destination device, shape) of every copy between two devices."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.copy_):
            src, dst = (args[1], args[0]) if func.overloadpacket is torch.ops.aten.copy_ else (args[0], out)
            if isinstance(src, torch.Tensor) and src.device != dst.device:
                self.seen.append((str(func), src.device.type, dst.device.type, tuple(src.shape)))
        return out


class MetaGenerator(torch.Generator):
    """A CPU generator that says it lives on the meta device: the trainer draws on its generator's device."""

    @property
    def device(self):
        return DEVICE


def tiny(kind="sr3", **kw):
    torch.manual_seed(0)
    return UNet.from_preset("tiny", **kw).to(DEVICE)


@pytest.mark.parametrize("kind, unet", [("sr3", {}), ("sr3", {"head": "v", "target": "residual"}),
                                        ("regression", {})])
def test_a_training_step_copies_nothing_to_the_device(kind, unet):
    cfg, schedule = TrainConfig(preset="tiny", crop=16, kind=kind), Schedule.linear()
    pool = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8).to(DEVICE)
    model = tiny(**unet)
    ema = tiny(**unet).requires_grad_(False)
    opt, g = make_adam(model, 1e-4, DEVICE), MetaGenerator().manual_seed(0)
    bad_step = torch.tensor(-1, device=DEVICE)

    def step(k):
        nonlocal bad_step
        y_0, gamma, eps = sample_batch(pool, 2, cfg, schedule, g)
        x_up = upsample(downsample(y_0, cfg.scale), cfg.scale)
        loss = step_loss(model, kind, y_0, x_up, gamma, eps, cfg.loss_p)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, model, ema_decay_at(k, cfg))
        finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
        bad_step = torch.where((bad_step < 0) & ~finite, k, bad_step)

    step(1)                                     # may copy what is then cached (the schedule's gammas)
    with Transfers() as rec:
        step(2)
        step(3)
    assert rec.seen == []


@pytest.mark.parametrize("loop, kw", [(sample_loop, dict(variance="paper", clip=False)),
                                      (sample_loop, dict(variance="posterior", clip=True)),
                                      (ddim_loop, dict(clip=True))])
def test_sampling_steps_copy_nothing_to_the_device(loop, kw):
    """Python-float coefficients of every equation stay 0-d CPU tensors (kernel arguments), so a step of the
    default sampler used to make five copies (the issue's count) and makes none."""
    f_theta = accel.SamplingNet(tiny(head="v").eval(), DEVICE)
    x_up = torch.zeros(2, 3, 16, 16, device=DEVICE)
    with torch.no_grad(), Transfers() as rec:
        loop(f_theta, x_up, Schedule.linear().respaced(4), generator=MetaGenerator().manual_seed(0),
             progress=False, **kw)
    assert rec.seen == []


def test_the_counter_sees_a_copy():
    """The recorder itself: a CPU tensor moved to the device is one copy."""
    with Transfers() as rec:
        torch.ones(3).to(DEVICE)
    assert rec.seen == [("aten._to_copy.default", "cpu", "meta", (3,))]
