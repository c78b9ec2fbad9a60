"""The Triton source of ``kernels.group_norm_film_silu`` (see ``kernels.py``), imported by it when the kernel first
runs: Triton is optional, and it decides at decoration time, so once per process, whether ``TRITON_INTERPRET=1``
runs the kernel on CPU tensors. A kernel must live at module level (Triton resolves ``tl`` in its globals).
"""
import triton
import triton.language as tl


@triton.jit
def gn_film_silu(x_ptr, out_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, P, G, CG, eps,
                 s_b, s_c, s_p, o_b, o_c, o_p, f_b, f_c,
                 FILM: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    b, g = tl.program_id(0) // G, tl.program_id(0) % G
    i = tl.arange(0, BLOCK_C)
    c, c_ok = g * CG + i, i < CG
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):                       # pass 1: sum x, sum x^2 (float32)
        p = p0 + tl.arange(0, BLOCK_P)
        m = c_ok[:, None] & (p < P)[None, :]
        v = tl.load(x_ptr + b * s_b + c[:, None] * s_c + p[None, :] * s_p, mask=m, other=0.0)
        v = v.to(tl.float32)
        acc += v
        acc2 += v * v
    n = CG * P
    mean = tl.sum(tl.sum(acc, axis=1), axis=0) / n
    var = tl.maximum(tl.sum(tl.sum(acc2, axis=1), axis=0) / n - mean * mean, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    a = tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32) * rstd
    d = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32) - mean * a
    if FILM:                                              # (GroupNorm(x)) (1 + scale) + shift
        s = 1.0 + tl.load(scale_ptr + b * f_b + c * f_c, mask=c_ok, other=0.0).to(tl.float32)
        a, d = a * s, d * s + tl.load(shift_ptr + b * f_b + c * f_c, mask=c_ok, other=0.0).to(tl.float32)
    for p0 in range(0, P, BLOCK_P):                       # pass 2: normalise, FiLM, SiLU, write
        p = p0 + tl.arange(0, BLOCK_P)
        m = c_ok[:, None] & (p < P)[None, :]
        v = tl.load(x_ptr + b * s_b + c[:, None] * s_c + p[None, :] * s_p, mask=m, other=0.0)
        y = v.to(tl.float32) * a[:, None] + d[:, None]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(out_ptr + b * o_b + c[:, None] * o_c + p[None, :] * o_p,
                 y.to(out_ptr.dtype.element_ty), mask=m)
