"""Start a wider U-Net from a trained one: every weight whose name and shape match is copied, the rest keeps
its fresh initialisation. Used to measure whether width at full resolution is what keeps the bundled SR3 model's
samples alike (issue 17, ``data/MODEL_CARD.md``): the "mini" preset has 16 channels at 64x64 and 32x32.

    git show e1069a8:checkpoints/sr3_l2_finetune/last.pt > /tmp/l2_10400.pt     # the L2 run, retired (slim:
    # the wide run of the model card grew from the full file, which differs from it by float16 rounding)
    python scripts/grow_model.py /tmp/l2_10400.pt /tmp/wide_init.pt \\
        --unet channels=32 channel_mults="(1, 1, 1, 2, 4)" emb_mult=2

The widths at 16x16 and below (32, 64, 128) and the gamma embedding's width (2 x 32 = 64) then equal mini's, so the
deep levels, the middle and the attention start trained; the two finest levels, conv_in/conv_out and the first layer
of the gamma MLP start fresh. The output is a checkpoint for ``sr3-mini train --init``.
"""
import argparse

import torch

from sr3_mini.checkpoint import load_checkpoint, make_state, save_checkpoint, unet_config_from_dict
from sr3_mini.cli import CLIError, unet_overrides
from sr3_mini.schedule import Schedule
from sr3_mini.unet import UNet


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="a trained checkpoint (its EMA weights are copied, else its raw ones)")
    p.add_argument("dst", help="where to write the wider model")
    p.add_argument("--unet", nargs="+", default=[], metavar="KEY=VALUE",
                   help="UNetConfig fields that differ from the source's (Python literals)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh weights")
    a = p.parse_args(argv)

    try:
        overrides = unet_overrides(a.unet)
    except CLIError as e:
        p.error(str(e))
    src = load_checkpoint(a.src)
    cfg = {**src["unet_config"], **overrides}
    torch.manual_seed(a.seed)
    model = UNet(unet_config_from_dict(cfg))
    old = src["ema"] if src.get("ema") is not None else src["model"]
    own = model.state_dict()
    same = {k: v.float() for k, v in old.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(same, strict=False)
    n_same = sum(v.numel() for v in same.values())
    n_all = sum(v.numel() for v in own.values())
    print(f"copied {len(same)} of {len(own)} tensors ({n_same:,} of {n_all:,} numbers); "
          f"fresh: {sorted(k for k in own if k not in same)[:6]} ...")
    state = make_state(kind=src["kind"], model=model, schedule=Schedule.from_dict(src["schedule"]),
                       scale=src["scale"])
    save_checkpoint(a.dst, state)
    print(f"wrote {a.dst}")


if __name__ == "__main__":
    main()
