"""Worker for the DDP tests of tests/test_train.py: ``torchrun --nproc_per_node=2 ddp_worker.py OUT [PHOTOS |
--nonfinite]``.

Each rank trains the tiny config with DDP (gloo on CPU) through ``sr3_mini.train.train`` and saves its final
weights to OUT/rank{r}.pt, so the test can check that the ranks agree and match a single process whose batch is
the global batch. With PHOTOS (a folder of images) the ranks load it as ``--data``: each rank then appends
to OUT/rank{r}_cache.jsonl whether its ``FolderCrops`` was read from the crop cache, and rank 0 writes that
cache a second late, so a rank that did not wait for rank 0 finds no cache and builds (and writes) its own.
With ``--nonfinite`` the ranks train under fp16 autocast, rank 1's loss turns NaN at step 2, and each rank
writes the step of the NonFiniteLossError it raised to OUT/rank{r}_error.json.
"""
import json
import os
import sys
import time

import torch

from sr3_mini.train import NonFiniteLossError, TrainConfig, train


def make_pool() -> torch.Tensor:
    """The fixed uint8 training pool [24, 3, 24, 24] shared by the DDP test and its single-process twin."""
    return torch.randint(0, 256, (24, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(123))


def ddp_config(out_dir: str, batch_size: int, data: str = "", **kw) -> TrainConfig:
    base = dict(preset="tiny", crop=16, batch_size=batch_size, grad_accum=2, steps=3, lr=1e-3, warmup_steps=2,
                val_every=0, log_every=1, save_every=3, progress=False, out_dir=out_dir, device="cpu", data=data,
                val_size=1, cond_noise=0.1)   # conditioning augmentation: its noise is drawn for the global batch too
    return TrainConfig(**{**base, **kw})


def poison_loss(at_call: int) -> None:
    """diffusion.loss returns NaN at its ``at_call``-th call (on this rank only)."""
    from sr3_mini import diffusion
    real, calls = diffusion.loss, []

    def poisoned(eps_pred, eps, p=1):
        calls.append(1)
        value = real(eps_pred, eps, p)
        return value * float("nan") if len(calls) == at_call else value
    diffusion.loss = poisoned


def record_cache_use(out: str, rank: int) -> None:
    """Log each FolderCrops' ``from_cache`` for this rank; on rank 0, write the cache one second late."""
    import numpy as np

    from sr3_mini import data
    init = data.FolderCrops.__init__

    def logged(self, *args, **kwargs):
        init(self, *args, **kwargs)
        with open(os.path.join(out, f"rank{rank}_cache.jsonl"), "a") as f:
            f.write(json.dumps({"from_cache": self.from_cache}) + "\n")
    data.FolderCrops.__init__ = logged
    if rank == 0:
        save = np.savez_compressed
        np.savez_compressed = lambda *args, **kwargs: (time.sleep(1.0), save(*args, **kwargs))[1]


def non_finite(out: str, rank: int) -> None:
    """fp16 (the loss scaler skips a non-finite gradient, so only rank 1 sees its NaN loss), one step per batch."""
    if rank == 1:
        poison_loss(at_call=2)
    try:
        train(ddp_config(out, batch_size=2, grad_accum=1, steps=4, save_every=1, autocast="fp16"), pool=make_pool())
    except NonFiniteLossError as e:
        with open(os.path.join(out, f"rank{rank}_error.json"), "w") as f:
            json.dump({"step": e.step}, f)


if __name__ == "__main__":
    out, rank = sys.argv[1], int(os.environ["RANK"])
    if sys.argv[2:] == ["--nonfinite"]:
        non_finite(out, rank)
        sys.exit(0)
    photos = sys.argv[2] if len(sys.argv) > 2 else ""
    if photos:
        record_cache_use(out, rank)
    result = train(ddp_config(out, batch_size=2, data=photos), pool=None if photos else make_pool())
    torch.save(result["model"].state_dict(), os.path.join(out, f"rank{rank}.pt"))
