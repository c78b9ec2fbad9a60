"""Why are SR3's samples too alike? Measure how the network's y^_0 is calibrated per noise level.

    python scripts/diagnose_denoiser.py                                  # the bundled SR3 model
    python scripts/diagnose_denoiser.py runs/a/last.pt runs/b/last.pt     # checkpoints side by side

On training crops (never held-out photos), per gamma: slope (1 for the posterior mean; > 1 when y^_0 is shrunk),
slope above the LR Nyquist frequency, the detail energy y^_0 keeps, its MSE against Tweedie's estimate
(``sr3_mini.evaluate.denoiser_calibration``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sr3_mini import data  # noqa: E402
from sr3_mini.checkpoint import load_model  # noqa: E402
from sr3_mini.evaluate import denoiser_calibration  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*", default=[str(data.data_dir() / "sr3_mini_x4.pt")])
    p.add_argument("--crops", type=int, default=128)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pool = data.bundled_train_crops()
    idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:args.crops]
    y = data.from_uint8(pool[idx])
    for path in args.checkpoints:
        model, info = load_model(path, use_ema=True)
        loss_p = (info.get("train_config") or {}).get("loss_p")
        print(f"{path} (step {info.get('step')}, loss p = {loss_p}, head {model.config.head}):")
        print(f"{'gamma':>8}{'slope':>8}{'slope_hf':>10}{'energy_hf':>11}{'mse':>9}{'tweedie':>9}")
        for r in denoiser_calibration(model, y, scale=info["scale"]):
            print(f"{r['gamma']:>8.3f}{r['slope']:>8.3f}{r['slope_hf']:>10.3f}{r['energy_hf']:>11.3f}"
                  f"{r['mse']:>9.4f}{r['tweedie']:>9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
