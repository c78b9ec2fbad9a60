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

This file drives the phases (settings, networks, the candidate package, compiled and extra rows); the timing
harness is ``harness.py``, the tables and the editing of ``RESULTS.md`` are ``report.py``.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
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

from harness import Bench, count_flops, interleaved, machine, matmul_peak, time_it  # noqa: E402
from peer import build_peer, num_params  # noqa: E402
from report import section, update_results  # noqa: E402
from sr3_mini import accel  # noqa: E402
from sr3_mini.unet import UNet  # noqa: E402

SETTINGS = {  # lr -> hr: x is lr x lr, y is size x size
    "cpu": dict(preset="mini", size=64, lr=16, batch=16, amp=None, channels_last=False, warmup=1, reps=5),
    # NCHW on CUDA: accel.MEMORY_FORMATS (measured faster than channels_last on the H200, eager and compiled)
    "cuda": dict(preset="sr3_16_128", size=128, lr=16, batch=16, amp="bf16", channels_last=False, warmup=3,
                 reps=10),
}


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
            accel.fused_group_norm(b.net)
            try:
                b.sample_step()
            finally:
                accel.fused_group_norm(b.net, False)
        fused_step()
        c["fused"] = interleaved(device, {"eager": b.sample_step, "fused": fused_step}, w, n)
        save(r)
    if time.monotonic() < args.deadline - (150 if cuda else 600):  # (4) training step, compiled
        for k, b in benches.items():
            b.net = accel.compile_net(nets[k])
            first_call(f"{k} training", b.train_step)
        c["train"] = interleaved(device, {k: b.train_step for k, b in benches.items()}, w, s["reps"])
        save(r)


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
