"""The trainer (Algorithm 1): warm-up, EMA, batches, exact resume (float16 loss scaling included), non-finite
stop, regression baseline, validation, time budget, config errors, command line, and DDP on two CPU processes
(agreement, and a non-finite value on one rank). All on the tiny U-Net at 16x16."""
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sr3_mini import accel, diffusion
from sr3_mini import checkpoint as C
from sr3_mini.cli import main as cli_main
from sr3_mini.data import load_data
from sr3_mini.resize import downsample, upsample
from sr3_mini.sample import regression_predict
from sr3_mini.schedule import Schedule
from sr3_mini.train import (ConfigError, NonFiniteLossError, TrainConfig, ema_decay_at, ema_update, lr_at,
                            sample_batch, step_loss, train)
from sr3_mini.viz import plot_log
from sr3_mini.unet import UNet

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("ddp_worker", Path(__file__).with_name("ddp_worker.py"))
ddp_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ddp_worker)
POOL = ddp_worker.make_pool()                                          # uint8 [24, 3, 24, 24]
VAL = POOL[:2, :, :16, :16].clone()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(preset="tiny", crop=16, batch_size=2, steps=4, warmup_steps=2, val_every=0, log_every=1,
                save_every=2, progress=False, device="cpu", out_dir=str(tmp_path / name))
    return TrainConfig(**{**base, **kw})


def log(cfg) -> list:
    return [json.loads(line) for line in (Path(cfg.out_dir) / "log.jsonl").read_text().splitlines()]


def test_linear_warmup_then_constant():
    cfg = TrainConfig()                                        # the paper's 1e-4 after 10k warm-up steps
    assert lr_at(1, cfg) == pytest.approx(1e-8)
    assert lr_at(5000, cfg) == pytest.approx(5e-5)
    assert lr_at(10_000, cfg) == lr_at(10_001, cfg) == lr_at(1_000_000, cfg) == 1e-4
    short = TrainConfig(lr=2e-4, warmup_steps=4)
    assert [lr_at(k, short) for k in range(1, 7)] == pytest.approx([5e-5, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4])
    assert lr_at(1, TrainConfig(warmup_steps=0)) == 1e-4


def test_ema_update_math():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model(torch.randn(8, 3))                                   # moves the BatchNorm buffers
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    ema_update(ema, model, 0.9)
    for (k, p), (_, q) in zip(model.named_parameters(), ema.named_parameters()):
        torch.testing.assert_close(q, 0.9 * before[k] + 0.1 * p)   # theta_ema <- d theta_ema + (1 - d) theta
    for (k, b), (_, c) in zip(model.named_buffers(), ema.named_buffers()):
        assert torch.equal(b, c), k
    cfg = TrainConfig()
    assert ema_decay_at(0, cfg) == pytest.approx(0.1) and ema_decay_at(90, cfg) == pytest.approx(0.91)
    assert ema_decay_at(10**6, cfg) == 0.9999 == ema_decay_at(5, TrainConfig(ema_warmup=False))


