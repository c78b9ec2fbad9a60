"""The ×16 cascade of notebook 08 on the held-out photos, with different second stages: the figures of the model
card's section on conditioning augmentation (data/MODEL_CARD.md).

    python scripts/measure_cascade.py --stage2 bundled=data/sr3_mini_x4.pt noise=runs/stage2_noise_x4.pt \
        --cond-noise 0 0.125 --seeds 0 1 2 --threads 1 --csv data/measurements/cascade_stage2.csv

    python scripts/measure_cascade.py --stage1-error       # how far stage 1 lands from the truth, on training photos

Stage 1 is the bundled SR3 model (16 -> 64, 50 steps), run once per seed and shared by every second stage; each
second stage (64 -> 256, 25 steps) runs on it at each pair of --cond-noise and --cond-blur levels (conditioning
augmentation at sampling, cond_aug.py). Rows: bicubic x16, stage 1 then bicubic x4, and each cascade; metrics
against the 256x256 photos of data/eval, means over photos (and seeds). Stage 1 and stage 2 draw from one generator
per seed and photo.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sr3_mini  # noqa: E402
from sr3_mini.checkpoint import load_model  # noqa: E402
from sr3_mini.data import bundled_eval_images  # noqa: E402
from sr3_mini.evaluate import held_out  # noqa: E402
from sr3_mini.metrics import scores as metric_scores  # noqa: E402
from sr3_mini.resize import downsample, upsample  # noqa: E402
from sr3_mini.sample import super_resolve  # noqa: E402

FIELDS = ("method", "stage2", "cond_noise", "cond_blur", "seeds", "psnr", "ssim", "sharpness", "consistency",
          "n_images")


def scores(out, y, x) -> dict:
    return metric_scores(out, y, x, 16)              # x is the x16 input: consistency downsamples by 16


def stage1_error(steps: int) -> int:
    """Stage 1's RMS error against the true 64x64 image, in [-1, 1] units, on 256x256 centre crops of every third
    training photo (8 of them), seed 0: the size of what a second stage is fed wrong."""
    sr3 = sr3_mini.load_pretrained("sr3")[0]
    names, y = held_out(str(ROOT / "data" / "train"), 256)             # centre crops of every training photo
    names, y = names[::3][:8], y[::3][:8]
    out = super_resolve(sr3, downsample(y, 16), steps=steps, generator=torch.Generator().manual_seed(0),
                        progress=False)
    err = out - downsample(y, 4)
    per = err.pow(2).mean(dim=(1, 2, 3)).sqrt()
    print(f"stage 1 ({steps} steps) on {len(y)} training photos: RMS error {err.pow(2).mean().sqrt():.3f} "
          f"(per photo {', '.join(f'{v:.3f}' for v in per)}); photos: {', '.join(names)}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage2", nargs="+", default=[], help="NAME=CHECKPOINT, one per second stage")
    p.add_argument("--stage1-error", action="store_true",
                   help="only the RMS error of stage 1 on centre crops of 8 training photos (the sampling level of "
                        "conditioning augmentation is set to it; held-out photos are not used to choose it)")
    p.add_argument("--cond-noise", nargs="+", type=float, default=[0.0], help="levels s of x + s eps for stage 2")
    p.add_argument("--cond-blur", nargs="+", type=float, default=[0.0], help="blur levels b (pixels of x) for stage 2")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", nargs=2, type=int, default=[50, 25], metavar=("STAGE1", "STAGE2"))
    p.add_argument("--threads", type=int)
    p.add_argument("--csv", help="rows are appended")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stage1_error:
        return stage1_error(args.steps[0])
    if not args.stage2:
        raise SystemExit("give --stage2 NAME=CHECKPOINT ... (or --stage1-error)")
    try:
        stage2 = {name: load_model(path, use_ema=True)[0] for name, path in (s.split("=", 1) for s in args.stage2)}
    except ValueError:
        raise SystemExit("--stage2 takes NAME=CHECKPOINT") from None
    sr3 = sr3_mini.load_pretrained("sr3")[0]
    names, ys = zip(*bundled_eval_images())
    y = torch.stack(ys)                                             # [8, 3, 256, 256]
    x = downsample(y, 16)
    runs = {("bicubic x16", "", "", ""): [scores(upsample(x, 16).clamp(-1, 1), y, x)]}
    levels = [(s, b) for s in args.cond_noise for b in args.cond_blur]
    for seed in args.seeds:
        t = time.perf_counter()
        gens = [torch.Generator().manual_seed(1000 * seed + i) for i in range(len(x))]
        s1 = torch.cat([super_resolve(sr3, x[i:i + 1], steps=args.steps[0], generator=gens[i], progress=False)
                        for i in range(len(x))])
        runs.setdefault(("stage 1, then bicubic x4", "", "", ""), []).append(scores(upsample(s1, 4).clamp(-1, 1), y, x))
        states = [g.get_state() for g in gens]
        for name, model in stage2.items():
            for s, b in levels:
                for g, st in zip(gens, states):
                    g.set_state(st)                                 # every stage 2 continues the same streams
                out = torch.cat([super_resolve(model, s1[i:i + 1], steps=args.steps[1], generator=gens[i],
                                               cond_noise=s, cond_blur=b, progress=False) for i in range(len(x))])
                runs.setdefault(("cascade", name, s, b), []).append(scores(out, y, x))
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for (method, name, s, b), per_seed in runs.items():
        m = {k: torch.stack([r[k] for r in per_seed]).mean().item() for k in per_seed[0]}
        rows.append({"method": method, "stage2": name, "cond_noise": s, "cond_blur": b,
                     "seeds": " ".join(map(str, args.seeds)) if method != "bicubic x16" else "",
                     **{k: round(v, 8) for k, v in m.items()}, "n_images": len(x)})
    print(f"{'method':26s} {'stage 2':10s} {'s':>5s} {'b':>5s} {'PSNR':>6s} {'SSIM':>6s} {'sharp':>6s} "
          f"{'consist (1e-5)':>14s}")
    for r in rows:
        print(f"{r['method']:26s} {r['stage2']:10s} {str(r['cond_noise']):>5s} {str(r['cond_blur']):>5s} "
              f"{r['psnr']:6.2f} {r['ssim']:6.3f} {r['sharpness']:6.3f} {1e5 * r['consistency']:14.2f}")
    if args.csv:
        new = not Path(args.csv).exists()
        with open(args.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
