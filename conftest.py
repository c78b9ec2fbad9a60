"""pytest set-up shared by tests/ and notebooks/ (nbval)."""
import os

# Set before any kernel starts, so notebook kernels inherit them: no progress bars in compared outputs,
# a non-interactive matplotlib, and the same thread count everywhere.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONHASHSEED", "0")

import pytest  # noqa: E402


# Under pytest-xdist (make test: -n 2 --dist loadfile) a worker that runs out of work takes the next whole file in
# the order the workers collected them; these notebooks take longest (seconds on one core, measured 2026-12-06:
# 10 164, 08 125, 07 108, 06 52, 04 26; tests/test_gpu_session.py, two dry runs of the GPU script, about 70; every
# other file is shorter), so they go first and no long file is left to run alone at the end. Only the order changes;
# every file still runs whole, its cells in order.
SLOW_FIRST = ("10_exact_posterior", "08_cascade", "07_sampling_and_evaluation", "test_gpu_session", "06_training",
              "04_reverse_process")


def pytest_configure(config):
    if getattr(config.option, "dist", "no") == "loadfile":
        config.option.loadscopereorder = False      # xdist would sort files by their number of tests instead


def _slow_rank(item) -> int:
    stem = item.path.stem if item.path is not None else ""
    return SLOW_FIRST.index(stem) if stem in SLOW_FIRST else len(SLOW_FIRST)


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):              # an xdist worker: its order is the schedule's queue
        items.sort(key=_slow_rank)                  # stable: files and cells keep their order otherwise
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (none here); run benchmarks/gpu_check.sh on one")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)


def pytest_collectstart(collector):
    # nbval: warnings on stderr differ between library versions; errors still fail (they are not stderr).
    if hasattr(collector, "skip_compare"):
        collector.skip_compare += ("stderr",)
