"""The fast paths (``accel.py``, ``blocks.GroupNorm``, ``kernels.py``) agree with the eager float32 path.

Tolerances, stated once (relative L2 error of eps_hat against eager float32 on the same weights and inputs, or
max abs error of a unit-variance GroupNorm output):
- 16-bit GroupNorm alone: bf16 <= 3e-2, fp16 <= 4e-3 max abs (one rounding of an O(1) value: 2^-8, 2^-11);
- the whole tiny U-Net under autocast: bf16 <= 1.5e-2, fp16 <= 2e-3 relative (measured 3.5e-3 and 4e-4: ~4x room);
- the fused Triton kernel (interpreter on CPU): within the 16-bit GroupNorm tolerance, and no further from float32
  than the PyTorch 16-bit ops it replaces (x 1.5 + one ulp: it rounds once where they round three times);
- ``torch.compile`` (Inductor on CPU reorders float32 sums): rtol 1e-4, atol 1e-5 after a 3-step sampler.
float32 paths that must not change at all are compared with ``torch.equal``.
"""
import pytest
import torch
import torch.nn.functional as F

from sr3_mini import accel
from sr3_mini.blocks import GroupNorm
from sr3_mini.sample import super_resolve
from sr3_mini.train import TrainConfig, train
from sr3_mini.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
GN_ATOL = {"bf16": 3e-2, "fp16": 4e-3}
UNET_REL = {"bf16": 1.5e-2, "fp16": 2e-3}
HALF_EPS = {"bf16": 2.0**-7, "fp16": 2.0**-10}  # torch.finfo(...).eps


def rand_tiny(**kw) -> UNet:
    """The tiny preset with every weight drawn (the zero-initialised output conv would make eps_hat = 0)."""
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", **kw).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model


def inputs(batch=4, size=16):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, 3, size, size, generator=g),
            torch.rand(batch, generator=g))


def train_config(tmp_path, **kw) -> TrainConfig:
    """A few CPU steps of the tiny preset on 16x16 crops (as tests/test_train.py's ``config``)."""
    base = dict(preset="tiny", crop=16, batch_size=2, steps=3, lr=1e-3, warmup_steps=0, val_every=0, log_every=1,
                save_every=3, progress=False, device="cpu", out_dir=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})


POOL = torch.randint(0, 256, (24, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(123))


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def film_case(fmt=torch.contiguous_format, B=2, C=12, H=6, W=10):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(B, C, H, W, generator=g) * 3 + 1).contiguous(memory_format=fmt)
    norm = GroupNorm(4, C, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(C, generator=g))
        norm.bias.copy_(0.3 * torch.randn(C, generator=g))
    scale, shift = (0.3 * torch.randn(B, 2 * C, generator=g))[:, :, None, None].chunk(2, dim=1)  # as ResBlock's
    return norm, x, scale, shift


def test_group_norm_float32_is_the_plain_ops_bit_for_bit():
    norm, x, scale, shift = film_case()
    plain = F.silu(torch.addcmul(shift, F.group_norm(x, 4, norm.weight, norm.bias, 1e-6), 1 + scale))
    assert torch.equal(norm(x, scale, shift, silu=True), plain)
    assert torch.equal(norm(x), torch.nn.GroupNorm.forward(norm, x))


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_group_norm_keeps_16_bit_and_the_memory_format_under_autocast(half):
    """(CUDA autocast runs nn.GroupNorm in float32; CPU autocast does not, so only the result is checked here.)"""
    norm, x, scale, shift = film_case(torch.channels_last)
    reference = F.silu(torch.addcmul(shift, F.group_norm(x, 4, norm.weight, norm.bias, 1e-6), 1 + scale))
    xh = x.to(HALF[half]).requires_grad_()
    with torch.autocast("cpu", dtype=HALF[half]):
        out = norm(xh, scale.to(HALF[half]), shift.to(HALF[half]), silu=True)
    assert out.dtype == HALF[half] and out.is_contiguous(memory_format=torch.channels_last)
    assert (out.float() - reference).abs().max() <= GN_ATOL[half] * reference.abs().max()
    out.float().square().mean().backward()            # and it trains in 16 bits
    assert xh.grad.dtype == HALF[half] and torch.isfinite(xh.grad).all()


