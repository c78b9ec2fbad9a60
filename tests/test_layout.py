"""The shape of the house (the repository's design note and issue 18): guards of the design, not of its history.
Imports are read with ``ast`` from the source of ``sr3_mini/``, function-level imports included (a lazy import is
still an arrow): no circle; the maths (``schedule``, ``diffusion``) stands alone; the network never sees the
schedule or the sampler; modules a sitting long; ipywidgets never imported with the library."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sr3_mini"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
MAX_LINES = 400                 # "~400 lines is a hint to look": past it, a module is split by concept or trimmed
OVER: dict = {}


def imports(module: str) -> set:
    """The modules of sr3_mini that ``module`` imports anywhere in its source (module names, no package)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1 or base == "sr3_mini" or base.startswith("sr3_mini."):
                base = base.removeprefix("sr3_mini").lstrip(".")
                # `from . import diffusion` and `from sr3_mini import accel` name modules; `from .x import y`, x
                found |= {base.split(".")[0]} if base else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sr3_mini.")}
    return {m for m in found if m in MODULES and m != module}


def third_party(module: str) -> set:
    """Every dotted module name outside sr3_mini that ``module`` imports anywhere (``torch.nn.functional``, ...)."""
    names = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if not n.startswith("sr3_mini")}


def reachable(module: str) -> set:
    seen, todo = set(), [module]
    while todo:
        for m in imports(todo.pop()) - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_the_import_reader_sees_every_form():
    """The guards below are only as good as ``imports``: it must see relative, absolute, package-level and lazy
    (function-level) imports alike: train (absolute, package-level), tiling (relative), commands and checkpoint
    (lazy)."""
    assert {"accel", "diffusion", "checkpoint", "data", "resize", "schedule", "unet"} <= imports("train")
    assert "sample" in imports("tiling")             # from .sample import ...
    assert "train" in imports("commands")            # imported inside cmd_train
    assert "unet" in imports("checkpoint")           # imported inside load_model


def test_no_import_cycle_inside_the_package():
    cycles = sorted(m for m in MODULES if m in reachable(m))
    assert cycles == [], f"modules on an import circle: {cycles}"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_reads_in_one_sitting(module):
    lines = len((PACKAGE / f"{module}.py").read_text().splitlines())
    assert lines <= OVER.get(module, MAX_LINES), f"{module}.py has {lines} lines: split it by concept, or trim it"


@pytest.mark.parametrize("module", ["schedule", "diffusion"])
def test_the_maths_stands_alone(module):
    """schedule and diffusion: no torch.nn (the equations are not a network) and nothing above them in the
    package (diffusion may use the schedule)."""
    assert not {n for n in third_party(module) if n == "torch.nn" or n.startswith("torch.nn.")}
    assert imports(module) <= ({"schedule"} if module == "diffusion" else set())


def test_the_network_only_sees_gamma():
    """unet (and blocks under it) never import the schedule or the sampler, directly or through another module."""
    assert not imports("unet") & {"schedule", "sample"} and not imports("blocks") & {"schedule", "sample"}
    assert "sample" not in reachable("unet") | reachable("blocks")


def test_what_a_network_predicts_is_read_in_one_place():
    """UNetConfig.target and residual_scale are read by ``unet.target_of`` alone, which looks through wrappers;
    everyone else asks it for a ``diffusion.Target`` (issue 18: three ``getattr``s that a DataParallel hid)."""
    fields = ("target", "residual_scale")

    def reads(module: str) -> bool:
        for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
            if isinstance(node, ast.Attribute) and node.attr in fields:
                return True
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr")
                    and any(isinstance(a, ast.Constant) and a.value in fields for a in node.args)):
                return True
        return False
    assert reads("unet")                             # the reader sees it where it is
    assert [m for m in MODULES if m != "unet" and reads(m)] == []


def test_no_module_imports_ipywidgets_with_the_library():
    """ipywidgets only inside the widget factories: the library imports where no notebook front end exists.
    Checked by importing every module in a fresh interpreter."""
    code = ("import sys, importlib\n"
            f"for m in {MODULES!r}:\n"
            "    importlib.import_module('sr3_mini.' + m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ipywidgets'))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                              "MPLBACKEND": "Agg"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split("\n")[-2] == "[]"


def test_tqdm_disable_is_left_to_tqdm():
    """tqdm reads TQDM_DISABLE itself; the library only turns a bar off when asked (progress=False)."""
    assert not [p.name for p in PACKAGE.glob("*.py") if "TQDM_DISABLE\"" in p.read_text()
                or "environ.get(\"TQDM" in p.read_text()]


TREE_LIMIT_MIB = 64 - 4        # a lent GPU takes the checkout's tracked files, 64 MiB at most; 4 MiB for wheels


def test_the_tracked_tree_fits_a_call_to_a_lent_gpu():
    """scripts/gpu_session.sh runs on a machine that receives this checkout, 64 MiB at most (wheels carried along,
    e.g. diffusers for the benchmark, count too). A 47 MB training checkpoint once put it at 81 MB, which would have
    refused every call: commit training checkpoints slimmed (checkpoint.slim_for_resume), never whole."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to sum")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    sizes = {n.decode(): (ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file()}
    total = sum(sizes.values()) / 2**20
    biggest = sorted(sizes, key=sizes.get)[-3:]
    assert total <= TREE_LIMIT_MIB, f"tracked files: {total:.1f} MiB (largest: {biggest})"
