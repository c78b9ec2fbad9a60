"""The house (issue 13, item 5): modules a sitting long, no dead code, no twins, things where DESIGN.md puts them."""
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sr3_mini"


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py")))
def test_every_module_reads_in_one_sitting(module):
    assert len((PACKAGE / module).read_text().splitlines()) <= 320


@pytest.mark.parametrize("module, name", [("data", "PairDataset"), ("data", "make_pair"), ("data", "random_hflip"),
                                          ("unet", "upsample_x"), ("train", "plot_log"), ("train", "build_parser"),
                                          ("train", "main"), ("cli", "Tiled"), ("sample", "schedule_search"),
                                          ("sample", "_positive_int"), ("sr3_mini", "DATA_DIR")])
def test_dead_code_and_twins_are_gone(module, name):
    mod = importlib.import_module(module if module == "sr3_mini" else f"sr3_mini.{module}")
    assert not hasattr(mod, name)


def test_moved_names_live_in_their_rooms():
    from sr3_mini import schedule, search, tiling, viz
    from sr3_mini.cli import config_from_args, train_parser  # noqa: F401
    assert hasattr(viz, "plot_log") and hasattr(viz, "demo_figure") and hasattr(viz, "plot_schedule_search")
    assert hasattr(tiling, "Tiled") and hasattr(search, "schedule_search") and hasattr(schedule, "positive_int")
    assert not hasattr(schedule.Schedule, "from_alphas")          # the constructor takes alphas itself


def test_tqdm_disable_is_left_to_tqdm():
    """tqdm reads TQDM_DISABLE itself; the library only turns a bar off when asked (progress=False)."""
    assert not [p.name for p in PACKAGE.glob("*.py") if "TQDM_DISABLE\"" in p.read_text()
                or "environ.get(\"TQDM" in p.read_text()]
