"""Measure a checkpoint's v(gamma) for the KL-optimal reverse variance (``variance="analytic"``) and store it beside
the checkpoint as ``<checkpoint>.variance.json``, tied to its SHA-256.

    python scripts/estimate_variance.py                          # the bundled SR3 model
    python scripts/estimate_variance.py runs/sr3/last.pt --crops 256

v(gamma) = the per-pixel mean of E||y_0 - y^_0||^2 of the network's EMA weights on training crops (the bundled
crops, never the held-out photos), y^_0 clamped as ``super_resolve`` clamps it; 33 noise levels, log-SNR -10..10.
Its line in the SHA256SUMS beside the checkpoint (if any) is replaced.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sr3_mini import data, update_checksum  # noqa: E402
from sr3_mini.checkpoint import load_model  # noqa: E402
from sr3_mini.evaluate import estimate_var_y0  # noqa: E402
from sr3_mini.variance import save_table  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(data.data_dir() / "sr3_mini_x4.pt"))
    p.add_argument("--crops", type=int, default=128, help="training crops to measure on (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, info = load_model(args.checkpoint, use_ema=True)
    pool = data.bundled_train_crops()
    idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed))[:args.crops]
    t = time.perf_counter()
    table = estimate_var_y0(model, data.from_uint8(pool[idx]), scale=info["scale"],
                            generator=torch.Generator().manual_seed(args.seed))
    path = save_table(table, args.checkpoint)
    for lam, v in zip(table.log_snr[::4], table.var_y0[::4]):
        print(f"log-SNR {lam:6.1f}  v = {v:.4g}")
    print(f"wrote {path} ({time.perf_counter() - t:.0f} s)")
    if update_checksum(path):                            # load_pretrained checks the table too
        print(f"updated {path.parent / 'SHA256SUMS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
