"""The writing half of the benchmark: the markdown tables of one run (``section``) and its own section of
``RESULTS.md`` (``update_results``), between ``<!-- BEGIN device -->`` and ``<!-- END device -->`` markers; the
rest of the file is kept. ``GOALS`` are printed as PASS/MISS: sr3_mini's training step at most 0.8 x diffusers',
peak memory at most diffusers', and on the GPU sampling at >= 50 % of the measured bf16 matmul peak.
"""
from __future__ import annotations

import statistics
from pathlib import Path

GOALS = {"train_ratio": 0.8, "memory_ratio": 1.0, "sampling_peak_fraction": 0.5}


def median(pairs, i: int = 0) -> float:
    """Median of element ``i`` of ``harness.interleaved``'s (wall, cpu) pairs."""
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