def test_sample_batch_draws_crops_flips_gamma_and_noise_from_the_generator():
    cfg, schedule = TrainConfig(crop=16), Schedule.linear()
    y_0, gamma, eps = sample_batch(POOL, 6, cfg, schedule, torch.Generator().manual_seed(1))
    again = sample_batch(POOL, 6, cfg, schedule, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip((y_0, gamma, eps), again))
    assert y_0.shape == eps.shape == (6, 3, 16, 16) and gamma.shape == (6,) and gamma.dtype == torch.float64
    assert ((gamma > 0) & (gamma <= 1)).all()
    windows = POOL.float().unfold(2, 16, 1).unfold(3, 16, 1)          # every 16x16 window: [24, 3, 9, 9, 16, 16]
    windows = windows.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 16, 16) / 127.5 - 1
    flips = 0
    for y in y_0:
        plain = (windows == y).flatten(1).all(1).any()
        flipped = (windows == y.flip(-1)).flatten(1).all(1).any()
        assert plain or flipped                                      # a crop of the pool, possibly mirrored
        flips += int(flipped and not plain)
    assert 0 < flips < 6


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    kw = dict(unet={"dropout": 0.1}, lr=1e-3)                  # dropout: the global RNG is restored too
    train(config(tmp_path, "straight", **kw), pool=POOL)
    train(config(tmp_path, "split", steps=2, **kw), pool=POOL)
    resumed = train(config(tmp_path, "split", resume="auto", **kw), pool=POOL)
    assert resumed["step"] == 4
    a, b = C.load_checkpoint(tmp_path / "straight" / "last.pt"), C.load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for i, state in a["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[name], b["optimizer"]["state"][i][name])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    assert [r["loss"] for r in log(config(tmp_path, "straight"))] == [r["loss"] for r in log(config(tmp_path, "split"))]


def test_a_slim_checkpoint_resumes_close_to_the_full_one_at_half_the_size(tmp_path):
    """checkpoint.slim_for_resume (what checkpoints/ commits: the repository travels to a lent GPU, 64 MiB at most):
    float16 weights and bfloat16 Adam moments, read back by the trainer unchanged. The run resumed from it ends
    within float16 rounding of the run resumed from the full file: same draws, same losses to 2e-3."""
    kw = dict(lr=1e-3, steps=2)
    train(config(tmp_path, "full", **kw), pool=POOL)
    full = tmp_path / "full" / "last.pt"
    (tmp_path / "slim").mkdir()
    slim = C.slim_for_resume(full, tmp_path / "slim" / "last.pt")
    assert slim.stat().st_size < 0.6 * full.stat().st_size
    s = C.load_checkpoint(slim)
    assert {v.dtype for v in s["model"].values()} == {v.dtype for v in s["ema"].values()} == {torch.float16}
    assert {v.dtype for st in s["optimizer"]["state"].values() for k, v in st.items() if k != "step"} == {torch.bfloat16}
    for name in ("full", "slim"):
        train(config(tmp_path, name, resume="auto", lr=1e-3, steps=5), pool=POOL)
    a, b = (C.load_checkpoint(tmp_path / n / "last.pt") for n in ("full", "slim"))
    assert a["step"] == b["step"] == 5 and torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    for name in a["model"]:
        torch.testing.assert_close(b["model"][name], a["model"][name], rtol=0, atol=2e-3)
    la, lb = ({r["step"]: r["loss"] for r in log(config(tmp_path, n)) if "loss" in r} for n in ("full", "slim"))
    assert sorted(lb) == [3, 4, 5] and [lb[k] for k in lb] == pytest.approx([la[k] for k in lb], rel=2e-3)
    with pytest.raises(ValueError, match="not a training checkpoint"):
        C.slim_for_resume(C.export_for_release(full, tmp_path / "release.pt"), tmp_path / "x.pt")


def test_fp16_resume_restores_the_loss_scaler(tmp_path, monkeypatch):
    """The GradScaler's state (scale, growth tracker) is in the checkpoint: an fp16 run resumed at step 2 ends where
    the uninterrupted run does, bit for bit. growth_interval=1 changes the scale every step (the default, 2000, would
    hide it in four steps); before the scaler was saved, the resumed run restarted at the initial scale and its
    weights differed (by 1.5e-4 here)."""
    scalers = []

    def eager(device, autocast):
        scalers.append(torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=1, enabled=autocast == "fp16"))
        return scalers[-1]
    monkeypatch.setattr(accel, "grad_scaler", eager)
    kw = dict(autocast="fp16", lr=1e-3)
    train(config(tmp_path, "straight", **kw), pool=POOL)
    train(config(tmp_path, "split", steps=2, **kw), pool=POOL)
    train(config(tmp_path, "split", resume="auto", **kw), pool=POOL)
    assert scalers[2].get_scale() == scalers[0].get_scale() != 2.0**14
    a, b = C.load_checkpoint(tmp_path / "straight" / "last.pt"), C.load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] == scalers[0].get_scale()
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


