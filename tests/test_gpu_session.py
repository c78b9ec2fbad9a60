"""scripts/gpu_session.sh, the one call a lent GPU gets, dry-run on the CPU (DEVICE=cpu QUICK=1): it trains both
models a few updates, exports them as one archive in parts that the device tool can bring back (at most 8 files,
16 MiB each, 64 MiB together), then measures them beside it. A GPU session has no time to find a broken script."""
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sr3_mini.checkpoint import load_model

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("split") is None, reason="needs bash and split")
def dry_run(tmp_path, **env):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "QUICK": "1", "PY": sys.executable,
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    run = subprocess.run(["bash", "scripts/gpu_session.sh", "0.05", "0.05"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run.stdout


def test_the_dry_run_returns_both_models_and_their_figures_in_parts_a_device_call_brings_back(tmp_path):
    out, _ = dry_run(tmp_path)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    parts = [p for p in files if p.name.startswith("models.tar.gz.part")]
    assert len(files) <= 8 and parts and all(p.stat().st_size <= 16 * MiB for p in files), files
    assert sum(p.stat().st_size for p in files) <= 64 * MiB
    whole = tmp_path / "models.tar.gz"
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(whole) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    got = tmp_path / "x"
    for kind in ("sr3", "regression"):
        model, info = load_model(got / f"{kind}_gpu64_x4.pt")
        assert info["kind"] == kind and info["train_config"]["preset"] == "gpu64" and model.scale == 4
    sr3_cfg = load_model(got / "sr3_gpu64_x4.pt")[1]["train_config"]
    assert sr3_cfg["loss_p"] == 2 and sr3_cfg["unet"]["head"] == "v" and sr3_cfg["batch_size"] == 64
    assert tarfile.open(got / "logs.tar.gz").getnames()            # the runs' logs
    rows = (out / "quality.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3                      # header; per set: bicubic, regression, one SR3 setting
    assert "diversity" in (out / "measure.log").read_text()
    assert {p.name for p in files} == {p.name for p in parts} | {"quality.csv", "measure.log"}


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("split") is None, reason="needs bash and split")
def test_past_its_deadline_it_skips_the_measurement_and_the_models_are_already_there(tmp_path):
    """A call that reaches its limit returns what lies under $OUT: the models are packed before the measurement,
    and the measurement only starts when time is left before DEADLINE (seconds after the start)."""
    out, stdout = dry_run(tmp_path, DEADLINE="0")
    assert "no measurement" in stdout and not (out / "quality.csv").exists()
    assert sorted(p.name for p in out.iterdir())[0] == "models.tar.gz.part00"
