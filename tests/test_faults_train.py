"""Faults of ``sr3-mini train`` (issue "Nothing lost, nothing silently wrong"). Each ends with ONE line on stderr
that says what went wrong and what to do, exit status 2 for a user error or 130 for an interrupt, no traceback,
and nothing lost or half-written: a signal saves the step reached, a non-finite or diverged state is never saved,
a resumed log holds each step once.

The two signal tests run the real command in a subprocess (the tiny U-Net on 16 x 16 crops of the bundled data,
signalled once its log has a line, bounded in time); the rest call ``cli.main`` or ``train.train`` in this
process, on the tiny U-Net too."""
import errno
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from sr3_mini import checkpoint as C
from sr3_mini import diffusion
from sr3_mini import train as T
from sr3_mini.cli import main as cli_main
from sr3_mini.cli import train_parser
from sr3_mini.schedule import Schedule
from sr3_mini.unet import UNet

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("ddp_worker", Path(__file__).with_name("ddp_worker.py"))
ddp_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ddp_worker)
POOL = ddp_worker.make_pool()                                          # uint8 [24, 3, 24, 24]
TRAIN = ["train", "--preset", "tiny", "--crop", "16", "--batch-size", "2", "--val-every", "0", "--no-progress",
         "--device", "cpu", "--warmup-steps", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(tmp_path, name="run", **kw) -> T.TrainConfig:
    base = dict(preset="tiny", crop=16, batch_size=2, steps=4, warmup_steps=2, val_every=0, log_every=1,
                save_every=2, progress=False, device="cpu", out_dir=str(tmp_path / name))
    return T.TrainConfig(**{**base, **kw})


def logged_steps(out: Path) -> list:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def call(args, cwd, monkeypatch, capsys):
    """``sr3-mini ARGS`` in this process: (exit status, stderr lines). Fails on a traceback."""
    monkeypatch.chdir(cwd)
    try:
        code = cli_main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.strip().splitlines()


def assert_one_line(code, lines, status, *phrases):
    """Exit ``status``, exactly one line on stderr, holding every phrase."""
    assert code == status and len(lines) == 1, (code, lines)
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def poison_loss(monkeypatch, from_call: int, factor: float) -> None:
    """diffusion.loss is multiplied by ``factor`` from its ``from_call``-th call on (one call per step here)."""
    real, calls = diffusion.loss, []

    def poisoned(eps_pred, eps, p=1):
        calls.append(1)
        value = real(eps_pred, eps, p)
        return value * factor if len(calls) >= from_call else value
    monkeypatch.setattr(diffusion, "loss", poisoned)


def signal_at(monkeypatch, call: int, times: int = 1) -> None:
    """diffusion.loss sends SIGINT to this process ``times`` times at its ``call``-th call, as Ctrl-C would."""
    real, calls = diffusion.loss, []

    def pressed(eps_pred, eps, p=1):
        calls.append(1)
        for _ in range(times if len(calls) == call else 0):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)                               # the handler runs between two bytecodes, in this thread
        return real(eps_pred, eps, p)
    monkeypatch.setattr(diffusion, "loss", pressed)


@pytest.fixture(autouse=True)
def sigint_raises_keyboard_interrupt():
    """These tests need SIGINT as a terminal or a notebook kernel delivers it (Python's default handler), also when
    pytest itself was started with SIGINT ignored (``cmd &`` in a script does that, and children inherit it; the
    library then leaves it ignored, on purpose)."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


# ---- 1. SIGINT and SIGTERM: save the step reached, say so, exit 130 ----------------------------------------------
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_step_reached_and_exits_130(tmp_path, monkeypatch, capsys, sig):
    """The real command, signalled after its first log line (save_every is far away): before, SIGINT said
    "interrupted; nothing was written" beside config.json and log.jsonl and lost every step, and SIGTERM died
    silently (status -15). Now the step ends, is logged and saved, and the run resumes from it."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    args = [*TRAIN, "--save-every", "100000", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "sr3_mini", *args, "--steps", "100000", "--log-every", "3"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not ((out / "log.jsonl").exists() and (out / "log.jsonl").read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended or never logged"
            time.sleep(0.1)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    lines = err.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1 and "Traceback" not in err, (proc.returncode, err[-3000:])
    found = re.fullmatch(r"sr3-mini: interrupted at step (\d+); saved (\S+) \(resume with --resume\)", lines[0])
    assert found and Path(found[2]) == out / "last.pt", lines[0]
    step = int(found[1])
    assert step > 0 and C.load_checkpoint(out / "last.pt")["step"] == step
    assert logged_steps(out)[-1] == step                   # the steps since the last log line are logged too
    code, _ = call([*args, "--steps", step + 2, "--log-every", "1", "--resume"], tmp_path, monkeypatch, capsys)
    assert code == 0 and C.load_checkpoint(out / "last.pt")["step"] == step + 2
    steps = logged_steps(out)
    assert steps == sorted(set(steps)) and steps[-2:] == [step + 1, step + 2]


