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
