"""environment.yml and pyproject.toml must describe the same environment."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [ln.strip()[2:].strip() for ln in (ROOT / "environment.yml").read_text().splitlines()
             if ln.strip().startswith("- ")]
    pip_at = lines.index("pip:")
    pip_reqs = [ln for ln in lines[pip_at + 1:]]
    editable = [ln for ln in pip_reqs if ln.startswith("-e")]
    assert editable, "environment.yml must install the package itself (-e .[extras])"
    extras = re.search(r"\[(.*)\]", editable[0]).group(1).split(",")
    wanted = set(map(_norm, meta["dependencies"]))
    for extra in extras:
        wanted |= set(map(_norm, meta["optional-dependencies"][extra.strip()]))
    listed = {_norm(r) for r in pip_reqs if not r.startswith("-e")}
    assert listed == wanted, (f"only in environment.yml: {sorted(listed - wanted)}; "
                              f"only in pyproject.toml: {sorted(wanted - listed)}")


def test_torch_requirement_stays_loose():
    """Colab ships its own CUDA torch: never pin it in the package metadata."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = [r for r in meta["dependencies"] if r.startswith("torch")]
    assert torch_req and "==" not in torch_req[0] and "<" not in torch_req[0]


def _torch_closure() -> list:
    """Top-level files and folders of the installed torch and of everything it requires (recursively)."""
    from importlib import metadata

    seen, todo, items = set(), ["torch"], set()
    while todo:
        name = re.split(r"[\s<>=!~;\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue                                           # an optional or platform-specific requirement
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
        items |= {Path(dist.locate_file(f.parts[0])) for f in dist.files or [] if f.parts[0] != ".."}
    return sorted(p for p in items if p.exists() and p.suffix != ".pth" and p.name != "__pycache__")


@pytest.mark.slow
def test_the_built_wheel_installs_and_runs_the_demo_from_elsewhere(tmp_path):
    """Issue 13: build the wheel, install it into a fresh virtual environment, run `sr3-mini demo` from another
    folder. The models and held-out photos must come from the wheel itself. Torch (hundreds of MB, and a CUDA build
    by default from PyPI) is lent to the new environment from this one, by links; every other dependency is
    installed from the package index, as a user's pip would."""
    import os
    import subprocess

    def run(*cmd, **kw):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
        str(ROOT))
    wheel = next((tmp_path / "dist").glob("sr3_mini-*.whl"))
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    py = venv / "bin" / "python"
    site = Path(run(str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    lent = tmp_path / "torch_lent"
    lent.mkdir()
    for item in _torch_closure():
        (lent / item.name).symlink_to(item)
    (site / "torch_lent.pth").write_text(f"{lent}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("SR3_MINI_DATA", "PYTHONPATH", "VIRTUAL_ENV")}
    run(str(py), "-m", "pip", "install", "-q", str(wheel), env=env)
    assert not (site / "torch").exists()                      # pip took the lent torch as installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(str(py), "-c", "import sr3_mini.data as d; print(d.__file__); print(d.data_dir())", cwd=elsewhere,
                env=env).stdout.split()
    assert where[0].startswith(str(site)) and where[1] == str(site / "sr3_mini" / "_bundled")
    r = run(str(venv / "bin" / "sr3-mini"), "demo", "--steps", "3", "--quiet", cwd=elsewhere,
            env={**env, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    assert "SR3" in r.stdout and (elsewhere / "sr3_mini_demo.png").stat().st_size > 10_000


def _make(tmp_path, target: str, *variables: str, has_torch: bool) -> list:
    """Run ``make TARGET`` for real against a stand-in virtual environment whose ``python``, ``sr3-mini`` and
    ``pytest`` only log their arguments (``python -c "import torch"`` fails when ``has_torch`` is False, as in a
    fresh environment): the commands the Makefile's recipes actually execute, shell conditions included."""
    import shutil
    import subprocess

    if not shutil.which("make"):
        pytest.skip("no make")
    venv, log = tmp_path / f"venv{len(list(tmp_path.glob('venv*')))}", tmp_path / "calls.txt"  # a fresh one
    (venv / "bin").mkdir(parents=True)
    log.write_text("")
    for name in ("python", "sr3-mini", "pytest"):
        tool = venv / "bin" / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n'
                        f'[ "$1 $2" = "-c import torch" ] && exit {0 if has_torch else 1}\nexit 0\n')
        tool.chmod(0o755)
    subprocess.run(["make", "-s", "-C", str(ROOT), f"VENV={venv}", target, *variables], capture_output=True,
                   text=True, check=True)
    return log.read_text().splitlines()


def test_make_demo_installs_the_package_alone_and_torch_unpinned_from_the_default_index(tmp_path):
    """Issue 13: `make demo` needs no test stack; torch is installed only where it is missing, unpinned, from the
    default index unless TORCH_INDEX opts in to another (PyTorch's CPU wheels)."""
    probe = "python -c import torch"
    assert _make(tmp_path, "demo", has_torch=False) == [
        probe, "python -m pip install -q torch>=2.1", "python -m pip install -q -e .", "sr3-mini demo"]
    assert _make(tmp_path, "demo", has_torch=True) == [probe, "python -m pip install -q -e .", "sr3-mini demo"]
    cpu = "https://download.pytorch.org/whl/cpu"
    assert _make(tmp_path, "demo", f"TORCH_INDEX={cpu}", has_torch=False)[1] == \
        f"python -m pip install -q torch>=2.1 --index-url {cpu}"
    assert _make(tmp_path, "test", has_torch=True) == [
        probe, "python -m pip install -q -e .", "python -m pip install -q -e .[notebooks,test]",
        "pytest --nbval -q -n 2 --dist loadfile"]                  # two processes: notebooks run on one thread
    assert _make(tmp_path, "test", "WORKERS=0", has_torch=True)[-1] == "pytest --nbval -q"
