"""Run by tests/test_accel.py in a fresh process with TRITON_INTERPRET=1 (Triton reads it when first imported):
the fused GroupNorm + FiLM + SiLU kernel on CPU tensors, against float32 and PyTorch's 16-bit ops. Prints one
JSON line: per case the max abs errors, and for the tiny U-Net (switched on by ``accel.fused_group_norm``) how often
the kernel ran and how far it lands, and the name its Triton source was imported under."""
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from sr3_mini import accel, kernels  # noqa: E402
from sr3_mini.blocks import GroupNorm  # noqa: E402
from test_accel import HALF, film_case, inputs, rand_tiny, rel  # noqa: E402

torch.set_num_threads(1)
cases = {}
for half in ("bf16", "fp16"):
    for fmt_name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for film in (True, False):
            norm, x, scale, shift = film_case(fmt)
            scale, shift = (scale, shift) if film else (None, None)
            with torch.no_grad():
                reference = norm(x, scale, shift, silu=True)               # float32: the plain ops
                xh = x.to(HALF[half])
                sh = [None if t is None else t.to(HALF[half]) for t in (scale, shift)]
                fused = kernels.group_norm_film_silu(xh, 4, norm.weight, norm.bias, norm.eps, *sh, silu=True)
                ops16 = norm(xh, *sh, silu=True)                           # PyTorch's 16-bit ops (not switched)
            cases[f"{half} {fmt_name} {film}"] = dict(
                err=(fused.float() - reference).abs().max().item(),
                err16=(ops16.float() - reference).abs().max().item(),
                ref_max=reference.abs().max().item(), dtype_kept=fused.dtype == HALF[half],
                format_kept=fused.is_contiguous(memory_format=fmt))

model = accel.fused_group_norm(rand_tiny())
y_t, x_up, gamma = inputs(batch=2)
calls = []
fused = kernels.group_norm_film_silu
kernels.group_norm_film_silu = lambda *a, **k: calls.append(1) or fused(*a, **k)
with torch.no_grad():
    reference = model(y_t, x_up, gamma)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(y_t, x_up, gamma)
n = len(calls)
with torch.autocast("cpu", dtype=torch.bfloat16):
    model(y_t, x_up, gamma).float().sum().backward()
unet = dict(calls=n, norms=sum(isinstance(m, GroupNorm) for m in model.modules()), rel=rel(out, reference),
            calls_with_grad=len(calls) - n, imported_as=sorted(m for m in sys.modules if "triton_gn" in m))
print(json.dumps({"cases": cases, "unet": unet}))
