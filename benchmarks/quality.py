"""Sampling speed-ups that keep quality: each one's effect on speed *and* on the held-out metrics.

    python benchmarks/quality.py                    # the bundled SR3 model, CUDA if there is a GPU, else CPU
    python benchmarks/quality.py --size 64 --quick  # smaller crops, fewer settings (a smoke run)

The bundled model super-resolves the held-out photos (``data/eval``, centre crops of ``--size``, x4) once per
setting; every setting starts from the same seed. Reported per setting: seconds per image (wall clock, all
images in one batch unless the setting says otherwise) and the means of PSNR, SSIM, consistency and sharpness
(``sr3_mini.metrics``). The reference is the library's default: DDPM (Algorithm 2), 100 steps of the training
schedule respaced, fp32, NCHW. The "searched" schedule is tuned with ``sample.schedule_search`` on crops of the
*training* photos (never the held-out ones), by consistency, then scored on the held-out set like the others.

Writes a markdown table into ``benchmarks/RESULTS.md`` between ``<!-- BEGIN quality_<device> -->`` markers
(the rest of the file is kept) and prints it.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import sr3_mini  # noqa: E402
from run import machine, setup, update_results  # noqa: E402  (benchmarks/run.py)
from sr3_mini import Schedule  # noqa: E402
from sr3_mini.checkpoint import load_model  # noqa: E402
from sr3_mini.data import bundled_eval_images, bundled_train_crops, from_uint8  # noqa: E402
from sr3_mini.metrics import scores  # noqa: E402
from sr3_mini.resize import downsample  # noqa: E402
from sr3_mini.sample import super_resolve  # noqa: E402
from sr3_mini.evaluate import schedule_search  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint", help="SR3 checkpoint (default: the bundled model)")
    p.add_argument("--size", type=int, default=128, help="HR centre-crop size of the held-out photos (default 128)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="fewer settings")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file to update")
    return p.parse_args(argv)


def held_out(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y_0): centre crops of the held-out photos and their LR inputs."""
    ys = []
    for _, im in bundled_eval_images():
        H, W = im.shape[-2:]
        if min(H, W) < size:
            raise ValueError(f"--size {size} is larger than a held-out photo ({H}x{W})")
        top, left = (H - size) // 2, (W - size) // 2
        ys.append(im[:, top:top + size, left:left + size])
    y = torch.stack(ys)
    return downsample(y, 4), y


def search_schedule(model, device: str, steps: int, size: int = 64) -> tuple[Schedule, dict]:
    """The paper tunes its inference schedule; here a linear schedule of ``steps`` steps, its beta_T searched on
    16 crops of the training photos (64x64, or their centre ``size`` x ``size`` when smaller) by consistency."""
    crops = from_uint8(bundled_train_crops()[torch.linspace(0, 3071, 16).long()])
    s = min(size, crops.shape[-1])
    top = (crops.shape[-1] - s) // 2
    crops = crops[..., top:top + s, top:top + s]
    x, y = downsample(crops, 4), crops
    rows = schedule_search(model, (x.to(device), y.to(device)), [steps], [0.05, 0.1, 0.2, 0.3, 0.5],
                           metric="consistency", generator=_generator(device))
    best = rows[0]
    return Schedule.linear(steps, 1e-4, best["beta_end"]), best