@pytest.mark.parametrize("half", ["bf16", "fp16"])
@pytest.mark.parametrize("head", ["eps", "v"])
def test_unet_under_autocast_agrees_with_float32(half, head):
    model = rand_tiny(head=head)
    y_t, x_up, gamma = inputs()
    with torch.no_grad():
        reference = model(y_t, x_up, gamma)
        with torch.autocast("cpu", dtype=HALF[half]):
            out = model(y_t, x_up, gamma)
    assert out.dtype == (torch.float32 if head == "v" else HALF[half])  # the v head keeps eps_hat in float32
    assert rel(out, reference) <= UNET_REL[half]


def test_float16_model_end_to_end_sampling_on_cpu():
    """model.half() (no autocast; what a T4 runs): the network casts y_t and x_up to float16 itself and the
    equations stay in float32; the result matches the float32 model's within the fp16 tolerance."""
    model = rand_tiny(head="v")
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
    run = lambda m, **kw: super_resolve(m, x, steps=4, generator=torch.Generator().manual_seed(0),  # noqa: E731
                                        progress=False, **kw)
    reference = run(model)
    half = run(rand_tiny(head="v").half())
    autocast = run(model, autocast="fp16")
    assert half.dtype == autocast.dtype == torch.float32
    assert rel(half, reference) <= UNET_REL["fp16"] and rel(autocast, reference) <= UNET_REL["fp16"]


def test_a_float16_model_predicts_y0_as_well_as_its_own_output_allows():
    """model.half(): the U-Net casts y_t and x_up at its first convolution and its v head uses the caller's float32
    y_t, so eps^ = sqrt(1 - gamma) y_t + sqrt(gamma) F carries only F's float16 rounding. y^_0 of (8) at gamma_T
    ~ 4.4e-5, where (8) multiplies an error in eps^ by 1/sqrt(gamma_T) ~ 150, then differs from the float32
    model's by ~2e-4 (as under autocast="fp16"); before issue 18 SamplingNet rounded y_t to float16 before the
    call, and y^_0 was off by 0.14. The final images agreed within the fp16 tolerance either way."""
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1

    def first_y0_hat(model, **kw):                   # y^_0 at t = T: both runs start from the same y_T
        _, traj = super_resolve(model, x, steps=10, generator=torch.Generator().manual_seed(0), clip=False,
                                progress=False, return_trajectory=True, trajectory_steps=[10], **kw)
        return traj.y0_hat[0]
    reference = first_y0_hat(rand_tiny(head="v"))
    assert reference.abs().max() > 0.1
    for out in (first_y0_hat(rand_tiny(head="v").half()), first_y0_hat(rand_tiny(head="v"), autocast="fp16")):
        assert (out - reference).abs().max() < 2e-3
    model = rand_tiny(head="v").half()
    y_t, x_up, gamma = inputs()
    assert model(y_t, x_up, gamma).dtype == torch.float32          # the v head's eps^, in the caller's precision


def test_sampling_net_layout_dtype_and_cuda_graphs_by_device():
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, y_t, x_up, gamma):
            seen.append((y_t.is_contiguous(memory_format=torch.channels_last), y_t.dtype, gamma))
            return y_t

    y_t, x_up, _ = inputs()
    accel.SamplingNet(Spy(), "cpu")(y_t, x_up, 0.5)
    assert seen[-1][:2] == (True, torch.float32) and seen[-1][2] == 0.5  # cpu: channels_last; eager: gamma as is
    accel.SamplingNet(Spy().half(), "cpu")(y_t, x_up, 0.5)
    assert seen[-1][:2] == (True, torch.float32)                        # a float16 model casts its inputs itself
    oracle = accel.SamplingNet(lambda y, x, g: y, "cpu")                 # plain callables are left alone
    assert oracle(y_t, x_up, 0.5) is y_t
    assert accel.memory_format("cuda") == torch.contiguous_format       # measured: NCHW on the H200
    cpu = accel.SamplingNet(Spy(), "cpu", compile=True)
    assert cpu.compiled and not cpu.cuda_graphs                         # CUDA graphs never off CUDA
    assert not accel.SamplingNet(Spy(), "cpu", compile="auto").compiled  # "auto": compile on CUDA only
    cuda = accel.SamplingNet(Spy(), "cuda", compile="auto")             # needs no GPU: torch.compile is lazy
    assert cuda.compiled and cuda.cuda_graphs and cuda.tuning
    assert not accel.SamplingNet(Spy(), "cuda", compile=True, cuda_graphs=False).cuda_graphs
    with pytest.raises(ValueError, match="compile must be"):
        accel.SamplingNet(Spy(), "cpu", compile="yes")


