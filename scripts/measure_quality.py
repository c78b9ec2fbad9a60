"""The bundled models on the two held-out sets, over several sampling seeds: the figures of data/MODEL_CARD.md.

    python scripts/measure_quality.py --sets eval --variances paper --seeds 0 1 2     # ~30 min on one CPU core
    python scripts/measure_quality.py --sets other --variances paper posterior --seeds 0 1 2

Sets: ``eval`` = ``data/eval`` (8 photos, 256x256, never trained on), ``other`` = ``data/eval_other`` (16 crops
of 128x128 from another photographers' collection, never trained on); x = the anti-aliased bicubic x1/4 of each
photo. SR3 samples each image with its own generator seeded with the seed, as ``sr3-mini evaluate`` does. Methods: bicubic, the regression baseline, and SR3 once per
(variance, seed) with ``super_resolve``'s other defaults (DDPM, ``--steps`` steps of the training schedule,
y^_0 clipped). Scores: ``sr3_mini.metrics.scores`` (PSNR, SSIM, consistency, sharpness), means over the set.

Writes one CSV row per (set, method, variance, seed) to ``--csv`` (default data/quality_seeds.csv), with the
SHA-256 of both checkpoints so that a reader (notebook 07) can tell that the rows belong to the bundled models,
and prints a markdown table: mean and spread (min..max) over the seeds.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sr3_mini import data, load_pretrained  # noqa: E402
from sr3_mini.checkpoint import regression_predict  # noqa: E402
from sr3_mini.metrics import scores  # noqa: E402
from sr3_mini.resize import downsample, upsample  # noqa: E402
from sr3_mini.sample import super_resolve  # noqa: E402

METRICS = ("psnr", "ssim", "consistency", "sharpness")
FIELDS = ("set", "method", "variance", "seed", "steps", *METRICS, "n_images", "sr3_sha256", "regression_sha256")


def held_out(name: str) -> torch.Tensor:
    """The HR photos of a held-out set, [N, 3, H, W] in [-1, 1]."""
    if name == "eval":
        return torch.stack([y for _, y in data.bundled_eval_images()])
    folder = data.data_dir() / "eval_other"
    return torch.stack([data.load_image(p) for p in sorted(folder.glob("*.png"))])


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", choices=("eval", "other"), default=["eval", "other"])
    p.add_argument("--variances", nargs="+", choices=("paper", "posterior"), default=["paper", "posterior"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--csv", default=str(ROOT / "data" / "quality_seeds.csv"), help="rows are appended")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sr3, _, info = load_pretrained("sr3")
    regression, _, _ = load_pretrained("regression")
    root = data.data_dir()
    hashes = {"sr3_sha256": sha256(root / "sr3_mini_x4.pt"), "regression_sha256": sha256(root / "regression_x4.pt")}
    out = Path(args.csv)
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for name in args.sets:
            y = held_out(name)
            x = downsample(y, 4)
            x_up = upsample(x, 4)
            base = {"set": name, "steps": args.steps, "n_images": len(y), **hashes}
            rows = []
            with torch.no_grad():
                for method, y_hat in (("bicubic", x_up), ("regression", regression_predict(regression, x_up))):
                    rows.append({**base, "method": method, "variance": "", "seed": "",
                                 **_means(y_hat.clamp(-1, 1), y, x)})
            for variance in args.variances:
                for seed in args.seeds:
                    t = time.perf_counter()
                    # one generator per image, seeded alike, as `sr3-mini evaluate --seed` does: the seed-0 rows of
                    # the eval set are that command's SR3 figures
                    y_hat = torch.cat([super_resolve(sr3, x[i:i + 1], steps=args.steps, variance=variance,
                                                     progress=False, generator=torch.Generator().manual_seed(seed))
                                       for i in range(len(x))])
                    rows.append({**base, "method": "SR3", "variance": variance, "seed": seed,
                                 **_means(y_hat, y, x)})
                    print(f"{name} SR3 {variance} seed {seed}: {_fmt(rows[-1])} ({time.perf_counter() - t:.0f} s)",
                          flush=True)
            for r in rows:
                w.writerow(r)
            f.flush()
    print(table(out))
    return 0


def _means(y_hat, y, x) -> dict:
    return {k: round(v.mean().item(), 8) for k, v in scores(y_hat, y, x, 4).items()}


def _fmt(r: dict) -> str:
    return (f"PSNR {r['psnr']:.2f} SSIM {r['ssim']:.3f} consistency {float(r['consistency']) * 1e5:.2f}e-5 "
            f"sharpness {r['sharpness']:.2f}")


def table(path) -> str:
    """A markdown table of a CSV written by this script: one line per (set, method, variance), mean over seeds
    and min..max for SR3. The latest rows win when the same (set, method, variance, seed) appears twice."""
    latest = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            latest[(r["set"], r["method"], r["variance"], r["seed"])] = r
    groups = {}
    for (s, m, v, _), r in latest.items():
        groups.setdefault((s, m, v), []).append(r)
    lines = ["| set | method | variance | seeds | PSNR (dB) | SSIM | consistency (×1e-5) | sharpness |",
             "|---|---|---|---|---|---|---|---|"]
    for (s, m, v), rs in groups.items():
        cells = []
        for k in METRICS:
            vals = [float(r[k]) * (1e5 if k == "consistency" else 1) for r in rs]
            d = 3 if k == "ssim" else 2
            mean = sum(vals) / len(vals)
            cells.append(f"{mean:.{d}f}" + (f" ({min(vals):.{d}f}..{max(vals):.{d}f})" if len(vals) > 1 else ""))
        lines.append(f"| {s} | {m} | {v or '-'} | {len(rs) if m == 'SR3' else '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
