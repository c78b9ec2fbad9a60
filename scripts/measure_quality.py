"""Models on the two held-out sets over several sampling seeds: the figures of data/MODEL_CARD.md.

    python scripts/measure_quality.py                                   # defaults on both sets, seeds 0 1 2
    python scripts/measure_quality.py --samplers ddpm:posterior:100 ddpm:paper:100 ddpm:analytic:100 ddim::100
    python scripts/measure_quality.py --checkpoint runs/sr3/last.pt --size 64 --limit 8   # a quick look at a run

Sets: ``eval`` = ``data/eval`` (8 photos, 256x256, never trained on), ``other`` = ``data/eval_other`` (16 crops of
128x128 from another photographers' collection, never trained on); ``--size`` takes centre crops instead (cheaper).
x = the anti-aliased bicubic x1/4 of each photo. Methods: bicubic, the regression baseline and SR3 under each
``--samplers`` setting (``loop:variance:steps``), each image drawn once per seed with its own generator seeded with
the seed (as ``sr3-mini evaluate`` does). Scores: ``sr3_mini.evaluate`` (PSNR, SSIM, consistency, sharpness, grain,
and diversity over the seeds), means over the set.

Appends one CSV row per (set, method, setting) to ``--csv`` (default data/quality.csv), with the SHA-256 of
both checkpoints so that a reader (notebook 07) can tell which models the rows belong to, and prints a markdown
table of the rows it wrote.
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

from sr3_mini import data  # noqa: E402
from sr3_mini.checkpoint import load_model  # noqa: E402
from sr3_mini.evaluate import DRAW_METRICS, METRICS, Sampler, evaluate, held_out, means  # noqa: E402
from sr3_mini.variance import load_table  # noqa: E402

FIELDS = ("set", "method", "sampler", "variance", "steps", "seeds", *METRICS, *DRAW_METRICS, "n_images", "size",
          "sr3_sha256", "regression_sha256")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_sampler(text: str) -> Sampler:
    """``loop:variance:steps``, e.g. ``ddpm:posterior:100`` or ``ddim::50``."""
    try:
        loop, variance, steps = text.split(":")
        return Sampler(loop, variance or "posterior", int(steps))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a sampler is loop:variance:steps (ddpm:posterior:100, ddim::50), "
                                         f"got {text!r}") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["eval", "other"],
                   help="'eval' (data/eval), 'other' (data/eval_other) or folders of images of one size")
    p.add_argument("--samplers", nargs="+", type=parse_sampler, default=[Sampler()],
                   help="loop:variance:steps (default ddpm:posterior:100, the library's default)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--size", type=int, help="centre crops of this size (default: the whole photos)")
    p.add_argument("--limit", type=int, help="at most this many images per set")
    p.add_argument("--checkpoint", default=str(data.data_dir() / "sr3_mini_x4.pt"))
    p.add_argument("--regression-checkpoint", default=str(data.data_dir() / "regression_x4.pt"))
    p.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="SR3's EMA weights (what sampling uses) or the raw weights of the last update")
    p.add_argument("--no-regression", action="store_true", help="skip the regression baseline and bicubic")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="where the models run: cpu (default), cuda, ... (the draws come "
                   "from CPU generators whatever the device, so a seed gives the same noise)")
    p.add_argument("--csv", default=str(ROOT / "data" / "quality.csv"), help="rows are appended")
    p.add_argument("--per-image", help="also append every image's row to this CSV")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sr3, info = load_model(args.checkpoint, device=args.device, use_ema=args.weights == "ema")
    if info["weights"] != ("ema" if args.weights == "ema" else "model"):
        raise SystemExit(f"{args.checkpoint} has no {args.weights} weights")
    sr3.var_y0 = load_table(args.checkpoint)
    regression = None if args.no_regression else load_model(args.regression_checkpoint, device=args.device,
                                                                 use_ema=True)[0]
    hashes = {"sr3_sha256": sha256(args.checkpoint),
              "regression_sha256": "" if args.no_regression else sha256(args.regression_checkpoint)}
    out = Path(args.csv)
    new = not out.exists()
    written = []
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for name in args.sets:
            names, y = held_out(name, args.size)
            names, y = (names[:args.limit], y[:args.limit]) if args.limit else (names, y)
            base = {"set": name, "n_images": len(y), "size": args.size or "", **hashes}
            if not args.no_regression:
                for (method, _), m in means(evaluate(y, None, regression, names=names)).items():
                    written.append({**base, "method": method, "sampler": "", "variance": "", "steps": "",
                                    "seeds": "", **_round(m)})
                    w.writerow(written[-1])
            for setting in args.samplers:
                t = time.perf_counter()
                rows = evaluate(y, sr3, None, settings=[setting], seeds=args.seeds, names=names)
                if args.per_image:
                    _append(args.per_image, [{"set": name, **r} for r in rows if r["method"] == "SR3"])
                m = means([r for r in rows if r["method"] == "SR3"])[("SR3", setting.label)]
                written.append({**base, "method": "SR3", "sampler": setting.sampler,
                                "variance": setting.variance if setting.sampler == "ddpm" else "",
                                "steps": setting.steps, "seeds": " ".join(map(str, args.seeds)), **_round(m)})
                w.writerow(written[-1])
                f.flush()
                print(f"{name} SR3 {setting.label}: {_fmt(written[-1])} ({time.perf_counter() - t:.0f} s)", flush=True)
    print(table(written))
    return 0


def _append(path, rows) -> None:
    new = not Path(path).exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


def _round(m: dict) -> dict:
    return {k: round(v, 8) for k, v in m.items()}


def _fmt(r: dict) -> str:
    return (f"PSNR {r['psnr']:.2f} SSIM {r['ssim']:.3f} consistency {float(r['consistency']) * 1e5:.2f}e-5 "
            f"sharpness {r['sharpness']:.2f} grain {r.get('grain', float('nan')):.2f} "
            f"diversity {r.get('diversity', float('nan')):.2f}")


def table(rows) -> str:
    """A markdown table of rows as written to the CSV."""
    lines = ["| set | method | sampler | PSNR (dB) | SSIM | consistency (×1e-5) | sharpness | grain | diversity |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        label = Sampler(r["sampler"], r["variance"] or "posterior", int(r["steps"])).label if r["sampler"] else "-"
        cell = lambda k, d: f"{float(r[k]):.{d}f}" if r.get(k, "") != "" else "-"
        lines.append(f"| {r['set']} | {r['method']} | {label} | {cell('psnr', 2)} | {cell('ssim', 3)} | "
                     f"{float(r['consistency']) * 1e5:.2f} | {cell('sharpness', 2)} | {cell('grain', 2)} | "
                     f"{cell('diversity', 2)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
