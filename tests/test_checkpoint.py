"""Checkpoints: round trip, clear errors, atomic writes (a failure or a SIGKILL mid-save keeps the last good
file), release export. (The regression baseline's inference is tested in test_sample.py.)"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sr3_mini import checkpoint as C
from sr3_mini.schedule import Schedule
from sr3_mini.unet import UNet

ROOT = Path(__file__).resolve().parent.parent


def tiny_state(kind="sr3", step=3):
    torch.manual_seed(0)
    model, ema = UNet.from_preset("tiny"), UNet.from_preset("tiny")
    for p in list(model.parameters()) + list(ema.parameters()):
        torch.nn.init.normal_(p, std=0.1)
    opt = torch.optim.Adam(model.parameters())
    return C.make_state(kind=kind, model=model, ema=ema, optimizer=opt, schedule=Schedule.linear(), scale=4,
                        step=step, rng={"generator": torch.Generator().get_state()}, train_config={"lr": 1e-4})


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_round_trip_and_load_model(tmp_path):
    state = tiny_state()
    path = C.save_checkpoint(tmp_path / "sub" / "last.pt", state)
    back = C.load_checkpoint(path)
    assert back["step"] == 3 and back["kind"] == "sr3" and back["format"] == C.FORMAT
    assert_same_weights(back["model"], state["model"])
    assert_same_weights(back["ema"], state["ema"])
    assert Schedule.from_dict(back["schedule"]).T == 2000
    model, info = C.load_model(path, use_ema=True)
    assert not model.training and info["weights"] == "ema"
    assert_same_weights(model.state_dict(), state["ema"])
    assert not any(isinstance(v, torch.Tensor) for v in info.values())
    assert not set(info) & {"model", "ema", "optimizer", "rng"}
    raw, info = C.load_model(path, use_ema=False)
    assert info["weights"] == "model"
    assert_same_weights(raw.state_dict(), state["model"])
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]   # no temp file left behind


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        C.load_checkpoint(tmp_path / "nope.pt")
    good = C.save_checkpoint(tmp_path / "good.pt", tiny_state())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        C.load_checkpoint(truncated)
    torch.save({"format": "other/9"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="format"):
        C.load_checkpoint(tmp_path / "other.pt")
    state = tiny_state()
    del state["schedule"]
    torch.save(state, tmp_path / "incomplete.pt")
    with pytest.raises(ValueError, match="schedule"):
        C.load_checkpoint(tmp_path / "incomplete.pt")


def test_weights_that_do_not_match_the_config_are_named(tmp_path):
    state = tiny_state()
    state["unet_config"]["channels"] = 24                      # shapes no longer match
    C.save_checkpoint(tmp_path / "a.pt", state)
    with pytest.raises(ValueError, match="shape mismatches.*conv_in.weight"):
        C.load_model(tmp_path / "a.pt")
    state = tiny_state()
    state["ema"]["extra.weight"] = torch.zeros(1)
    del state["ema"]["conv_out.bias"]
    C.save_checkpoint(tmp_path / "b.pt", state)
    with pytest.raises(ValueError, match=r"missing keys \['conv_out.bias'\].*unexpected keys \['extra.weight'\]"):
        C.load_model(tmp_path / "b.pt")
    state = tiny_state()
    state["unet_config"]["no_such_field"] = 1
    C.save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(ValueError, match="no_such_field"):
        C.load_model(tmp_path / "c.pt")


@pytest.mark.parametrize("where", ["write", "replace"])
def test_failed_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, where):
    path = C.save_checkpoint(tmp_path / "last.pt", tiny_state(step=1))
    before = path.read_bytes()
    if where == "write":                                       # dies after writing half the bytes
        def broken_save(obj, f):
            f.write(b"\x00" * 1000)
            raise KeyboardInterrupt("killed mid-write")
        monkeypatch.setattr(C.torch, "save", broken_save)
    else:
        def broken_replace(src, dst):
            raise OSError("disk gone")
        monkeypatch.setattr(C.os, "replace", broken_replace)
    with pytest.raises((KeyboardInterrupt, OSError)):
        C.save_checkpoint(path, tiny_state(step=2))
    monkeypatch.undo()
    assert path.read_bytes() == before and C.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


CHILD = textwrap.dedent("""
    import sys, torch
    from sr3_mini.checkpoint import save_checkpoint
    path, flag = sys.argv[1], sys.argv[2]
    save_checkpoint(path, {"format": "sr3_mini/1", "step": 0, "blob": torch.zeros(10)})
    open(flag, "w").close()
    step = 0
    while True:                                                # 32 MB per save: slow enough to be caught inside
        step += 1
        save_checkpoint(path, {"format": "sr3_mini/1", "step": step, "blob": torch.full((8_000_000,), float(step))})
