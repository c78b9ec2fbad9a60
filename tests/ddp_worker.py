"""Worker for tests/test_train.py::test_ddp_matches_one_process: ``torchrun --nproc_per_node=2 ddp_worker.py OUT``.

Each rank trains the tiny config with DDP (gloo on CPU) through ``sr3_mini.train.train`` and saves its final
weights to OUT/rank{r}.pt, so the test can check that the ranks agree and match a single process whose batch is
the global batch.
"""
import os
import sys

import torch

from sr3_mini.train import TrainConfig, train


def make_pool() -> torch.Tensor:
    """The fixed uint8 training pool [24, 3, 24, 24] shared by the DDP test and its single-process twin."""
    return torch.randint(0, 256, (24, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(123))


def ddp_config(out_dir: str, batch_size: int) -> TrainConfig:
    return TrainConfig(preset="tiny", crop=16, batch_size=batch_size, grad_accum=2, steps=3, lr=1e-3,
                       warmup_steps=2, val_every=0, log_every=1, save_every=3, progress=False, out_dir=out_dir,
                       device="cpu")


if __name__ == "__main__":
    out, rank = sys.argv[1], int(os.environ["RANK"])
    result = train(ddp_config(out, batch_size=2), pool=make_pool())
    torch.save(result["model"].state_dict(), os.path.join(out, f"rank{rank}.pt"))