def _generator(device: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(0)


def score(y_hat: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> dict:
    """Means over the images of ``metrics.scores``."""
    return {k: v.mean().item() for k, v in scores(y_hat.float().cpu(), y.float().cpu(), x.float().cpu()).items()}


def run_setting(model, x, y, device, schedule, sampler="ddpm", batch=None, channels_last=False, autocast=None):
    """Super-resolve all of x with one setting; returns (seconds per image, scores)."""
    net = model.to(memory_format=torch.channels_last) if channels_last else model.to(memory_format=torch.contiguous_format)
    xs = x.to(device)
    if channels_last:
        xs = xs.contiguous(memory_format=torch.channels_last)
    batch = batch or len(xs)
    gen = _generator(device)
    outs = []
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, len(xs), batch):
        outs.append(super_resolve(net, xs[i:i + batch], schedule=schedule, generator=gen, sampler=sampler,
                                  autocast=autocast, progress=False))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / len(xs)
    return seconds, score(torch.cat(outs), y, x)


def settings(train: Schedule, device: str, quick: bool, searched: Schedule | None) -> list:
    """(label, steps, kwargs of run_setting); the first is the reference."""
    rows = [("DDPM, 100 steps (default)", 100, dict(schedule=train.respaced(100))),
            ("DDPM, 50 steps", 50, dict(schedule=train.respaced(50))),
            ("DDPM, 25 steps", 25, dict(schedule=train.respaced(25))),
            ("DDIM, 50 steps", 50, dict(schedule=train.respaced(50), sampler="ddim")),
            ("DDIM, 25 steps", 25, dict(schedule=train.respaced(25), sampler="ddim"))]
    if searched is not None:
        rows.append((f"DDPM, 25 steps, searched schedule (beta_T = {1 - searched.alpha(searched.T).item():g})", 25,
                     dict(schedule=searched)))
    rows += [("DDPM, 50 steps, channels_last", 50, dict(schedule=train.respaced(50), channels_last=True)),
             ("DDPM, 50 steps, one image at a time", 50, dict(schedule=train.respaced(50), batch=1))]
    if device == "cuda":
        rows.append(("DDPM, 50 steps, bf16 autocast", 50, dict(schedule=train.respaced(50), autocast="bf16")))
    if quick:
        rows = [r for r in rows if "25 steps" in r[0] or "default" in r[0]]
    return rows


def table(results: list, args, n_images: int, note: str) -> str:
    ref_s = results[0][2]
    lines = [f"## Sampling speed-ups and what they cost in quality ({args.device})", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}; command: "
             f"`python benchmarks/quality.py {' '.join(args.argv)}`".rstrip(),
             f"- machine: {machine(args.device)}; torch {torch.__version__}",
             f"- model: {args.model_name}; {n_images} held-out photos (`data/eval`), centre crops "
             f"{args.size}x{args.size}, x4 (inputs {args.size // 4}x{args.size // 4}); seed 0 for every setting",
             "- consistency: MSE (x 1e-5) between x and the downsampled output, on [0, 1]; sharpness: the output's "
             "high-frequency share over the photo's (1 = as sharp as the photo)", ""]
    if note:
        lines += [note, ""]
    lines += ["| setting | steps | s / image | speed-up | PSNR (dB) | SSIM | consistency | sharpness |",
              "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for label, steps, sec, m in results:
        lines.append(f"| {label} | {steps} | {sec:.3f} | {ref_s / sec:.2f}x | {m['psnr']:.2f} | {m['ssim']:.3f} "
                     f"| {1e5 * m['consistency']:.1f} | {m['sharpness']:.2f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> list:
    args = parse_args(argv)
    setup(args, argv)
    if args.checkpoint:
        model, info = load_model(args.checkpoint, device=args.device)
        train = Schedule.from_dict(info["schedule"])      # every checkpoint carries its training schedule
        args.model_name = args.checkpoint
    else:
        model, train, info = sr3_mini.load_pretrained("sr3", device=args.device)
        args.model_name = f"bundled `sr3_mini_x4.pt` ({info['step']:,} updates, head {model.config.head})"
    x, y = held_out(args.size)
    searched, best = search_schedule(model, args.device, 25, args.size)
    note = (f"Searched schedule: linear, 25 steps, beta from 1e-4 to {best['beta_end']:g} (gamma_T = "
            f"{best['gamma_T']:.2e}), the most consistent of beta_T in {{0.05, 0.1, 0.2, 0.3, 0.5}} on 16 "
            f"training crops of {min(args.size, 64)}x{min(args.size, 64)}.")
    if args.device == "cpu":
        note += " bf16 autocast is left out on the CPU: 3-17x slower than fp32 on CPUs without bf16 units (see above)."
    results = []
    for label, steps, kw in settings(train, args.device, args.quick, searched):
        sec, m = run_setting(model, x, y, args.device, **kw)
        results.append((label, steps, sec, m))
        print(f"{label}: {sec:.3f} s/image, PSNR {m['psnr']:.2f}, consistency {1e5 * m['consistency']:.1f}",
              flush=True)
    text = table(results, args, len(x), note)
    update_results(Path(args.results), f"quality_{args.device}", text)
    print(text)
    return results


if __name__ == "__main__":
    main()
