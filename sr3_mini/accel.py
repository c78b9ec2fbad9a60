"""Running f_theta fast without changing an equation: compilation, CUDA graphs, memory format, float16.

SR3's equations do not care how the network is executed; the GPU's time does (benchmarks/RESULTS.md). This
module holds every such choice, so that ``sample.super_resolve`` and the trainer each take one ``compile`` option:

- ``compile_net``: ``torch.compile`` with ``dynamic=False``. A compiled forward is specialised on the shape, dtype
  and strides of its inputs; when one changes it recompiles, and after a shape change PyTorch's automatic dynamic
  shapes switch to slower shape-generic kernels. ``SamplingNet`` therefore always hands the network the same
  kinds of tensors: gamma as float32 ``[B]`` (the sampler's float64 or a Python float each cost a recompile,
  measured on CPU), y_t and x_up in one memory format. Compiled graphs are cached by PyTorch per code object, so
  a second ``super_resolve(compile=True)`` on a model of the same configuration does not compile again.
- CUDA graphs (``mode="reduce-overhead"``): the sampling loop calls the network T times on fixed shapes, so one
  recorded graph replays each step without Python or launch overhead (GPU only; the eager step was launch-bound).
- ``memory_format``: per device, by measurement (``MEMORY_FORMATS``).
- ``cuda_tuning``: cuDNN autotuning and TF32 matmuls on CUDA. Both are process-wide switches of PyTorch, so they
  are set only inside the block that asked for them (a compiled sampler's network call, a training run) and
  restored after it: calling the library never changes the rest of the process.
- ``fused_group_norm``: the fused GroupNorm + FiLM + SiLU Triton kernel (``kernels.py``), switched per network.
- ``grad_scaler``: float16 autocast (T4-class GPUs have no bf16) needs loss scaling so that small gradients
  do not flush to zero in float16: ``torch.amp.GradScaler``.

``compile`` defaults to off everywhere: on an H200 the bare compiled forward ran 2.1x faster than eager
(benchmarks/RESULTS.md, "The GPU fast path") but compiling took 40-70 s per configuration, which one 100-step
image does not repay; and this module's compiled paths are tested on CPU only, not yet timed on a GPU.
``"auto"``: compile on CUDA only. Relies on ``blocks`` (for ``fused_group_norm``) and nothing else in sr3_mini.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["AUTOCAST", "MEMORY_FORMATS", "memory_format", "cuda_tuning", "fused_group_norm", "wants_compile",
           "compile_net", "SamplingNet", "grad_scaler"]

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}

# The layout the network runs in, per device type, for sampling (measured, one process, interleaved):
# - cuda: NCHW. H200, sr3_16_128 batch 16, one eager bf16 step: 54.9 ms NCHW vs 64.7 ms channels_last; fp32
#   59.8 vs 71.3 ms (benchmarks/RESULTS.md, "The GPU fast path"); the compiled forward was measured in NCHW.
# - cpu: channels_last. mini preset, fp32, 64x64: batch 8 142 ms vs 178 ms per step (benchmarks/RESULTS.md); the
#   bundled model's 50-step sampler 2.85 s vs 3.62 s per image. oneDNN convolutions run without layout reorders.
# Other devices (mps, ...): the input's own layout.
MEMORY_FORMATS = {"cuda": torch.contiguous_format, "cpu": torch.channels_last}


def memory_format(device) -> torch.memory_format:
    """The memory format f_theta runs in on ``device`` (a torch.device or its type): ``MEMORY_FORMATS``."""
    return MEMORY_FORMATS.get(torch.device(device).type, torch.preserve_format)


@contextlib.contextmanager
def cuda_tuning(device):
    """Inside the block, on CUDA only: cuDNN picks the fastest convolution per shape (it times them on first use)
    and float32 matmuls may use TF32 (``torch.set_float32_matmul_precision("high")``). Both settings are global
    to the process in PyTorch; the previous values are restored on leaving the block. Elsewhere: nothing."""
    if torch.device(device).type != "cuda":
        yield
        return
    benchmark, precision = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark
        torch.set_float32_matmul_precision(precision)


def fused_group_norm(model: torch.nn.Module, on: bool = True) -> torch.nn.Module:
    """Switch the fused GroupNorm + FiLM + SiLU kernel (``kernels.py``) on (or off) for every ``blocks.GroupNorm``
    of ``model`` (wrappers included) and of no other network. It then runs where it can: 16-bit activations,
    no autograd, CUDA (or Triton's interpreter), Triton installed; elsewhere the PyTorch ops. Returns ``model``."""
    from sr3_mini.blocks import GroupNorm

    for module in model.modules():
        if isinstance(module, GroupNorm):
            module.fused = on
    return model


def wants_compile(compile, device) -> bool:
    """``compile``: True, False or "auto" (CUDA only) -> whether to compile on ``device``."""
    if compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
    return compile is True or (compile == "auto" and torch.device(device).type == "cuda")


def compile_net(net: torch.nn.Module, cuda_graphs: bool = False):
    """``torch.compile(net)`` specialised to fixed shapes (``dynamic=False``: no shape-generic kernels after a
    recompile), recorded as CUDA graphs when ``cuda_graphs`` (``mode="reduce-overhead"``, CUDA only)."""
    return torch.compile(net, dynamic=False, mode="reduce-overhead" if cuda_graphs else None)


class SamplingNet:
    """f_theta for the sampling loop: ``SamplingNet(model, device, compile)(y_t, x_up, gamma) -> eps_hat``.

    Calls ``model`` with y_t and x_up in ``memory_format(device)`` and in the caller's dtype (a float16 model
    casts them itself, and its v head keeps the float32 y_t: ``unet.UNet.forward``), gamma as float32 ``[B]`` on
    the device when compiled, compiled when ``wants_compile(compile, device)``, and on CUDA then replayed as a
    CUDA graph unless ``cuda_graphs=False`` (a compiled CUDA call runs inside ``cuda_tuning``). With CUDA graphs
    each call's output lives in the graph's memory and the next call overwrites it; ``sample.refine`` copies every
    eps_hat it is handed, so a sampler may keep it. Other callables than ``torch.nn.Module`` (the tests' oracles)
    are called as they are.
    """

    def __init__(self, model, device, compile=False, cuda_graphs: bool = True):
        device = torch.device(device)
        self.model = model
        is_module = isinstance(model, torch.nn.Module)
        self.compiled = wants_compile(compile, device) and is_module
        self.cuda_graphs = self.compiled and cuda_graphs and device.type == "cuda"
        self.memory_format = memory_format(device) if is_module else torch.preserve_format
        self.tuning = self.compiled and device.type == "cuda"
        self.net = compile_net(model, self.cuda_graphs) if self.compiled else model

    def __call__(self, y_t: torch.Tensor, x_up: torch.Tensor, gamma) -> torch.Tensor:
        if self.memory_format is not torch.preserve_format:
            y_t, x_up = (t.contiguous(memory_format=self.memory_format) for t in (y_t, x_up))
        if self.compiled:  # one dtype and shape for gamma: no recompile (see the module docstring)
            gamma = torch.as_tensor(gamma, device=y_t.device).to(torch.float32).reshape(-1).expand(y_t.shape[0])
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: the last output may be reused
        if not self.tuning:
            return self.net(y_t, x_up, gamma)
        with cuda_tuning(y_t.device):
            return self.net(y_t, x_up, gamma)


def grad_scaler(device, autocast: str | None) -> torch.amp.GradScaler:
    """Loss scaling for float16 autocast (``autocast == "fp16"``), a no-op otherwise: ``scale(loss).backward()``,
    ``unscale_(opt)`` before clipping, ``step(opt)`` (skipped when a gradient overflowed), ``update()``.
    float16's smallest normal number is 6e-5: without scaling, small gradients would flush to zero."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=autocast == "fp16")
