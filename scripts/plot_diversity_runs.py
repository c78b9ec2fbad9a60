"""Every CPU training run of issue #17 in one figure: the diversity of its draws (the library's default sampler,
DDPM 100 steps with the posterior variance) against its updates, on both held-out sets, beside the goal band
[0.7, 1.3]. Reads the quick-protocol CSVs of data/measurements/ (8 centre crops of 64x64 per set, seeds 0 1 2;
the model card says which command wrote each) and writes data/measurements/diversity_by_run.png.

    python scripts/plot_diversity_runs.py
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MEASURED = ROOT / "data" / "measurements"

# (CSV, its model label, run, updates). Fine-tunes of the bundled model count their updates from it; the L2 run's
# continuations (log-SNR, bound, lr 5e-5) go on from its 10,400; the wide network counts its own.
POINTS = [
    ("l1_vs_l2_quick.csv", "bundled (19,365 L1 updates)", "L2 fine-tune of the bundled model", 0),
    ("l1_vs_l2_quick.csv", "+2,000 L2 updates", "L2 fine-tune of the bundled model", 2000),
    ("l1_vs_l2_quick.csv", "+4,000 L2 updates", "L2 fine-tune of the bundled model", 4000),
    ("l1_vs_l2_quick.csv", "+10,400 L2 updates", "L2 fine-tune of the bundled model", 10400),
    ("l1_vs_l2_quick.csv", "+2,000 L1 updates", "L1 (the bundled recipe), continued", 2000),
    ("log_snr_embedding_quick.csv", "L2 run at 10,400 + 2,000 log-SNR updates", "+ log-SNR embedding", 12400),
    ("log_snr_embedding_quick.csv", "L2 run at 10,400 + 4,000 log-SNR updates", "+ log-SNR embedding", 14400),
    ("bound_weighting_quick.csv", "L2 run at 10,400 + 2,000 updates with loss_weighting=bound",
     "+ the bound's weighting", 12400),
    ("bound_weighting_quick.csv", "L2 run at 10,400 + 9,940 updates with loss_weighting=bound",
     "+ the bound's weighting", 20340),
    ("l2_lower_lr_quick.csv", "L2 run at 10,400 + 3,600 updates at lr 5e-5", "+ lr 5e-5", 14000),
    ("l2_lower_lr_quick.csv", "L2 run at 10,400 + 11,975 updates at lr 5e-5", "+ lr 5e-5", 22375),
]
WIDE = ("wide_full_res_quick.csv", "wide at full resolution (32 channels), its own updates")
SETS = {"other": "other origin (data/eval_other)", "eval": "data/eval"}


def rows(name: str) -> list:
    path = MEASURED / name
    return list(csv.DictReader(open(path))) if path.exists() else []


def default_sampler(r: dict) -> bool:
    return r["method"] == "SR3" and r["sampler"] == "ddpm" and r["variance"] == "posterior" and r["steps"] == "100"


def series() -> dict:
    """{run: {set: [(updates, diversity), ...]}} from the CSVs (points whose CSV or row is missing are left out)."""
    out: dict = {}
    for name, label, run, x in POINTS:
        for r in rows(name):
            if r["model"] == label and default_sampler(r) and r["set"] in SETS:
                out.setdefault(run, {}).setdefault(r["set"], []).append((x, float(r["diversity"])))
    base = out.get("L2 fine-tune of the bundled model", {})
    starts = {"L1 (the bundled recipe), continued": 0, "+ log-SNR embedding": 10400, "+ the bound's weighting": 10400,
              "+ lr 5e-5": 10400}
    for run, start in starts.items():                                      # drawn from where they began
        for key, pts in out.get(run, {}).items():
            pts += [p for p in base.get(key, []) if p[0] == start]
    for r in rows(WIDE[0]):
        if default_sampler(r) and r["set"] in SETS:
            x = int(r["model"].split(" updates")[0].rsplit(" ", 1)[-1].replace(",", ""))  # "..., 11,364 updates..."
            out.setdefault(WIDE[1], {}).setdefault(r["set"], []).append((x, float(r["diversity"])))
    return out


def main() -> int:
    data = series()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, (key, title) in zip(axes, SETS.items()):
        ax.axhspan(0.7, 1.3, color="tab:green", alpha=0.12, label="goal: diversity in [0.7, 1.3]")
        for run, per_set in data.items():
            pts = sorted(per_set.get(key, []))
            if pts:
                ax.plot(*zip(*pts), "o-", ms=4, label=run)
        ax.set_title(title)
        ax.set_xlabel("updates of the run")
        ax.set_ylim(0.2, 1.35)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("diversity of SR3's draws (1 = exact sampler)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False)
    fig.suptitle("Every CPU run of issue #17 stays below the goal (DDPM 100, posterior variance; 8 crops, 3 seeds)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    out = MEASURED / "diversity_by_run.png"
    fig.savefig(out, dpi=90)
    print(f"wrote {out} ({sum(len(p) for s in data.values() for p in s.values())} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