@pytest.mark.parametrize("field, value", [
    ("kind", "gan"), ("autocast", "fp8"), ("loss_p", 3), ("steps", 0), ("steps", 2.5), ("batch_size", -1),
    ("save_every", 0), ("log_every", 0), ("log_every", True), ("grad_accum", 0), ("crop", 0), ("crop", 18),
    ("schedule_T", 0), ("val_steps", 3000), ("lr", 0.0), ("lr", float("nan")), ("lr", float("inf")),
    ("grad_clip", -1.0), ("ema_decay", 1.5), ("minutes", float("nan")), ("beta_end", 1.0), ("device", "gpu0")])
def test_config_errors_are_raised_by_the_config_before_anything_is_written(tmp_path, field, value):
    """A TrainConfig checks its own fields when it is made, and ``train`` checks again (a field may be changed
    after): a ConfigError naming the field, and no file written. Before, most of these ran after writing the run's
    config.json (steps=0 then trained nothing), or failed inside the loop (log_every=0: a ZeroDivisionError)."""
    with pytest.raises(ConfigError, match=field):
        config(tmp_path, **{field: value})
    cfg = config(tmp_path)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=field):
        train(cfg, pool=POOL)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real, calls = diffusion.loss, []

    def poisoned(eps_pred, eps, p=1):
        calls.append(1)
        value = real(eps_pred, eps, p)
        return value * float("nan") if len(calls) == 3 else value
    monkeypatch.setattr(diffusion, "loss", poisoned)
    cfg = config(tmp_path, steps=6, log_every=5)               # checked only at the save of step 4: no host sync
    with pytest.raises(NonFiniteLossError, match="step 3") as info:
        train(cfg, pool=POOL)
    assert info.value.step == 3 and isinstance(info.value, ValueError)
    state = C.load_checkpoint(Path(cfg.out_dir) / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for key in ("model", "ema") for v in state[key].values())


def test_a_non_finite_loss_in_any_micro_batch_stops_the_run(tmp_path, monkeypatch):
    """With grad_accum > 1 every micro-batch's loss counts, not only the last one's (issue 18). Here the first
    micro-batch of step 3 has a NaN loss whose gradient is finite (NaN + a constant), so the gradient norm stays
    finite and only the loss can tell; the second micro-batch is clean."""
    real, calls = diffusion.loss, []

    def poisoned(eps_pred, eps, p=1):
        calls.append(1)
        value = real(eps_pred, eps, p)
        return value + value.detach() * float("nan") if len(calls) == 5 else value
    monkeypatch.setattr(diffusion, "loss", poisoned)
    cfg = config(tmp_path, steps=4, grad_accum=2, log_every=4, save_every=4)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train(cfg, pool=POOL)
    assert len(calls) == 8 and not (Path(cfg.out_dir) / "last.pt").exists()


def test_regression_baseline_trains_validates_and_saves(tmp_path, monkeypatch):
    monkeypatch.setattr(diffusion, "q_sample", None)           # the regression path never noises y_0
    cfg = config(tmp_path, kind="regression", steps=2, val_every=2)
    result = train(cfg, pool=POOL, val=VAL)
    model, info = C.load_model(Path(cfg.out_dir) / "last.pt")
    assert info["kind"] == "regression" and info["step"] == 2 and info["metrics"] == result["metrics"]
    assert set(result["metrics"]) == {"val_psnr", "val_psnr_bicubic", "val_consistency"}
    assert (Path(cfg.out_dir) / "val_0000002.png").exists()
    assert regression_predict(model, torch.zeros(1, 3, 16, 16)).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("kind, factor", [("sr3", 10), ("regression", 100)])
