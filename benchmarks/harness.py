"""The measuring half of the benchmark (``run.py`` drives it, ``report.py`` writes what it measured): clocks, FLOP
and memory counters, interleaved repetitions, and ``Bench``, one network with its training and sampling step.

- ``time_it``: wall and process CPU seconds of one call (CUDA: CUDA events, synchronised);
- ``interleaved``: several callables timed in turn (A, B, A, B, ...) after warm-up, so that a machine's drift
  hits all of them alike;
- ``count_flops`` (``torch.utils.flop_counter``), ``peak_step_bytes`` (CUDA: ``max_memory_allocated``; CPU: live
  tensor bytes from the allocation events of ``torch.profiler``), ``state_bytes`` (parameters + Adam state);
- ``matmul_peak``: the bf16 matmul FLOP/s of the GPU, the FLOP-bound limit a sampling step is held against;
- ``Bench``: Algorithm 1's training step (``diffusion.q_sample`` (5) once outside the timing, forward, loss (6)
  with p = 1, backward, Adam) and the sampling step (one forward under ``torch.no_grad``) or the real sampler
  (``sample.super_resolve``, Algorithm 2) on one batch.
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from sr3_mini import diffusion as D
from sr3_mini.sample import super_resolve

def machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        found = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        model = found[0].strip() if found else model
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def time_it(device: str, fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``; CUDA: CUDA events around it, synchronised."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        c0 = time.process_time()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def interleaved(device: str, fns: dict, warmup: int, reps: int) -> dict:
    """Time ``fns`` in turn (A, B, A, B, ...) ``warmup + reps`` times; returns name -> [(wall, cpu)] timed."""
    out = {name: [] for name in fns}
    for rep in range(warmup + reps):
        for name, fn in fns.items():
            t = time_it(device, fn)
            if rep >= warmup:
                out[name].append(t)
    return out


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_step_bytes(device: str, fn) -> int:
    """The most bytes ``fn()`` holds on top of what was allocated before it (tensors only)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:  # allocations > 0, frees < 0, in time order
        live += nbytes
        peak = max(peak, live)
    return peak


def state_bytes(net, opt) -> int:
    """Parameters + Adam's moments: what the model holds between steps."""
    tensors = list(net.parameters()) + [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def matmul_peak(n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of a large bf16 matmul on the GPU: the FLOP-bound limit of this card, measured."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    times = [time_it("cuda", lambda: a @ b)[0] for _ in range(reps + 3)][3:]
    return 2 * n**3 / statistics.median(times)


class Bench:
    """One network and what it needs for a training step and a sampling step on one batch."""

    def __init__(self, net, s: dict, device: str, batch: int, generator: torch.Generator):
        self.net, self.s, self.device = net, s, device
        self.fmt = torch.channels_last if s["channels_last"] else torch.contiguous_format
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-4)  # the paper's learning rate
        shape = (batch, 3, s["size"], s["size"])
        rand = lambda: torch.randn(shape, generator=generator).to(device, memory_format=self.fmt)  # noqa: E731
        self.y_0, self.x_up, self.eps = rand(), rand(), rand()
        self.gamma = torch.rand(batch, generator=generator).to(device)
        self.y_t = D.q_sample(self.y_0, self.gamma[:, None, None, None], self.eps)  # (5), made once
        self.x_lr = torch.rand((batch, 3, s["lr"], s["lr"]), generator=generator).to(device) * 2 - 1

    def autocast(self):
        amp = self.s["amp"]
        return torch.autocast(self.device, dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    def forward(self):
        with self.autocast():
            return self.net(self.y_t, self.x_up, self.gamma)

    def train_step(self, zero_grad: bool = True):
        self.net.train()
        if zero_grad:
            self.opt.zero_grad(set_to_none=True)
        loss = D.loss(self.forward().float(), self.eps, p=1)  # (6) with p = 1, SR3's choice
        loss.backward()
        self.opt.step()

    def fwd_bwd(self):
        self.net.train()
        D.loss(self.forward().float(), self.eps, p=1).backward()
        self.net.zero_grad(set_to_none=True)

    def sample_step(self):
        self.net.eval()
        with torch.no_grad():  # as the sampler runs it: a compiled step then shares its graph with super_resolve
            self.forward()

    def sample_image(self, steps: int = 100, compile: bool = False):
        """The real sampler (Algorithm 2) for ``steps`` steps on the batch's LR images (compiled: ``compile``)."""
        self.net.eval()
        scale = self.s["size"] // self.s["lr"]
        gen = torch.Generator(self.device).manual_seed(0)
        super_resolve(self.net, self.x_lr, steps=steps, generator=gen, progress=False, autocast=self.s["amp"],
                      scale=scale, compile=compile)

    def peak_memory(self) -> int:
        self.opt.zero_grad(set_to_none=True)
        return state_bytes(self.net, self.opt) + peak_step_bytes(self.device, lambda: self.train_step(False))
