"""pytest set-up shared by tests/ and notebooks/ (nbval)."""
import os

# Set before any kernel starts, so notebook kernels inherit them: no progress bars in compared outputs,
# a non-interactive matplotlib, and the same thread count everywhere.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONHASHSEED", "0")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
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
