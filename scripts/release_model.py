"""Turn a training run's checkpoint into a bundled model: EMA weights in float16, the training stages it went
through (``history``), and its v(gamma) table for ``variance="analytic"`` beside it.

    python scripts/release_model.py runs/ft_l2/last.pt data/sr3_mini_x4.pt \
        --note "fine-tuned from the previous bundled model with loss (6) at p = 2" --minutes 75

The history of the checkpoint given by the run's ``--init`` (if any) is kept and this run appended as a new stage,
its steps counted on from the last stage's. Then ``scripts/estimate_variance.py`` measures v(gamma) for the new file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sr3_mini import update_checksum  # noqa: E402
from sr3_mini.checkpoint import export_for_release, load_checkpoint, save_checkpoint  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_checkpoint")
    p.add_argument("out")
    p.add_argument("--note", required=True, help="what this training stage was")
    p.add_argument("--minutes", type=float, required=True, help="wall-clock minutes of this stage")
    args = p.parse_args(argv)
    run = load_checkpoint(args.run_checkpoint)
    cfg = run.get("train_config") or {}
    history = []
    if cfg.get("init"):
        history = list(load_checkpoint(cfg["init"]).get("history") or [])
    first = (history[-1]["last_step"] + 1) if history else 1
    history.append({"first_step": first, "last_step": first + int(run["step"]) - 1, "lr": cfg.get("lr"),
                    "loss_p": cfg.get("loss_p"), "minutes": args.minutes, "note": args.note})
    tmp = Path(args.out).with_name(Path(args.out).name + ".export")
    export_for_release(args.run_checkpoint, tmp)
    state = load_checkpoint(tmp)
    state["history"] = history
    state["step"] = history[-1]["last_step"]          # updates since random weights, over every stage
    save_checkpoint(args.out, state)
    tmp.unlink()
    if update_checksum(args.out):
        print(f"updated {Path(args.out).parent / 'SHA256SUMS'}")
    for h in history:
        print(h)
    print(f"wrote {args.out}; now: python scripts/estimate_variance.py {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
