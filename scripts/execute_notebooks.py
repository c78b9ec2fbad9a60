#!/usr/bin/env python
"""Re-execute notebooks in place: the ONE command that produces the outputs committed in notebooks/.

    python scripts/execute_notebooks.py notebooks/*.ipynb        (what `make notebooks` runs)

nbval (`pytest --nbval notebooks/`) re-runs every cell and compares its text outputs with the stored ones, so the
stored outputs must come from the same kind of run: a fresh ``python3`` kernel of this interpreter, on the CPU,
working directory = the notebook's folder, and the environment that ``conftest.py`` gives nbval's kernels
(TQDM_DISABLE=1, MPLBACKEND=Agg, PYTHONHASHSEED=0: notebooks that plot must say ``%matplotlib inline``).

Every code cell runs, top to bottom (a Colab-only cell is a no-op here), so execution counts are 1..N.
``metadata.widgets`` is not written (GitHub refuses to render a notebook whose widget state lacks a ``state``
key), nor are per-cell timings, widget model ids or the kernel's timing-dependent splits of printed text: running
the script twice gives the same files. A notebook whose run fails is left untouched and the script exits with
status 1. Each notebook's run time is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# As conftest.py sets them for nbval's kernels; set before any kernel starts (kernels inherit os.environ).
KERNEL_ENV = {"TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": ""}
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def execute(path: Path, timeout: int) -> float:
    """Run one notebook in a fresh kernel and write it back; returns the wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            record_timing=False, store_widget_state=False,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    client.execute()
    elapsed = time.perf_counter() - start
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = _stable_outputs(cell.outputs)
    nbformat.validate(nb)
    tmp = path.with_name(path.name + ".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return elapsed


def _stable_outputs(outputs: list) -> list:
    """The same run stored the same way every time: consecutive prints to one stream are merged (the kernel splits
    them by timing), and a widget's view keeps only its text form (its model id is random on each run and points
    at widget state that is not stored)."""
    out = []
    for o in outputs:
        if o.get("output_type") == "stream" and out and out[-1].get("output_type") == "stream" \
                and out[-1].get("name") == o.get("name"):
            out[-1]["text"] += o["text"]
            continue
        if "data" in o:
            o["data"].pop(WIDGET_VIEW, None)
            if not o["data"]:
                continue
        out.append(o)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="the .ipynb files to re-execute in place")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    args = parser.parse_args(argv)
    os.environ.update(KERNEL_ENV)
    # The kernel is this interpreter (jupyter_client maps the python3 kernelspec's `python` to sys.executable);
    # its bin/ first on PATH too, so that `!pip` or `!python` in a cell mean the project's environment.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

    failed, total = [], 0.0
    for path in args.notebooks:
        if path.suffix != ".ipynb" or not path.is_file():
            print(f"skip {path}: not a notebook file", file=sys.stderr)
            failed.append(path)
            continue
        print(f"{path} ...", end=" ", flush=True)
        try:
            seconds = execute(path, args.timeout)
        except Exception as e:  # a failing cell (CellExecutionError), a timeout, a dead kernel
            print(f"FAILED, left unchanged\n{type(e).__name__}: {e}", file=sys.stderr)
            failed.append(path)
            continue
        total += seconds
        print(f"{seconds:.1f} s")
    print(f"{len(args.notebooks) - len(failed)} notebook(s) executed in {total:.1f} s"
          + (f"; FAILED: {', '.join(map(str, failed))}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