def test_ctrl_c_in_python_saves_then_raises_keyboard_interrupt(tmp_path, monkeypatch):
    """From Python (a notebook), Ctrl-C during step 3 ends that step, saves it, then raises a KeyboardInterrupt
    that says so; the run's SIGINT and SIGTERM handlers are gone afterwards (the previous ones are back)."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal_at(monkeypatch, call=3)
    cfg = config(tmp_path, steps=50, save_every=100, log_every=10)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted at step 3; saved \S+last\.pt") as info:
        T.train(cfg, pool=POOL)
    assert info.value.step == 3 and C.load_checkpoint(Path(cfg.out_dir) / "last.pt")["step"] == 3
    assert logged_steps(Path(cfg.out_dir)) == [3]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_second_ctrl_c_stops_at_once_and_says_what_is_kept(tmp_path, monkeypatch):
    """Twice, during step 4: stop at once, mid-step, without saving; the message names what is on disk (the save
    of step 2), and the step reached (3)."""
    signal_at(monkeypatch, call=4, times=2)
    cfg = config(tmp_path, steps=50, save_every=2)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted at step 3; not saved, .*last\.pt \(step 2\)"):
        T.train(cfg, pool=POOL)
    assert C.load_checkpoint(Path(cfg.out_dir) / "last.pt")["step"] == 2


def test_interrupted_before_anything_was_written_says_so(tmp_path, monkeypatch, capsys):
    def pressed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    monkeypatch.setattr(T, "load_data_once", pressed)      # Ctrl-C while the data loads
    code, lines = call([*TRAIN, "--steps", "3", "--out", "run"], tmp_path, monkeypatch, capsys)
    assert_one_line(code, lines, 130, "interrupted before training started; nothing was written")
    assert list(tmp_path.iterdir()) == []


# ---- 2. non-finite and diverged states are never saved; the message says what is kept -------------------------
def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch, capsys):
    """lr 1e39 overflows the weights in the first update, whose loss and gradient were finite: before, that state
    was saved as last.pt (inf in model and EMA) and called "the last good checkpoint", with status 1."""
    code, lines = call([*TRAIN, "--lr", "1e39", "--warmup-steps", "0", "--save-every", "1", "--log-every", "1",
                        "--steps", "3", "--out", "run"], tmp_path, monkeypatch, capsys)
    assert_one_line(code, lines, 2, "error:", "non-finite weights at step 1", "no checkpoint was written")
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("save_every, kept", [(2, "run/last.pt (step 2)"), (1000, "no checkpoint was written")])
def test_the_non_finite_message_names_what_is_kept(tmp_path, monkeypatch, capsys, save_every, kept):
    """Before, "the last good checkpoint was kept" whether one existed or not (save_every 1000: none)."""
    poison_loss(monkeypatch, from_call=3, factor=float("nan"))
    code, lines = call([*TRAIN, "--steps", "6", "--log-every", "1", "--save-every", save_every, "--out", "run"],
                       tmp_path, monkeypatch, capsys)
    assert_one_line(code, lines, 2, "error:", "non-finite loss or gradient at step 3", kept)


def test_a_diverging_loss_stops_without_overwriting_last_pt(tmp_path, monkeypatch, capsys):
    """From step 5 the loss is 10^4 times larger (finite: the gradient is clipped): the first log after it stops
    the run as diverged, and last.pt keeps step 4. Before, the diverged state was saved over it and the run went
    on. --diverge 0 turns the guard off."""
    poison_loss(monkeypatch, from_call=5, factor=1e4)
    args = [*TRAIN, "--steps", "8", "--log-every", "2", "--save-every", "2", "--out", "run"]
    code, lines = call(args, tmp_path, monkeypatch, capsys)
    assert_one_line(code, lines, 2, "error:", "diverged at step 6", "run/last.pt (step 4)", "--lr")
    assert C.load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4
    poison_loss(monkeypatch, from_call=5, factor=1e4)
    code, _ = call([*args[:-1], "off", "--diverge", "0"], tmp_path, monkeypatch, capsys)
    assert code == 0 and C.load_checkpoint(tmp_path / "off" / "last.pt")["step"] == 8


def test_a_save_between_two_log_lines_is_guarded_too(tmp_path, monkeypatch):
    """save_every 2, log_every 4: step 6 is saved but was not due a log line; a checkpoint always gets one, so
    the guards see the loss of steps 5-6 before it is saved."""
    poison_loss(monkeypatch, from_call=5, factor=1e4)
    cfg = config(tmp_path, steps=8, log_every=4, save_every=2)
    with pytest.raises(T.DivergedError, match="step 6"):
        T.train(cfg, pool=POOL)
    assert C.load_checkpoint(Path(cfg.out_dir) / "last.pt")["step"] == 4


# ---- 3. bad options, an unwritable folder, a full disk, a mismatched --init ----------------------------------
@pytest.mark.parametrize("option, value", [
    ("--steps", "0"), ("--steps", "-1"), ("--batch-size", "0"), ("--batch-size", "-2"), ("--save-every", "0"),
    ("--save-every", "-1"), ("--log-every", "0"), ("--log-every", "-5"), ("--grad-accum", "0"),
    ("--grad-accum", "-1"), ("--crop", "0"), ("--crop", "-16"), ("--schedule-T", "0"), ("--schedule-T", "-1"),
    ("--lr", "nan"), ("--lr", "-1"), ("--lr", "0"), ("--lr", "inf"), ("--diverge", "0.5"), ("--val-steps", "0")])
def test_every_bad_option_is_one_line_exit_2_before_anything_is_written(tmp_path, monkeypatch, capsys, option,
                                                                        value):
    code, lines = call([*TRAIN, "--steps", "3", "--out", "run", option, value], tmp_path, monkeypatch, capsys)
    assert_one_line(code, lines, 2, "error:", f"{option} must be")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["under_a_file", "read_only"])
def test_an_unwritable_out_dir_is_one_line_exit_2(tmp_path, monkeypatch, capsys, case):
    """Before: a traceback (NotADirectoryError, PermissionError). Read-only is simulated (root may write anywhere):
    making the folder is refused as a read-only parent would refuse it."""
    (tmp_path / "file").write_text("not a folder\n")
    out = tmp_path / ("file/run" if case == "under_a_file" else "ro/run")
    if case == "read_only":
        mkdir = Path.mkdir

        def refuse(self, *args, **kwargs):
            if self == out:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return mkdir(self, *args, **kwargs)
        monkeypatch.setattr(Path, "mkdir", refuse)
    code, lines = call([*TRAIN, "--steps", "3", "--out", out], tmp_path, monkeypatch, capsys)
    assert_one_line(code, lines, 2, "error:", f"cannot write to --out-dir {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    """The second checkpoint's write fails half-way with ENOSPC: one line naming the error and the checkpoint
    kept (step 2, intact: the write is atomic), no temporary file left. Before: a traceback."""
    real, saves = torch.save, []

    def full(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "format" in obj:      # a checkpoint, not something else torch saves
            saves.append(1)
            if len(saves) == 2:
                f.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", full)
    code, lines = call([*TRAIN, "--steps", "6", "--log-every", "1", "--save-every", "2", "--out", "run"], tmp_path,
                       monkeypatch, capsys)
    assert_one_line(code, lines, 2, "error:", "No space left on device", "run/last.pt (step 2)", "--resume")
    monkeypatch.setattr(torch, "save", real)
    assert C.load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    assert not [p.name for p in (tmp_path / "run").iterdir() if "tmp" in p.name]


def test_init_with_mismatched_shapes_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    other = UNet.from_preset("tiny", channel_mults=(1, 2, 2, 2))           # one level more than tiny's
    C.save_checkpoint(tmp_path / "other.pt", C.make_state(kind="sr3", model=other, schedule=Schedule.linear(),
                                                          scale=4))
    code, lines = call([*TRAIN, "--steps", "2", "--init", "other.pt", "--out", "run"], tmp_path, monkeypatch,
                       capsys)
    assert_one_line(code, lines, 2, "error:", "--init other.pt", "do not match")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]


# ---- 4. a resumed run logs each step once -------------------------------------------------------------------
def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Resuming at step 2 (a kept checkpoint) a run that logged steps 1-3: before, step 3 was logged twice. A torn
    last line (a kill during a write) goes too."""
    out = tmp_path / "run"
    T.train(config(tmp_path, steps=3, save_every=100, keep_every=2), pool=POOL)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    T.train(config(tmp_path, steps=4, resume=str(out / "step_0000002.pt")), pool=POOL)
    assert logged_steps(out) == [1, 2, 3, 4]