def test_overfits_one_batch(kind, factor):
    """The tiny U-Net can memorise one fixed batch (y_0, x_up, and for sr3 one fixed gamma and eps): 200 Adam
    steps at lr 1e-3 bring train.step_loss down by ``factor`` (measured: sr3's L1 (6) by ~30x, from 0.80 to
    0.025; the regression's MSE by ~10^4). A broken gradient path, a loss that ignores the target or a network
    that ignores an input stays near its first value. About 10 s each on one thread."""
    y_0 = POOL[:4, :, :16, :16].float() / 127.5 - 1
    x_up = upsample(downsample(y_0, 4), 4)
    gamma = torch.tensor([0.2, 0.5, 0.8, 0.95], dtype=torch.float64)
    eps = torch.randn(y_0.shape, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = UNet.from_preset("tiny")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        loss = step_loss(net, kind, y_0, x_up, gamma, eps, p=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert max(losses[-10:]) < losses[0] / factor, (losses[0], losses[-10:])


def test_sr3_validation_time_budget_and_loss_plot(tmp_path):
    cfg = config(tmp_path, steps=100, val_every=1000, val_steps=2, minutes=1e-9)   # out of time after step 1
    result = train(cfg, pool=POOL, val=VAL)
    assert result["stopped"] == "time" and result["step"] == 1
    assert C.load_checkpoint(Path(cfg.out_dir) / "last.pt")["step"] == 1
    records = log(cfg)
    assert records[0]["step"] == 1 and math.isfinite(records[0]["loss"]) and records[0]["lr"] == 5e-5
    assert math.isfinite(records[1]["val_psnr"]) and (Path(cfg.out_dir) / "val_0000001.png").exists()
    import matplotlib
    backend = matplotlib.get_backend()
    matplotlib.use("svg")        # a notebook's inline backend, say: plotting a log must leave it alone
    try:
        assert plot_log(Path(cfg.out_dir) / "log.jsonl", tmp_path / "loss.png").stat().st_size > 1000
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)


def test_runs_are_never_overwritten_nor_resumed_with_another_model(tmp_path):
    train(config(tmp_path, steps=1), pool=POOL)
    with pytest.raises(FileExistsError, match="--resume"):
        train(config(tmp_path, steps=2), pool=POOL)
    with pytest.raises(ValueError, match="kind"):
        train(config(tmp_path, steps=2, kind="regression", resume="auto"), pool=POOL)
    assert train(config(tmp_path, steps=1, resume="auto"), pool=POOL)["step"] == 1   # already done: no-op


def test_command_line_on_the_bundled_data_with_bf16_and_channels_last(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["train", "--preset", "tiny", "--crop", "16", "--batch-size", "2", "--steps", "1", "--out", str(out),
                 "--val-every", "0", "--no-progress", "--device", "cpu", "--unet", "dropout=0.1",
                 "--autocast", "bf16", "--channels-last"])
    assert code == 0 and "stopped at step 1" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["unet"] == {"dropout": 0.1} and saved["autocast"] == "bf16" and saved["batch_size"] == 2
    assert (out / "loss.png").exists() and C.load_checkpoint(out / "last.pt")["unet_config"]["dropout"] == 0.1


def test_init_from_an_eps_run_into_a_v_head_run(tmp_path):
    """The bundled model's two stages: --init copies weights (not step, optimiser or head) into a new run."""
    train(config(tmp_path, "eps", steps=2), pool=POOL)
    cfg = config(tmp_path, "v", steps=2, unet={"head": "v"}, init=str(tmp_path / "eps" / "last.pt"))
    result = train(cfg, pool=POOL)
    state = C.load_checkpoint(Path(cfg.out_dir) / "last.pt")
    assert result["step"] == 2 and state["unet_config"]["head"] == "v" and state["train_config"]["init"] == cfg.init
    model, _ = C.load_model(Path(cfg.out_dir) / "last.pt")
    assert model.config.head == "v"
    with pytest.raises(ValueError, match="differ"):           # a run cannot change its head on --resume
        train(config(tmp_path, "v", steps=3, resume="auto"), pool=POOL)


def test_a_folder_of_photos_holds_whole_photos_out_for_validation(tmp_path):
    from PIL import Image
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(POOL[i].permute(1, 2, 0).numpy()).resize((40, 40)).save(folder / f"{i}.png")
    cfg = config(tmp_path, data=str(folder), val_size=1, steps=1, val_every=1, kind="regression")
    pool, val = load_data(cfg.data, cfg.crop, cfg.val_size, cache_dir=tmp_path / "run" / "crop_cache")
    assert val.shape == (1, 3, 16, 16) and pool.shape[1:] == (3, 16, 16) and len(pool) > 0
    from sr3_mini.data import FolderCrops
    index = FolderCrops(folder, crop=16, cache_dir=tmp_path / "run" / "crop_cache").image_index
    assert len(pool) == (index >= 1).sum()                                        # photo 0's crops left out
    assert train(cfg)["metrics"]["val_psnr"] > 0


def torchrun(out: Path, *args: str, timeout: float) -> None:
    """``torchrun --nproc_per_node=2 ddp_worker.py OUT ARGS``; fails the test when it fails or outlives ``timeout``
    (a rank left waiting in a collective), killing the whole process group it started."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("ddp_worker.py")), str(out), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"the DDP run hung for {timeout} s (a rank waiting for another in a collective):\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]


def test_ddp_two_processes_match_one_process_with_the_global_batch(tmp_path):
    """Two gloo ranks on a --data folder: identical weights, equal to one process with the global batch; and
    the crop cache built once, by rank 0, behind a barrier (issue 13: every rank used to write it). Rank 0's
    cache write is delayed by a second in the worker, so a rank 1 that did not wait would build its own."""
    from PIL import Image
    photos, out = tmp_path / "photos", tmp_path / "ddp"
    photos.mkdir()
    out.mkdir()
    for i in range(3):
        Image.fromarray(POOL[i].permute(1, 2, 0).numpy()).resize((40, 40)).save(photos / f"{i}.png")
    torchrun(out, str(photos), timeout=180)
    uses = [[json.loads(line)["from_cache"] for line in (out / f"rank{r}_cache.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    assert uses == [[False], [True]]                     # rank 0 built the cache; rank 1 waited, then read it
    [cache] = [p.name for p in (out / "crop_cache").iterdir()]           # one cache, no temporary file left
    assert cache.startswith("foldercrops_") and cache.endswith(".npz") and ".tmp." not in cache
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)           # the ranks hold identical weights
    assert C.load_checkpoint(out / "last.pt")["step"] == 3 and len(log(ddp_worker.ddp_config(str(out), 2))) == 3
    single = train(ddp_worker.ddp_config(str(tmp_path / "single"), batch_size=4, data=str(photos)))
    single = single["model"].state_dict()
    for k in rank0:   # atol 1e-5: SDPA's flash kernel rounds batches of 2 and 4 apart (1.5e-6 seen); lr is 1e-3
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-4, atol=1e-5)
    saved = C.load_checkpoint(out / "last.pt")["model"]                   # rank 0 wrote the checkpoint
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    torch.manual_seed(0)
    initial = UNet.from_preset("tiny").state_dict()                       # and training did move the weights
    assert not torch.equal(initial["conv_in.weight"], rank0["conv_in.weight"])


def test_ddp_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1's loss turns NaN at step 2 under fp16 autocast. Its NaN gradient reaches rank 0 through the
    all-reduce, but fp16's loss scaler treats a non-finite gradient as an overflow (it skips the update), so only
    rank 1 sees a non-finite loss. Every rank must stop with NonFiniteLossError(2). Before, rank 1 raised alone and
    rank 0 went on into the next all-reduce: there gloo failed it ("Connection closed by peer") once rank 1 had
    exited, and a rank whose peer is still alive waits (the timeout). last.pt keeps step 1."""
    out = tmp_path / "ddp"
    out.mkdir()
    torchrun(out, "--nonfinite", timeout=150)
    assert [json.loads((out / f"rank{r}_error.json").read_text()) for r in (0, 1)] == [{"step": 2}] * 2
    assert C.load_checkpoint(out / "last.pt")["step"] == 1


@pytest.mark.cuda
def test_cuda_bf16_channels_last_run_validates_saves_and_resumes(tmp_path):
    kw = dict(device="cuda", autocast="bf16", channels_last=True, val_every=2, val_steps=3, steps=2)
    first = train(config(tmp_path, **kw), pool=POOL, val=VAL)
    assert first["metrics"]["val_psnr"] > 0 and next(first["ema"].parameters()).is_cuda
    again = train(config(tmp_path, **{**kw, "steps": 3, "resume": "auto"}), pool=POOL, val=VAL)
    assert again["step"] == 3
    state = C.load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["rng"]["device_type"] == "cuda" and state["step"] == 3
    model, _ = C.load_model(tmp_path / "run" / "last.pt", device="cuda")
    assert all(torch.isfinite(p).all() for p in model.parameters())