def test_cuda_tuning_is_set_only_inside_the_block_that_asked_for_it():
    """cuDNN autotuning and TF32 matmuls are process-wide in PyTorch: sr3_mini sets them only around the calls
    that asked (a compiled CUDA sampler's network call, a CUDA training run) and puts the caller's back. Before,
    building a compiled CUDA sampler (``super_resolve(compile=...)``) switched both on for the whole process."""
    def settings():
        return torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()

    saved = settings()
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("highest")
    try:
        accel.SamplingNet(torch.nn.Conv2d(3, 3, 1), "cuda", compile="auto")   # building needs no GPU
        assert settings() == (False, "highest")
        with accel.cuda_tuning("cuda"):
            assert settings() == (True, "high")
        assert settings() == (False, "highest")
        with accel.cuda_tuning("cpu"):
            assert settings() == (False, "highest")
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def test_the_fused_group_norm_is_switched_per_network_not_per_process(monkeypatch):
    """``accel.fused_group_norm(model)`` sets ``GroupNorm.fused`` on that network's norms only; nothing reads the
    environment. The kernel is replaced here by a spy (and Triton's availability by True), so this runs anywhere:
    the switched network calls it for every norm under 16-bit inference, another network never, and a switched one
    never with autograd. Before, one module-global flag (environment SR3_MINI_FUSED_GROUPNORM) held for all."""
    from sr3_mini import kernels

    calls = []
    monkeypatch.setenv("SR3_MINI_FUSED_GROUPNORM", "1")
    monkeypatch.setattr(kernels, "usable", lambda x: True)
    monkeypatch.setattr(kernels, "group_norm_film_silu", lambda x, *a, **k: calls.append(1) or torch.zeros_like(x))
    fused, plain = rand_tiny(), rand_tiny()
    assert accel.fused_group_norm(fused) is fused
    norms = [m for m in fused.modules() if isinstance(m, GroupNorm)]
    assert norms and all(m.fused for m in norms) and not any(getattr(m, "fused") for m in plain.modules()
                                                             if isinstance(m, GroupNorm))
    y_t, x_up, gamma = inputs(batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            plain(y_t, x_up, gamma)
            assert calls == []
            fused(y_t, x_up, gamma)
            assert len(calls) == len(norms)
        fused(y_t, x_up, gamma).float().sum().backward()      # training keeps PyTorch's ops
    assert len(calls) == len(norms)
    assert "fused" not in fused.state_dict() and not any(m.fused for m in accel.fused_group_norm(fused, False)
                                                         .modules() if isinstance(m, GroupNorm))


def test_trainer_float16_autocast_with_gradient_scaling(tmp_path, monkeypatch):
    """autocast="fp16": the trainer scales the loss (torch.amp.GradScaler), unscales before clipping, and learns."""
    scales = []
    make = accel.grad_scaler

    def spy(device, autocast):
        scaler = make(device, autocast)
        scales.append(scaler)
        return scaler

    monkeypatch.setattr(accel, "grad_scaler", spy)
    cfg = train_config(tmp_path, autocast="fp16")
    before = UNet.from_preset("tiny").state_dict()
    result = train(cfg, POOL)
    assert scales and scales[0].is_enabled() and scales[0].get_scale() > 1
    after = result["model"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not accel.grad_scaler("cpu", "bf16").is_enabled()


def test_trainer_rejects_an_unknown_autocast(tmp_path):
    with pytest.raises(ValueError, match="autocast"):
        train(train_config(tmp_path, autocast="fp8"), POOL)


# --- the fused GroupNorm + FiLM + SiLU kernel, run by Triton's interpreter on CPU ---------------------------
# Triton reads TRITON_INTERPRET when it is first imported, and torch imports it early: the interpreted cases run in
# a fresh process (tests/triton_worker.py), once for the module, and each test checks its part of the report.

@pytest.fixture(scope="module")
def interpreted():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton", reason="triton (optional) is not installed: the fused kernel cannot be tested "
                                         "here (pip install triton; on CPU it runs under TRITON_INTERPRET=1)")
    worker = Path(__file__).with_name("triton_worker.py")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(worker)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=worker.parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("half", ["bf16", "fp16"])
@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
@pytest.mark.parametrize("film", [True, False])
def test_fused_kernel_agrees_with_float32(interpreted, half, fmt, film):
    r = interpreted["cases"][f"{half} {fmt} {film}"]
    assert r["dtype_kept"] and r["format_kept"]
    assert r["err"] <= GN_ATOL[half] * r["ref_max"]
    assert r["err"] <= 1.5 * r["err16"] + HALF_EPS[half] * r["ref_max"]


def test_fused_kernel_runs_in_the_unet_only_without_autograd(interpreted):
    r = interpreted["unet"]
    assert r["imported_as"] == ["sr3_mini.triton_gn"]  # an ordinary import (it used to be loaded by file path)
    assert r["calls"] == r["norms"] > 0           # every GroupNorm of the network, in one kernel each
    assert r["rel"] <= UNET_REL["bf16"]
    assert r["calls_with_grad"] == 0              # training keeps PyTorch's ops (the kernel has no backward)


# --- torch.compile ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_super_resolve_compiled_matches_eager_and_does_not_recompile():
    """compile=True (Inductor on CPU; CUDA graphs are for CUDA only) gives eager's image; a second call with
    another number of steps and another seed compiles nothing new: gamma reaches the network as float32 [B]."""
    from torch._dynamo.utils import counters

    model = rand_tiny(head="v")
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1
    run = lambda steps, seed, **kw: super_resolve(model, x, steps=steps, progress=False,  # noqa: E731
                                                  generator=torch.Generator().manual_seed(seed), **kw)
    torch.testing.assert_close(run(3, 0, compile=True), run(3, 0), rtol=1e-4, atol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    torch.testing.assert_close(run(5, 1, compile=True), run(5, 1), rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs


# --- on a CUDA GPU (benchmarks/gpu_check.sh) ------------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_compiled_sampler_with_cuda_graphs_matches_eager():
    """super_resolve(compile=True) on CUDA: Inductor + CUDA graphs, gamma float32 [B], NCHW. Same tolerance as
    the CPU compile test, in float32 convolutions; the compiled path's matmuls use TF32 (``accel.cuda_tuning``,
    inside its calls only), so the eager reference runs under the same tuning: like for like."""
    model = rand_tiny(head="v").cuda()
    x = (torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 2 - 1).cuda()
    run = lambda **kw: super_resolve(model, x, steps=4, progress=False,  # noqa: E731
                                     generator=torch.Generator().manual_seed(0), **kw)
    matmul = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        net = accel.SamplingNet(model, "cuda", compile="auto")
        assert net.compiled and net.cuda_graphs and net.tuning
        compiled = run(compile="auto")
        assert not torch.backends.cuda.matmul.allow_tf32      # the compiled sampler left the process as it was
        with accel.cuda_tuning("cuda"):
            eager = run()
        torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-4)
        bf16 = run(compile=True, autocast="bf16")
        assert rel(bf16, run(autocast="bf16")) <= UNET_REL["bf16"]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul


@pytest.mark.cuda
@pytest.mark.parametrize("half", ["bf16", "fp16"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_cuda_fused_kernel_agrees_with_float32(half, fmt):
    pytest.importorskip("triton", reason="triton (optional) is not installed")
    norm, x, scale, shift = film_case(fmt, B=4, C=64, H=32, W=32)
    accel.fused_group_norm(norm)
    norm, x, scale, shift = norm.cuda(), x.cuda(), scale.cuda(), shift.cuda()
    reference = norm(x, scale, shift, silu=True)
    with torch.no_grad():
        fused = norm(x.to(HALF[half]), scale.to(HALF[half]), shift.to(HALF[half]), silu=True)
    assert fused.dtype == HALF[half] and fused.is_contiguous(memory_format=fmt)
    assert (fused.float() - reference).abs().max() <= GN_ATOL[half] * reference.abs().max()


@pytest.mark.cuda
def test_cuda_trainer_float16_with_gradient_scaling(tmp_path):
    cfg = train_config(tmp_path, device="cuda", autocast="fp16", compile=False)
    result = train(cfg, POOL)
    assert all(torch.isfinite(v).all() for v in result["model"].state_dict().values())
