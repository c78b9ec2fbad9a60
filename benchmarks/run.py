"""Speed and memory of sr3_mini's U-Net f_theta against diffusers' ``UNet2DModel`` of the same widths.

One command: ``python benchmarks/run.py [--device cpu|cuda] [--quick]`` prints a table and writes it into its
own section of ``benchmarks/RESULTS.md`` (the other device's section is kept), plus the raw numbers as JSON in
``${OUT:-benchmarks/out}``. Both networks are built from the same ``UNetConfig`` (``peer.py``), run in the same
process, and are timed INTERLEAVED (sr3_mini, diffusers, sr3_mini, ...): medians after warm-up.

- training step: Algorithm 1's update (``diffusion.q_sample`` (5), forward, loss (6) with p = 1, backward,
  Adam); peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: live tensor bytes from the allocation
  events of ``torch.profiler``), both counted as the model's parameters + Adam state + the step's peak on top;
- sampling step: one forward under ``torch.no_grad`` (as the sampler runs it); a whole 100-step image by the real sampler
  (``sample.super_resolve``, Algorithm 2) on CUDA, extrapolated as 100 x the step time on CPU;
- FLOPs per forward (``torch.utils.flop_counter.FlopCounterMode``) and the FLOP/s achieved; on CUDA the
  bf16 matmul peak (8192^3, CUDA events), the FLOP-bound limit the sampling step is held against;
- ``sr3_mini / diffusers`` for each, and PASS/MISS for the goals in ``GOALS``;
- compiled rows (``--compile``, default on CUDA): both networks through ``accel.compile_net`` (``torch.compile``,
  ``dynamic=False``; the sampling step also as CUDA graphs, ``mode="reduce-overhead"``), the 100-step image by
  ``super_resolve(compile=True)`` for both; on CUDA also sr3_mini's eager step with the fused GroupNorm kernel;
  then each network's best path against the other's. Phases run while ``--budget`` seconds last (compiling
  ``sr3_16_128`` takes about a minute per configuration); the table is saved after each phase.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("sr3_mini") is None:  # not pip-installed (the GPU machine): use the checkout
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from peer import build_peer, num_params  # noqa: E402
from sr3_mini import accel, kernels  # noqa: E402
from sr3_mini import diffusion as D  # noqa: E402
from sr3_mini.sample import super_resolve  # noqa: E402
from sr3_mini.unet import UNet  # noqa: E402

SETTINGS = {  # lr -> hr: x is lr x lr, y is size x size
    "cpu": dict(preset="mini", size=64, lr=16, batch=16, amp=None, channels_last=False, warmup=1, reps=5),
    # NCHW on CUDA: accel.MEMORY_FORMATS (measured faster than channels_last on the H200, eager and compiled)
    "cuda": dict(preset="sr3_16_128", size=128, lr=16, batch=16, amp="bf16", channels_last=False, warmup=3,
                 reps=10),
}
GOALS = {"train_ratio": 0.8, "memory_ratio": 1.0, "sampling_peak_fraction": 0.5}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, noisier)")
    p.add_argument("--preset", help="sr3_mini preset (default: mini on CPU, sr3_16_128 on CUDA)")
    p.add_argument("--size", type=int, help="HR image size (default 64 on CPU, 128 on CUDA)")
    p.add_argument("--batch", type=int, help="batch of the training and sampling steps (default 16)")
    p.add_argument("--reps", type=int, help="timed repetitions per model (after warm-up)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time both networks compiled (default: on for cuda, off for cpu)")
    p.add_argument("--budget", type=float, default=420.0,
                   help="seconds for the whole run: later phases (compiled training, extras) are left out after it")
    p.add_argument("--no-extras", action="store_true", help="skip the sampling speed-up table")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables of both networks, to --out")
    p.add_argument("--candidate", metavar="DIR",
                   help="also time the sr3_mini package in DIR (a proposed change), interleaved with the others")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file to update")
    p.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "out"), help="folder for JSON/markdown")
    return p.parse_args(argv)


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


def matmul_peak(n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of a large bf16 matmul on the GPU: the FLOP-bound limit of this card, measured."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    times = [time_it("cuda", lambda: a @ b)[0] for _ in range(reps + 3)][3:]
    return 2 * n**3 / statistics.median(times)


def load_candidate(folder: str):
    """``UNet`` of the sr3_mini package in ``folder`` (a proposed change), imported beside the checkout's."""
    ours = lambda: [k for k in sys.modules if k == "sr3_mini" or k.startswith("sr3_mini.")]  # noqa: E731
    saved = {k: sys.modules.pop(k) for k in ours()}
    sys.path.insert(0, str(Path(folder).resolve()))
    try:
        from sr3_mini.unet import UNet as Candidate
    finally:
        sys.path.pop(0)
        for k in ours():
            del sys.modules[k]
        sys.modules.update(saved)
    return Candidate


