"""Checkpoints of sr3_mini: one self-describing file per model, written atomically.

A checkpoint is a plain dict saved with ``torch.save`` and read back with ``weights_only=True`` (tensors,
numbers, strings, lists, tuples and dicts only: no pickled code runs on load)::

    {"format": "sr3_mini/1", "kind": "sr3" | "regression", "scale": 4,
     "unet_config": dict,        # UNetConfig fields: enough to rebuild the network
     "schedule": dict,           # the *training* schedule (Schedule.to_dict), p(gamma) of Algorithm 1
     "model": state_dict,        # raw weights theta
     "ema": state_dict | None,   # exponential moving average of theta: the weights used for sampling
     "optimizer": dict | None, "step": int, "rng": dict | None,   # everything needed to resume exactly
     "scaler": dict | None,      # float16 loss scaling (GradScaler.state_dict): part of an exact fp16 resume
     "train_config": dict, "metrics": dict}

A release export (``export_for_release``) keeps only the EMA weights, under ``"model"`` with ``"ema": None`` and
``"weights_source": "ema"``. ``restore_training`` loads a training checkpoint back into the live objects of a
run (network, EMA, optimizer, generator, loss scaler, this process's RNG), so that resuming is bit-exact.

``save_checkpoint`` writes a temporary file in the destination folder, flushes and fsyncs it, then renames it
over the destination (``os.replace`` is atomic on POSIX and Windows) and fsyncs the folder: a crash or kill at
any moment leaves either the previous checkpoint or the new one, never a mixture. A kill may leave a stray
``.NAME.PID.XXXXXXXX.tmp`` beside it: the next save of the same file removes those whose writer is gone.

``load_checkpoint`` and ``load_model`` trust nothing in the file: the zip's CRC-32s are checked (``torch.load``
does not: flipped bytes in the weights would load), and every field they use is validated, so that every way of
failing to load (truncated, damaged, not a checkpoint, a malformed schedule or config, NaN weights) is one
ValueError naming the file.

The regression baseline of the paper (section 4) uses the same U-Net and file format with ``kind="regression"``
(``KINDS``: the one spelling of the kinds); its inference is ``sample.regression_predict``. Files only: no
inference here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import torch

__all__ = ["FORMAT", "KINDS", "make_state", "save_checkpoint", "load_checkpoint", "load_model",
           "unet_config_from_dict", "check_state_dict", "load_weights", "restore_training", "export_for_release"]

FORMAT = "sr3_mini/1"
REQUIRED_KEYS = ("format", "kind", "unet_config", "schedule", "scale", "model")
KINDS = ("sr3", "regression")   # a diffusion model (Algorithm 2) or the paper's regression baseline (section 4)
BIG_KEYS = ("model", "ema", "optimizer", "rng", "scaler")  # left out of load_model's ``info`` and of exports
STALE_TEMP_SECONDS = 60   # a save writes its temporary file continuously: one untouched this long is not being written


def make_state(*, kind: str, model, schedule, scale: int, ema=None, optimizer=None, step: int = 0, rng=None,
               train_config: dict | None = None, metrics: dict | None = None, scaler=None) -> dict:
    """The checkpoint dict of the module docstring from live objects (``model`` a UNet, ``schedule`` a
    Schedule, ``ema`` a module or None, ``optimizer`` an optimizer or None, ``scaler`` a GradScaler or None;
    a disabled scaler, which holds no state, is saved as None)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return {"format": FORMAT, "kind": kind, "unet_config": dataclasses.asdict(model.config),
            "schedule": schedule.to_dict(), "scale": int(scale), "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict() if optimizer is not None else None, "step": int(step),
            "rng": rng, "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "train_config": train_config or {}, "metrics": metrics or {}}


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``, fsync of the
    folder). Creates the folder if needed. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    # the writer's pid in the name: a later save can tell a killed save's file from a live one's
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600): give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _remove_stale_temps(path: Path) -> None:
    """Remove the temporary files of earlier saves of ``path`` that were killed before their rename (68 MB after 8
    kills of a training run): ``.NAME.PID.XXXXXXXX.tmp`` (``.NAME.XXXXXXXX.tmp`` from older versions) whose
    writer is not running here and that nobody has written to for STALE_TEMP_SECONDS (which also spares a writer
    on another machine sharing the folder)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)\.)?[a-z0-9_]{{8}}\.tmp")
    for tmp in path.parent.iterdir():
        match = pattern.fullmatch(tmp.name)
        if not match or (match[1] and _running(int(match[1]))):
            continue
        with contextlib.suppress(OSError):      # gone already (another save cleaned it), or not ours to remove
            if time.time() - tmp.stat().st_mtime >= STALE_TEMP_SECONDS:
                tmp.unlink()


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (always True on Windows, where os.kill would end it)."""
    if os.name == "nt" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)                          # signal 0: only asks
    except ProcessLookupError:
        return False
    except OSError:                              # exists, but is another user's
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable. Not possible on Windows (folders cannot be opened): skipped there."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by ``save_checkpoint``. Raises FileNotFoundError if it is missing and ValueError
    if it is truncated, corrupt, or not an sr3_mini checkpoint (naming what is wrong)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _check_crcs(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:          # a damaged pickle makes torch.load raise anything: IndexError, KeyError, ...
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt, or it holds objects other "
                         f"than tensors and plain data): {type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not an sr3_mini checkpoint dict")
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} has format {state.get('format')!r}; expected {FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} lacks the checkpoint keys {missing}")
    if state["kind"] not in KINDS:
        raise ValueError(f"{path} has kind {state['kind']!r}; expected one of {KINDS}")
    scale = state["scale"]
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"{path} has scale {scale!r}; expected an integer >= 1")
    _check_schedule(state["schedule"], path)
    return state