# ---- 5. silent surprises are warned about, in one line ------------------------------------------------------
def test_a_one_photo_data_folder_warns_that_validation_is_off(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(POOL[0].permute(1, 2, 0).numpy()).resize((40, 40)).save(photos / "only.png")
    code, lines = call([*TRAIN, "--steps", "1", "--val-every", "1", "--data", photos, "--out", "run"], tmp_path,
                       monkeypatch, capsys)
    assert_one_line(code, lines, 0, "warning:", "validation is off", "--val-every 0")


def test_init_from_the_other_kind_warns(tmp_path, monkeypatch, capsys):
    T.train(config(tmp_path, "regression", steps=1, kind="regression"), pool=POOL)
    code, lines = call([*TRAIN, "--steps", "1", "--init", "regression/last.pt", "--out", "run"], tmp_path,
                       monkeypatch, capsys)
    assert_one_line(code, lines, 0, "warning:", "'regression' checkpoint", "'sr3'")


# ---- 6. every option says what it does ----------------------------------------------------------------------
def test_every_train_option_has_help():
    parser = train_parser()
    bare = [a.option_strings for a in parser._actions if not (a.help or "").strip()]
    assert bare == []
    assert len(parser._actions) > 30
    text = parser.format_help()
    assert "(default: 1000000)" in text and "learning rate" in text.lower()