""")


def test_sigkill_during_a_save_leaves_the_last_complete_checkpoint(tmp_path):
    path, flag = tmp_path / "last.pt", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(flag)], env=env)
    try:
        deadline, partial = time.monotonic() + 60, []
        while not partial and time.monotonic() < deadline and child.poll() is None:
            if flag.exists():                                  # kill as soon as a save is half-way
                partial = [p for p in tmp_path.glob(".last.pt.*.tmp") if p.stat().st_size > 1_000_000]
            time.sleep(0.005)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert partial, "never caught the child in the middle of a save"
    state = torch.load(path, weights_only=True)                # one complete save, never a mixture
    assert state["format"] == "sr3_mini/1"
    assert torch.all(state["blob"] == (float(state["step"]) if state["step"] else 0.0))


def test_export_for_release(tmp_path):
    state = tiny_state()
    src = C.save_checkpoint(tmp_path / "last.pt", state)
    dst = C.export_for_release(src, tmp_path / "release.pt")
    slim = C.load_checkpoint(dst)
    assert slim["optimizer"] is None and slim["rng"] is None and slim["ema"] is None
    assert all(v.dtype == torch.float16 for v in slim["model"].values() if v.is_floating_point())
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    model, info = C.load_model(dst)
    assert info["weights"] == "ema" and info["kind"] == "sr3" and info["step"] == 3
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, state["ema"][k].half().float(), rtol=0, atol=0)


def test_restore_training_loads_the_loss_scaler_and_refuses_what_cannot_resume(tmp_path):
    """A training checkpoint carries the GradScaler's state (float16 loss scaling; tests/test_train.py checks the
    bit-exact fp16 resume); a disabled scaler saves None, and exports and load_model's info leave it out."""
    torch.manual_seed(0)
    model, ema = UNet.from_preset("tiny"), UNet.from_preset("tiny")
    opt, g = torch.optim.Adam(model.parameters()), torch.Generator().manual_seed(5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    state = C.make_state(kind="sr3", model=model, ema=ema, optimizer=opt, schedule=Schedule.linear(), scale=4,
                         step=9, scaler=scaler, train_config={"preset": "tiny"},
                         rng={"generator": g.get_state(), "device_type": "cpu", "ranks": []})
    path = C.save_checkpoint(tmp_path / "last.pt", state)
    back = C.load_checkpoint(path)
    assert back["scaler"]["scale"] == 2.0**10 and back["scaler"]["growth_interval"] == 7
    fresh = torch.amp.GradScaler("cpu")
    step, _ = C.restore_training(back, model=UNet.from_preset("tiny"), ema=UNet.from_preset("tiny"),
                                 optimizer=torch.optim.Adam(model.parameters()), generator=torch.Generator(),
                                 scaler=fresh, fixed={"preset": "tiny"})
    assert step == 9 and fresh.get_scale() == 2.0**10 and fresh.get_growth_interval() == 7
    assert C.make_state(kind="sr3", model=model, schedule=Schedule.linear(), scale=4,
                        scaler=torch.amp.GradScaler("cpu", enabled=False))["scaler"] is None
    assert "scaler" not in C.load_model(path)[1]
    release = C.load_checkpoint(C.export_for_release(path, tmp_path / "release.pt"))
    assert release["scaler"] is None
    with pytest.raises(ValueError, match="differ"):
        C.restore_training(back, model=model, ema=ema, optimizer=opt, generator=g, fixed={"preset": "mini"})
    with pytest.raises(ValueError, match="release export"):
        C.restore_training(release, model=model, ema=ema, optimizer=opt, generator=g)