def _check_crcs(path: Path) -> None:
    """Read every entry of the checkpoint's zip and check its CRC-32 (``torch.load`` does not: 64 flipped bytes
    in the weights loaded silently). One more read of the file. Files that are not zips are left to torch.load."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception as e:          # a damaged directory can make zipfile raise more than BadZipFile
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt): {type(e).__name__}: {e}") \
            from e
    if bad is not None:
        raise ValueError(f"{path} is corrupt: its entry {bad} fails its CRC check (damaged since it was written); "
                         "use another copy")


def _check_schedule(d, path: Path) -> None:
    """The saved training schedule must rebuild (``Schedule.from_dict``): alphas in (0, 1)."""
    from sr3_mini.schedule import Schedule

    if not isinstance(d, dict) or "alphas" not in d:
        raise ValueError(f"{path} has a malformed schedule: it needs the key 'alphas' (Schedule.to_dict), got "
                         f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")
    try:
        Schedule.from_dict(d)
    except Exception as e:
        raise ValueError(f"{path} has a malformed schedule: {type(e).__name__}: {e}") from e


def unet_config_from_dict(d: dict):
    """UNetConfig from its saved dict; unknown keys raise a ValueError naming them."""
    from sr3_mini.unet import UNetConfig

    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(UNetConfig)})
    if unknown:
        raise ValueError(f"unet_config has keys that UNetConfig does not know: {unknown}")
    return UNetConfig(**d)


def check_state_dict(model: torch.nn.Module, sd: dict, what: str = "weights") -> None:
    """Raise ValueError naming missing/unexpected keys and shape mismatches between ``sd`` and ``model``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs config {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(sd)) if tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else "",
                 f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}" if unexpected else "",
                 f"shape mismatches {shapes[:8]}" if shapes else ""]
        raise ValueError(f"the {what} do not match the checkpoint's unet_config: "
                         + "; ".join(p for p in parts if p))


def load_model(path, device="cpu", use_ema: bool = True):
    """Rebuild the U-Net of a checkpoint. Returns ``(model, info)``: the UNet in eval mode on ``device`` (float32,
    EMA weights when ``use_ema`` and present), and the checkpoint dict without its big entries, plus
    ``info["weights"]`` = "ema" or "model" saying which were loaded. ``model.scale`` is the checkpoint's scale.
    Every way of failing to load is a ValueError naming the file (FileNotFoundError when it is missing)."""
    from sr3_mini.unet import UNet

    state = load_checkpoint(path)
    try:
        model = UNet(unet_config_from_dict(state["unet_config"]))
    except Exception as e:          # wrong types or values: TypeError, ValueError, ZeroDivisionError, ...
        raise ValueError(f"{path} has an unusable unet_config: {type(e).__name__}: {e}") from e
    use = load_weights(model, state, use_ema, f" of {path}")
    info = {k: v for k, v in state.items() if k not in BIG_KEYS}
    info["weights"] = state.get("weights_source", use)
    model.scale = state["scale"]    # what it was trained for: super_resolve refuses another
    return model.to(device).eval(), info


