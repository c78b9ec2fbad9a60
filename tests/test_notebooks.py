"""The committed notebooks are in the state `make notebooks` (scripts/execute_notebooks.py) leaves them in.

nbval compares stored outputs with a fresh run, but silently passes a cell stored without outputs or execution
count: so a notebook committed unexecuted (or stripped) would escape it. These checks do not run any notebook:
every code cell executed, counts 1..N top to bottom, no errors, no ``metadata.widgets`` (GitHub refuses to render
it), a Colab badge pointing at the notebook itself, a Colab-only install cell that nbval skips, and
``%matplotlib inline`` wherever pyplot is used (nbval's kernels run with MPLBACKEND=Agg, see conftest.py).
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/notebooks/"
                   r"([\w.-]+\.ipynb)")

if not NOTEBOOKS:
    pytest.skip("no notebooks in notebooks/", allow_module_level=True)


def _tags(cell) -> set:
    return set(cell.get("metadata", {}).get("tags", []))


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def nb(request):
    nb = json.loads(request.param.read_text(encoding="utf-8"))
    nb["_path"] = request.param
    return nb


def test_every_code_cell_was_executed_in_order(nb):
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, "a notebook without code cells"
    for i, cell in enumerate(code):
        if "nbval-skip" not in _tags(cell):
            assert _source(cell).strip(), f"code cell {i} is empty (nbclient would not number it)"
            assert cell.get("execution_count") is not None, \
                f"code cell {i} was never executed: run `make notebooks` and commit the result"
    counts = [c["execution_count"] for c in code if c.get("execution_count") is not None]
    assert counts == list(range(1, len(counts) + 1)), \
        f"execution counts {counts} do not run 1..N: re-execute the whole notebook with `make notebooks`"


def test_no_errors_and_no_widget_state(nb):
    assert "widgets" not in nb.get("metadata", {}), \
        "metadata.widgets is stored (GitHub will not render the notebook): re-run scripts/execute_notebooks.py"
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", \
                f"cell {i} stored an error: {out.get('ename')}: {out.get('evalue')}"
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), \
                f"cell {i} stores a widget model id (random on every run): re-run scripts/execute_notebooks.py"
    assert nb.get("metadata", {}).get("kernelspec", {}).get("name") == "python3"


def test_first_cell_has_a_colab_badge_for_itself(nb):
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and _source(first).lstrip().startswith("# "), \
        "the first cell must be markdown opening with the notebook's title"
    links = BADGE.findall(_source(first))
    assert "colab-badge.svg" in _source(first) and links, "no 'Open in Colab' badge in the first cell"
    assert links[0] == nb["_path"].name, f"the badge opens {links[0]}, not this notebook"


def test_colab_install_cell_is_skipped_by_nbval(nb):
    colab = [c for c in nb["cells"] if c["cell_type"] == "code" and "nbval-skip" in _tags(c)]
    assert colab, "no code cell tagged nbval-skip (the Colab install cell)"
    assert any('"google.colab" in sys.modules' in _source(c) for c in colab), \
        "the nbval-skip cell must act only on Colab: `if \"google.colab\" in sys.modules:`"
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert first_code in colab, "the Colab install cell must be the first code cell"


def test_figures_are_inline_pngs(nb):
    code = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "code")
    if "plt." in code:
        assert "%matplotlib inline" in code, \
            "uses pyplot without `%matplotlib inline`: under MPLBACKEND=Agg (conftest.py) no figure would appear"
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            assert "image/svg+xml" not in data, "an SVG output: nbval compares SVG text; keep figures PNG"
