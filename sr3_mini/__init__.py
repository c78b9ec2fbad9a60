"""sr3_mini: a compact, faithful, tested reference of SR3 (Saharia et al., 2021, arXiv:2104.07636).

Image super-resolution by conditional denoising diffusion: start from Gaussian noise y_T and refine it, step by
step, with a U-Net f_theta(x, y_t, gamma) that sees the low-resolution image x. Equation numbers (1)-(10)
throughout are those of ``notebooks/EQUATIONS.md``.

Modules, in the paper's order: ``schedule`` (alpha, gamma, p(gamma)), ``diffusion`` (the equations),
``resize`` (how x is made and upsampled), ``unet`` (f_theta, Table 1), ``data``, ``train`` (Algorithm 1),
``sample`` (Algorithm 2), ``metrics``, ``viz``, ``cli``.
"""
from __future__ import annotations

from . import diffusion, resize, schedule
from .schedule import Schedule

__version__ = "0.1.0"
__all__ = ["Schedule", "diffusion", "schedule", "resize", "load_pretrained", "__version__"]

_BUNDLED = {"sr3": "sr3_mini_x4.pt", "regression": "regression_x4.pt", "sr3_stage2": "sr3_stage2_x4.pt"}


def load_pretrained(kind: str = "sr3", device="cpu"):
    """The bundled x4 model (16->64 crops, fully convolutional), ready to sample.

    Returns ``(model, schedule, info)``: the U-Net in eval mode with its EMA weights, the training schedule
    (sampling may use any other: the network is conditioned on gamma), and the checkpoint's metadata.
    ``model.var_y0`` holds the network's v(gamma) for ``super_resolve(variance="analytic")`` when the checkpoint
    has one beside it (``variance.py``). ``kind="regression"`` gives the regression baseline of the paper's comparisons
    instead; ``kind="sr3_stage2"`` a x4 SR3 model trained with its input blurred (conditioning augmentation,
    ``cond_aug.py``) for a cascade's second stage (notebook 08; sample it with ``cond_blur=0.75``). The files are
    looked up by ``data.data_dir()``: $SR3_MINI_DATA, the copy inside an installed wheel, or data/ in a clone.
    A file listed in the SHA256SUMS beside it (the model, and its v(gamma) table) must match its checksum, else a
    ValueError says to reinstall.
    """
    from .checkpoint import load_model
    from .data import data_dir
    from .variance import load_table, table_path

    if kind not in _BUNDLED:
        raise ValueError(f"kind must be one of {sorted(_BUNDLED)}, got {kind!r}")
    path = data_dir() / _BUNDLED[kind]
    if not path.exists():
        raise FileNotFoundError(f"bundled model {path.name} not found in {path.parent}: set SR3_MINI_DATA to a "
                                "folder that holds it, or install sr3_mini from a clone or a wheel built from "
                                "one (data/MODEL_CARD.md says how to retrain it)")
    _check_sha256(path)
    _check_sha256(table_path(path))      # its v(gamma) table, when there is one (a damaged digit would load silently)
    model, info = load_model(path, device=device, use_ema=True)
    model.var_y0 = load_table(path)      # v(gamma) for variance="analytic" (variance.py), or None
    return model, Schedule.from_dict(info["schedule"]), info


def update_checksum(path) -> bool:
    """Replace ``path``'s line in the SHA256SUMS beside it, if there is one (after a retrain: ``release_model.py``
    and ``estimate_variance.py`` call it). Returns whether it did."""
    import hashlib
    from pathlib import Path

    path = Path(path)
    sums = path.parent / "SHA256SUMS"
    if not sums.is_file():
        return False
    lines = [line for line in sums.read_text().splitlines() if _sums_entry(line)[0] != path.name]
    lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
    sums.write_text("\n".join(lines) + "\n")
    return True


def _sums_entry(line: str) -> tuple:
    """``(name, digest)`` of one SHA256SUMS line in ``sha256sum``'s format (``*name`` in binary mode); ``("", "")``
    for a blank one."""
    digest, _, name = line.strip().partition(" ")
    return name.strip().lstrip("*"), digest


def _check_sha256(path) -> None:
    """``path`` against its line in the SHA256SUMS beside it (``sha256sum`` format), if listed: damage that leaves a
    loadable file (flipped bytes in the weights) then stops here. Hashing the 6 MB models takes milliseconds."""
    import hashlib

    sums = path.parent / "SHA256SUMS"
    if not sums.is_file() or not path.is_file():
        return
    listed = dict(_sums_entry(line) for line in sums.read_text().splitlines() if line.strip())
    if path.name in listed and hashlib.sha256(path.read_bytes()).hexdigest() != listed[path.name]:
        raise ValueError(f"bundled file {path} does not match its checksum in {sums}: the file is damaged. Reinstall "
                         "sr3_mini (pip install --force-reinstall sr3_mini) or restore it (git checkout in a clone); "
                         "after a retrain, update its line there")