def load_weights(model: torch.nn.Module, state: dict, use_ema: bool = True, where: str = "") -> str:
    """Load a checkpoint's weights into ``model`` as float32: its EMA when ``use_ema`` and present, else its raw
    weights (``check_state_dict`` first; ``where`` ends the error messages). Returns "ema" or "model"."""
    use = "ema" if use_ema and state.get("ema") is not None else "model"
    sd = state[use]
    if sd is None:
        raise ValueError(f"the checkpoint{where} holds no weights under {use!r}")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"the {use} weights{where} are not a dict of tensors")
    check_state_dict(model, sd, what=f"{use} weights{where}")
    # found here, not as a NaN sample after minutes of sampling: a diverged run, or a damaged file
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"the {use} weights{where} hold NaN or inf values ({', '.join(bad[:4])}"
                         f"{' ...' if len(bad) > 4 else ''}): use an earlier checkpoint of the run")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    return use


def restore_training(state: dict, *, model, ema, optimizer, generator: torch.Generator, scaler=None, rank: int = 0,
                     seed: int = 0, fixed: dict | None = None):
    """Load a training checkpoint ``state`` (from ``load_checkpoint``) into a run's live objects: the weights of
    ``model`` and ``ema``, ``optimizer``, ``generator`` (the run's draws), ``scaler`` (a GradScaler: float16 loss
    scaling) and this process's global RNG (dropout; ``rank``'s under DDP). Returns ``(step, metrics)``. Raises
    ValueError when ``state`` cannot be resumed: a release export, weights of another shape, or a setting of
    ``fixed`` (train_config key -> requested value) that differs from the saved run's. A checkpoint written on
    another device type reseeds ``generator`` with ``seed + step`` (a warning: not bit-exact)."""
    saved = state.get("train_config") or {}
    diff = {k: (saved[k], v) for k, v in (fixed or {}).items() if k in saved and saved[k] != v}
    if diff:
        raise ValueError(f"these settings differ (checkpoint, requested): {diff}")
    if state.get("optimizer") is None or state.get("rng") is None or state.get("ema") is None:
        raise ValueError("it holds no optimizer, EMA or RNG state (a release export?)")
    for module, key in ((model, "model"), (ema, "ema")):
        check_state_dict(module, state[key], what=f"{key} weights")
        module.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and scaler.is_enabled():
        if state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        else:
            warnings.warn("the checkpoint holds no loss-scaler state (written without fp16, or by an older "
                          "sr3_mini): loss scaling starts again from its initial scale (not bit-exact)")
    rng = state["rng"]
    if rng["device_type"] != generator.device.type:
        warnings.warn(f"resuming a run trained on {rng['device_type']}: reseeding on {generator.device.type} "
                      "(not bit-exact)")
        generator.manual_seed(seed + int(state["step"]))
    else:
        generator.set_state(rng["generator"])
        if rank < len(rng["ranks"]):
            torch.set_rng_state(rng["ranks"][rank]["torch"])
            if rng["ranks"][rank]["cuda"] is not None:
                torch.cuda.set_rng_state(rng["ranks"][rank]["cuda"], generator.device)
    return int(state["step"]), state.get("metrics") or {}


def export_for_release(src, dst, dtype: torch.dtype = torch.float16) -> Path:
    """Slim copy of a training checkpoint for distribution: the EMA weights only (stored under ``"model"``,
    cast to ``dtype``; float16 halves the size and costs nothing visible), no optimizer or RNG state.
    ``load_model`` casts back to float32. Returns ``dst``."""
    state = load_checkpoint(src)
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    out = {k: v for k, v in state.items() if k not in BIG_KEYS}
    out.update(model={k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
               ema=None, optimizer=None, rng=None, scaler=None,
               weights_source="ema" if state.get("ema") is not None else "model")
    return save_checkpoint(dst, out)


def slim_for_resume(src, dst) -> Path:
    """A resumable copy of a training checkpoint at half its size, for committing to a repository (whose whole
    tree must stay small: it travels to a lent GPU, 64 MiB at most): the weights and the EMA in float16, Adam's two
    moments in bfloat16 (the second moment needs bfloat16's range), the RNG state as it was. ``restore_training``
    reads it unchanged (loading casts every tensor back to its parameter's float32), so a resumed run goes on from
    weights rounded to float16: close to the full checkpoint's continuation, not bit-identical. Returns ``dst``."""
    state = load_checkpoint(src)
    if state.get("optimizer") is None or state.get("ema") is None:
        raise ValueError(f"{src} holds no optimizer or EMA state: not a training checkpoint")
    half = lambda sd, dtype: {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}  # noqa: E731
    opt = state["optimizer"]
    moments = {i: {k: v.to(torch.bfloat16) if k in ("exp_avg", "exp_avg_sq") else v for k, v in s.items()}
               for i, s in opt["state"].items()}
    out = {**state, "model": half(state["model"], torch.float16), "ema": half(state["ema"], torch.float16),
           "optimizer": {**opt, "state": moments}, "slim": "float16 weights, bfloat16 Adam moments"}
    return save_checkpoint(dst, out)