def build(s: dict, device: str, candidate: str | None = None) -> dict:
    """name -> network: sr3_mini, diffusers of the same widths, and the candidate (if any), on ``device``."""
    fmt = torch.channels_last if s["channels_last"] else torch.contiguous_format
    with torch.device(device):  # build on the device: a 550M-parameter init on the CPU takes a while
        nets = {"sr3_mini": UNet.from_preset(s["preset"])}
        nets["diffusers"] = build_peer(nets["sr3_mini"].config)
        if candidate:
            nets["candidate"] = load_candidate(candidate)(nets["sr3_mini"].config)
    return {k: v.to(memory_format=fmt) for k, v in nets.items()}


def measure(args, save) -> dict:
    """All measurements; ``save(r)`` is called once the main table is complete and again at the end."""
    device = args.device
    s = dict(SETTINGS[device])
    for key in ("preset", "size", "batch", "reps"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.quick:
        s["warmup"], s["reps"] = 1, min(s["reps"], 2 if device == "cpu" else 5)
    s["lr"] = min(s["lr"], s["size"])
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    gen = torch.Generator().manual_seed(0)
    if args.compile is None:
        args.compile = device == "cuda"
    r = dict(settings=s, device=device, machine=machine(device), torch=torch.__version__,
             diffusers=__import__("diffusers").__version__, python=platform.python_version(),
             command="python benchmarks/run.py " + " ".join(shlex.quote(a) for a in args.argv),
             date=datetime.datetime.now().isoformat(timespec="minutes"), compile=args.compile,
             candidate=args.candidate, load=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    compare(r, args, gen)  # its networks are freed when it returns
    save(r)
    if args.compile:
        compiled(r, args, gen, save)
    if not args.no_extras and time.monotonic() < args.deadline - 30:
        if device == "cuda":
            torch.cuda.empty_cache()
        r["extras"] = speedups(device, s, gen, args.quick)
        save(r)
    return r


def compare(r: dict, args, gen) -> None:
    """sr3_mini against diffusers (and the candidate): every row of the main table, into ``r``."""
    s, device = r["settings"], r["device"]
    nets = build(s, device, args.candidate)
    benches = {k: Bench(v, s, device, s["batch"], gen) for k, v in nets.items()}
    each = lambda method: {k: getattr(b, method) for k, b in benches.items()}  # noqa: E731
    r["params"] = {k: num_params(v) for k, v in nets.items()}
    r["flops_forward"] = {k: count_flops(f) for k, f in each("forward").items()}
    r["flops_train"] = {k: count_flops(f) for k, f in each("fwd_bwd").items()}
    w, n = s["warmup"], s["reps"]
    r["train"] = interleaved(device, each("train_step"), w, n)
    r["sample"] = interleaved(device, each("sample_step"), w, max(n, 3))
    r["memory"] = {k: f() for k, f in each("peak_memory").items()}  # CPU: one slow profiled step each
    if device == "cuda":
        r["matmul_peak"] = matmul_peak()
        for f in each("sample_image").values():
            f(steps=2)  # warm-up: the sampler feeds NCHW float32 y_t, new shapes for cudnn's autotuner
        r["image_100"] = interleaved(device, each("sample_image"), 0, 1)
    if args.profile:
        r["profile"] = profile_tables(device, benches)


def compiled(r: dict, args, gen, save) -> None:
    """The compiled rows, one phase at a time while ``args.deadline`` allows, into ``r["compiled"]``, saved after
    each: (1) the sampling step of both networks compiled (as CUDA graphs on CUDA), (2) the 100-step image by
    ``super_resolve(compile=True)`` (CUDA: measured; CPU: 100 x step), (3) on CUDA with Triton, sr3_mini's eager
    step with the fused GroupNorm kernel, (4) the compiled training step. The first call of each compiled
    configuration is timed apart as its compile time."""
    s, device = r["settings"], r["device"]
    cuda, c = device == "cuda", r.setdefault("compiled", {"compile_s": {}})
    w, n = s["warmup"], max(s["reps"], 3)
    nets = build(s, device)
    benches = {k: Bench(v, s, device, s["batch"], gen) for k, v in nets.items()}

    def first_call(label, fn):
        t0 = time.monotonic()
        fn()
        if cuda:
            torch.cuda.synchronize()
        c["compile_s"][label] = time.monotonic() - t0

    for k, b in benches.items():                                  # (1) sampling step
        b.net = accel.compile_net(nets[k], cuda_graphs=cuda)
        first_call(f"{k} sampling", b.sample_step)
    c["sample"] = interleaved(device, {k: b.sample_step for k, b in benches.items()}, w, n)
    save(r)
    if cuda and time.monotonic() < args.deadline - 60:           # (2) the real sampler, compiled
        for k, b in benches.items():
            b.net = nets[k]
            first_call(f"{k} super_resolve", lambda: b.sample_image(steps=2, compile=True))
        c["image_100"] = interleaved(device, {k: lambda b=b: b.sample_image(compile=True)
                                              for k, b in benches.items()}, 0, 1)
        save(r)
    if cuda and importlib.util.find_spec("triton") and time.monotonic() < args.deadline - 30:  # (3) fused kernel
        b = Bench(nets["sr3_mini"], s, device, s["batch"], gen)

        def fused_step():
            kernels.enabled = True
            try:
                b.sample_step()
            finally:
                kernels.enabled = False
        fused_step()
        c["fused"] = interleaved(device, {"eager": b.sample_step, "fused": fused_step}, w, n)
        save(r)
    if time.monotonic() < args.deadline - (150 if cuda else 600):  # (4) training step, compiled
        for k, b in benches.items():
            b.net = accel.compile_net(nets[k])
            first_call(f"{k} training", b.train_step)
        c["train"] = interleaved(device, {k: b.train_step for k, b in benches.items()}, w, s["reps"])
        save(r)


def compiled_table(r: dict) -> str:
    """Compiled rows (like for like: both compiled the same way), then each network's best path."""
    s, c, names = r["settings"], r["compiled"], ("sr3_mini", "diffusers")
    verdict = lambda ok: "**PASS**" if ok else "**MISS**"  # noqa: E731
    ms = lambda x: f"{x * 1e3:,.1f}"  # noqa: E731
    rows = []

    def row(label, v, fmt, goal=""):
        ratio = v["sr3_mini"] / v["diffusers"] if v["diffusers"] else float("nan")
        rows.append(f"| {label} | {fmt(v['sr3_mini'])} | {fmt(v['diffusers'])} | {ratio:.2f} | "
                    f"{goal(v, ratio) if goal else ''} |")

    peak = r.get("matmul_peak")
    pct = lambda t: {k: 100 * r["flops_forward"][k] / t[k] / peak for k in names}  # noqa: E731
    peak_goal = lambda v, ratio: f"≥ 50%: {verdict(v['sr3_mini'] >= 50)}"  # noqa: E731
    best = {}
    for what in ("train", "sample", "image_100"):  # best of eager and compiled, per network
        if what in r or what in c:
            best[what] = {k: min((median(d[what][k]), tag) for d, tag in ((r, "eager"), (c, "compiled"))
                                 if what in d) for k in names}
    fused = c.get("fused")
    if fused and median(fused["fused"]) < best["sample"]["sr3_mini"][0]:
        best["sample"]["sr3_mini"] = (median(fused["fused"]), "eager, fused GroupNorm")
    compile_s = {k: sum(v for lb, v in c["compile_s"].items() if lb.startswith(k)) for k in names}
    row("first calls (compilation), s in all", compile_s, lambda x: f"{x:,.0f}")
    if "train" in c:
        row("training step, compiled, ms", {k: median(c["train"][k]) for k in names}, ms,
            lambda v, ratio: f"≤ 0.8: {verdict(ratio <= 0.8)}")
    ts = {k: median(c["sample"][k]) for k in names}
    row("sampling step, compiled" + (" (CUDA graphs)" if r["device"] == "cuda" else "") + ", ms", ts, ms)
    if peak:
        row(f"sampling, compiled, % of the bf16 matmul peak ({peak / 1e12:,.0f} TFLOP/s)", pct(ts),
            lambda x: f"{x:.1f}%", peak_goal)
    if "image_100" in c:
        row("100-step `super_resolve(compile=True)`, s per image, measured",
            {k: median(c["image_100"][k]) / s["batch"] for k in names}, lambda x: f"{x:.3f}",
            lambda v, ratio: f"≤ 0.15 s: {verdict(v['sr3_mini'] <= 0.15)}")
    else:
        row(f"100-step image, compiled, s per batch of {s['batch']} (100 x sampling step)",
            {k: 100 * ts[k] for k in names}, lambda x: f"{x:.1f}")
    tag = lambda what: " / ".join(best[what][k][1] for k in names)  # noqa: E731
    if "train" in best:
        row(f"**best** training step, ms ({tag('train')})", {k: best["train"][k][0] for k in names}, ms,
            lambda v, ratio: f"≤ 0.8: {verdict(ratio <= 0.8)}")
    row(f"**best** sampling step, ms ({tag('sample')})", {k: best["sample"][k][0] for k in names}, ms)
    if peak:
        row("**best** sampling, % of the bf16 matmul peak", pct({k: best["sample"][k][0] for k in names}),
            lambda x: f"{x:.1f}%", peak_goal)
    if "image_100" in best:
        row(f"**best** 100-step image, s per image ({tag('image_100')})",
            {k: best["image_100"][k][0] / s["batch"] for k in names}, lambda x: f"{x:.3f}",
            lambda v, ratio: f"≤ 0.15 s: {verdict(v['sr3_mini'] <= 0.15)}")
    lines = ["Compiled, like for like (both networks through `accel.compile_net`), then each network's best path "
             "(fastest of eager and compiled" + (", and for sr3_mini the fused GroupNorm kernel" if fused else "")
             + "):", "", "| | sr3_mini | diffusers | sr3_mini / diffusers | goal (for sr3_mini) |",
             "|---|---|---|---|---|", *rows]
    if "train" not in c:
        lines += ["", "The compiled training step was not reached within `--budget` (about 150 s of compilation "
                  "for the two networks): `python benchmarks/run.py --device cuda --budget 600` measures it."]
    if fused:
        lines += ["", f"sr3_mini's eager sampling step with the fused GroupNorm + FiLM + SiLU kernel: "
                  f"{ms(median(fused['fused']))} ms against {ms(median(fused['eager']))} ms without it."]
    return "\n".join(lines)


def speedups(device: str, s: dict, gen, quick: bool) -> list:
    """Sampling-step speed of sr3_mini alone: batch 1 vs 8 (CPU) or the benchmark batch (GPU), bf16 autocast,
    channels_last; none of them changes the sampler's equations. The configurations are timed interleaved; one
    whose warm-up step takes over 5 s (bf16 on a CPU without bf16 units) is timed by that one run."""
    preset, size = ("mini", 64) if device == "cpu" else (s["preset"], s["size"])
    with torch.device(device):
        nchw = UNet.from_preset(preset).eval()
        nhwc = UNet(nchw.config).eval().to(memory_format=torch.channels_last)
    nhwc.load_state_dict(nchw.state_dict())
    big = 8 if device == "cpu" else s["batch"]
    small = 1 if device == "cpu" else big
    configs = [(1, None, False), (big, None, False), (big, None, True), (small, "bf16", False), (small, "bf16", True)]
    benches = {c: Bench(nhwc if c[2] else nchw, dict(s, preset=preset, size=size, amp=c[1], channels_last=c[2]),
                        device, c[0], gen) for c in configs}
    times = {c: [time_it(device, b.sample_step)[0]] for c, b in benches.items()}  # warm-up
    slow = {c for c, t in times.items() if t[0] > 5}
    timed = interleaved(device, {c: b.sample_step for c, b in benches.items() if c not in slow}, 0, 2 if quick else 3)
    rows = []
    for (batch, amp, cl) in configs:
        t = statistics.median(times[(batch, amp, cl)] if (batch, amp, cl) in slow
                              else [w for w, _ in timed[(batch, amp, cl)]])
        rows.append(dict(batch=batch, amp=amp or "fp32", channels_last=cl, step_s=t, images_per_s=batch / t,
                         runs=1 if (batch, amp, cl) in slow else len(timed[(batch, amp, cl)])))
    return rows


def profile_tables(device: str, benches: dict) -> dict:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    out = {}
    for name, b in benches.items():
        for what, fn in (("train", b.train_step), ("sample", b.sample_step)):
            with profile(activities=acts) as prof:
                fn()
                if device == "cuda":
                    torch.cuda.synchronize()
            out[f"{name} {what}"] = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
    return out


def median(pairs, i: int = 0) -> float:
    return statistics.median(p[i] for p in pairs)


def table(r: dict) -> str:
    """The markdown table of one run: sr3_mini, diffusers, their ratio, the goal with PASS/MISS (and the
    candidate with its ratio to diffusers, when there is one)."""
    s = r["settings"]
    names = [k for k in ("sr3_mini", "diffusers", "candidate") if k in r["params"]]
    verdict = lambda ok: "**PASS**" if ok else "**MISS**"  # noqa: E731
    rows = []

    def row(label, v: dict, fmt, goal=None):
        """``goal(ratio_or_value_dict) -> str`` labels the goal column."""
        ratio = {k: v[k] / v["diffusers"] if v["diffusers"] else float("nan") for k in v}
        cells = [fmt(v["sr3_mini"]), fmt(v["diffusers"]), f"{ratio['sr3_mini']:.2f}"]
        cells += [goal(v, ratio) if goal else ""]
        if "candidate" in v:
            cells += [fmt(v["candidate"]), f"{ratio['candidate']:.2f}"]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    def ratio_goal(limit):
        return lambda v, ratio: f"≤ {limit}: {verdict(ratio['sr3_mini'] <= limit)}"

    ms, tf = (lambda x: f"{x * 1e3:,.1f}"), (lambda x: f"{x / 1e12:,.3f}")
    per = lambda d: {k: d[k] for k in names}  # noqa: E731
    row("parameters", per(r["params"]), lambda x: f"{x:,}")
    row(f"GFLOP per forward (batch {s['batch']})", per(r["flops_forward"]), lambda x: f"{x / 1e9:,.1f}")
    t = {k: median(r["train"][k]) for k in names}
    row(f"training step, ms (median of {len(r['train']['sr3_mini'])})", t, ms, ratio_goal(GOALS["train_ratio"]))
    if r["device"] == "cpu":
        row("training step, process CPU ms (steadier on a shared CPU)", {k: median(r["train"][k], 1) for k in names},
            ms, ratio_goal(GOALS["train_ratio"]))
    row("training TFLOP/s (forward + backward)", {k: r["flops_train"][k] / t[k] for k in names}, tf)
    row("training peak memory, MiB", per(r["memory"]), lambda x: f"{x / 2**20:,.0f}",
        ratio_goal(GOALS["memory_ratio"]))
    ts = {k: median(r["sample"][k]) for k in names}
    row(f"sampling step, ms (median of {len(r['sample']['sr3_mini'])})", ts, ms)
    fl = {k: r["flops_forward"][k] / ts[k] for k in names}
    row("sampling TFLOP/s", fl, tf)
    if "matmul_peak" in r:
        peak, goal = r["matmul_peak"], GOALS["sampling_peak_fraction"]
        row(f"sampling, % of the bf16 matmul peak ({peak / 1e12:,.0f} TFLOP/s)", {k: 100 * fl[k] / peak for k in names},
            lambda x: f"{x:.1f}%", lambda v, ratio: f"≥ {goal:.0%}: {verdict(v['sr3_mini'] >= 100 * goal)}")
    if "image_100" in r:
        im = {k: median(r["image_100"][k]) for k in names}
        row(f"100-step sampler (`super_resolve`), s per batch of {s['batch']}, measured", im, lambda x: f"{x:.2f}")
        row("100-step sampler, s per image, measured", {k: im[k] / s["batch"] for k in names}, lambda x: f"{x:.3f}")
    else:
        row(f"100-step image, s per batch of {s['batch']} (100 x sampling step)", {k: 100 * ts[k] for k in names},
            lambda x: f"{x:.1f}")
    head = "| | sr3_mini | diffusers | sr3_mini / diffusers | goal (for sr3_mini)"
    head += " | candidate | candidate / diffusers |" if "candidate" in names else " |"
    return head + "\n" + "|---" * (head.count("|") - 1) + "|\n" + "\n".join(rows)


def extras_table(rows: list) -> str:
    base = rows[0]["images_per_s"]
    lines = ["| batch | precision | memory format | ms per step | images·steps/s | speed-up vs batch 1 fp32 |",
             "|--:|---|---|--:|--:|--:|"]
    for e in rows:
        fmt = "channels_last" if e["channels_last"] else "NCHW"
        note = " (1 run)" if e["runs"] == 1 else ""
        lines.append(f"| {e['batch']} | {e['amp']} | {fmt} | {e['step_s'] * 1e3:,.1f}{note} | "
                     f"{e['images_per_s']:,.1f} | {e['images_per_s'] / base:.2f}x |")
    return "\n".join(lines)


def section(r: dict) -> str:
    s, dev = r["settings"], r["device"]
    title = "CPU, fp32" if dev == "cpu" else "GPU, bf16 autocast"
    fmt = "channels_last" if s["channels_last"] else "NCHW"
    mem = ("`torch.cuda.max_memory_allocated` during the step" if dev == "cuda" else
           "live tensor bytes from `torch.profiler` allocation events (`profile_memory=True`) during the step")
    load = f"; 1-min load average at start {r['load']:.1f}" if r.get("load") is not None else ""
    text = [f"## {title}", "",
            f"- date: {r['date']}; command: `{r['command']}`",
            f"- machine: {r['machine']}{load}",
            f"- torch {r['torch']}, diffusers {r['diffusers']}, python {r['python']}"
            + ("; compiled rows: `accel.compile_net` (torch.compile, dynamic=False)" if r["compile"] else ""),
            f"- setting: preset `{s['preset']}`, {s['lr']}→{s['size']}, batch {s['batch']}, "
            f"{s['amp'] or 'fp32'}, {fmt}; medians of {s['reps']} interleaved repetitions after {s['warmup']} "
            f"warm-up(s); training = forward + loss (6) + backward + Adam",
            f"- peak memory: parameters + Adam state + the peak of {mem}"]
    if r.get("candidate"):
        text += [f"- candidate: the sr3_mini package in `{r['candidate']}` (a proposed change), same config"]
    text += ["", table(r)]
    if r.get("compiled", {}).get("sample"):
        text += ["", compiled_table(r)]
    if r.get("extras"):
        preset, size = ("mini", 64) if dev == "cpu" else (s["preset"], s["size"])
        text += ["", f"Sampling speed-ups of sr3_mini alone (one sampling step, preset `{preset}`, {size}×{size}; "
                 "none of them changes the equations):", "", extras_table(r["extras"])]
    return "\n".join(text) + "\n"


HEADER = """# Benchmarks: sr3_mini vs diffusers `UNet2DModel` (same widths, blocks, attention)

Written by `python benchmarks/run.py --device cpu|cuda` (see `README.md`); each run replaces its own section
between the markers and keeps the rest of this file.
"""


def update_results(path: Path, device: str, text: str) -> str:
    begin, end = f"<!-- BEGIN {device} -->", f"<!-- END {device} -->"
    old = path.read_text() if path.exists() else HEADER
    block = f"{begin}\n{text}{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
    return new


def setup(args, argv) -> None:
    """What every benchmark does with its arguments: keep the command line, check the device, set threads."""
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU here")
    if args.threads:
        torch.set_num_threads(args.threads)


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup(args, argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(r):  # the main table first (a run cut short keeps it), then again with the extras
        new = update_results(Path(args.results), args.device, section(r))
        (out / f"bench_{args.device}.json").write_text(json.dumps(r, indent=1, default=str))
        (out / "RESULTS.md").write_text(new)
        if "profile" in r:
            (out / f"profile_{args.device}.txt").write_text("".join(f"== {k}\n{v}\n" for k, v in r["profile"].items()))

    args.deadline = time.monotonic() + args.budget
    r = measure(args, save)
    print(section(r))
    return r


if __name__ == "__main__":
    main()
