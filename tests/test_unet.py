"""Tests of the SR3 U-Net (sr3_mini/unet.py, sr3_mini/blocks.py): section 2.4 and Table 1.

Each architectural claim of section 2.4 is checked against something written out independently here: the
BigGAN/FiLM residual block against a line-by-line re-derivation with torch.nn.functional, attention against an
explicit softmax, the 1/sqrt(2) rescale and the in-block resampling against closed forms, Table 1's parameter
counts on the meta device.
"""
import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from sr3_mini.blocks import LOG_SNR_RANGE, Attention, ResBlock, gamma_embedding, log_snr_embedding, sinusoids
from sr3_mini.unet import PRESETS, UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


TABLE_1 = {"sr3_16_128": 550e6, "sr3_64_256": 625e6, "sr3_64_512": 625e6, "sr3_256_1024": 150e6}


def randomized(module, seed=0, std=0.2):
    """The module with every parameter redrawn: zero-initialised convs would hide all the paths tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny(**overrides):
    torch.manual_seed(0)
    return randomized(UNet.from_preset("tiny", **overrides))


def inputs(B=2, H=16, W=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, H, W, generator=g), torch.randn(B, 3, H, W, generator=g), torch.rand(B, generator=g)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=None)
def on_meta(name):
    """A preset built on the meta device: shapes and parameter counts, no memory, no arithmetic."""
    with torch.device("meta"):
        return UNet.from_preset(name)


# ---- blocks against independent re-derivations -------------------------------------------------------------

@pytest.mark.parametrize("resample", [None, "down", "up"])
@pytest.mark.parametrize("in_ch,out_ch", [(8, 8), (8, 16)])
def test_resblock_matches_biggan_film_formula(resample, in_ch, out_ch):
    block = randomized(ResBlock(in_ch, out_ch, emb_dim=12, resample=resample, groups=4))
    x, emb = torch.randn(2, in_ch, 8, 8), torch.randn(2, 12)
    rs = {None: lambda t: t, "down": lambda t: F.avg_pool2d(t, 2),
          "up": lambda t: F.interpolate(t, scale_factor=2, mode="nearest")}[resample]
    b = block
    h = F.silu(F.group_norm(x, 4, b.norm1.weight, b.norm1.bias, 1e-6))
    h = F.conv2d(rs(h), b.conv1.weight, b.conv1.bias, padding=1)  # both branches resampled ...
    scale, shift = (emb @ b.film.weight.T + b.film.bias).chunk(2, dim=1)
    h = F.group_norm(h, 4, b.norm2.weight, b.norm2.bias, 1e-6) * (1 + scale[..., None, None]) + shift[..., None, None]
    h = F.conv2d(F.silu(h), b.conv2.weight, b.conv2.bias, padding=1)
    skip = rs(x) if in_ch == out_ch else F.conv2d(rs(x), b.skip.weight, b.skip.bias)  # ... inside the block
    torch.testing.assert_close(block(x, emb), (skip + h) / math.sqrt(2))


def test_skip_rescale_with_branch_zeroed():
    # the default init zeroes conv2: the residual branch is 0 and the block returns skip / sqrt(2)
    x, emb = torch.randn(2, 8, 8, 8), torch.randn(2, 12)
    block = ResBlock(8, 8, 12, groups=4)
    torch.testing.assert_close(block(x, emb), x / math.sqrt(2))
    down, up = ResBlock(8, 8, 12, resample="down", groups=4), ResBlock(8, 8, 12, resample="up", groups=4)
    torch.testing.assert_close(down(x, emb), F.avg_pool2d(x, 2) / math.sqrt(2))
    torch.testing.assert_close(up(x, emb), x.repeat_interleave(2, -1).repeat_interleave(2, -2) / math.sqrt(2))
    torch.testing.assert_close(Attention(8, 4, 4)(x), x / math.sqrt(2))


def test_resample_changes_size_of_both_branches():
    x, emb = torch.randn(2, 8, 8, 12), torch.randn(2, 12)
    down = randomized(ResBlock(8, 16, 12, resample="down", groups=4))
    up = randomized(ResBlock(8, 16, 12, resample="up", groups=4))
    assert down(x, emb).shape == (2, 16, 4, 6) and up(x, emb).shape == (2, 16, 16, 24)
    assert ResBlock(8, 8, 12, resample="down", groups=4).skip.__class__.__name__ == "Identity"  # 1x1 only if C changes
    with pytest.raises(ValueError):
        ResBlock(8, 8, 12, resample="sideways")


def test_attention_matches_explicit_softmax():
    attn = randomized(Attention(16, head_channels=8, groups=4))
    x = torch.randn(2, 16, 4, 4)
    qkv = F.conv2d(F.group_norm(x, 4, attn.norm.weight, attn.norm.bias, 1e-6), attn.qkv.weight, attn.qkv.bias)
    q, k, v = qkv.reshape(2, 3, 2, 8, 16).unbind(1)  # [B, heads, d, HW]
    w = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(8), dim=-1)
    h = torch.einsum("bhij,bhdj->bhdi", w, v).reshape(2, 16, 4, 4)
    h = F.conv2d(h, attn.proj.weight, attn.proj.bias)
    torch.testing.assert_close(attn(x), (x + h) / math.sqrt(2))


def test_attention_builds_no_tokens_squared_matrix_on_the_cpu():
    """With q, k, v strided as rearranged from NCHW, SDPA fell back to its math kernel, which stores the [HW, HW]
    scores: one 96 x 96 head of 64 channels cost 740 MB (`upscale --tile 1000` was killed at 23.8 GB). Contiguous
    q, k, v take the flash kernel. The largest allocation of any op of the layer, from the profiler: under 10
    copies of x (the qkv convolution's output alone is 3), where the matrix is 144 of them."""
    attn = randomized(Attention(64, head_channels=64, groups=8)).eval()
    x = torch.randn(1, 64, 96, 96)
    with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
        attn(x)
    peak = max(e.cpu_memory_usage for e in prof.key_averages())
    tensor = x.numel() * 4
    assert peak < 10 * tensor, (peak, tensor)                # the matrix alone would be 96**4 * 4 B = 340 MB


def test_blocks_gradcheck_float64():
    block = randomized(ResBlock(4, 8, 6, resample="down", groups=2)).double()
    attn = randomized(Attention(8, 4, 2)).double()
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(1, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, e: attn(block(x, e)), (x, emb))


def test_gamma_embedding_is_sinusoid_of_scaled_gamma():
    gamma = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    e = gamma_embedding(gamma, 8, scale=1000.0)
    freqs = 10000.0 ** (-torch.arange(4, dtype=torch.float64) / 3)
    torch.testing.assert_close(e, torch.cat([torch.sin(1000 * gamma[:, None] * freqs), torch.cos(1000 * gamma[:, None] * freqs)], 1))


def test_log_snr_embedding_spaces_every_decade_of_noise_alike():
    """embedding="log_snr" (a named deviation): equal steps of log-SNR are equal steps of the sinusoids' input,
    where 1000 * gamma squeezes SNR 1e3 .. 1e4 and 1e-4 .. 1e-3 into less than one unit each."""
    snr = torch.tensor([1e-4, 1e-3, 1.0, 1e3, 1e4], dtype=torch.float64)
    gamma = snr / (1 + snr)
    lo, hi = LOG_SNR_RANGE
    s = (snr.log() - lo) * 1000 / (hi - lo)
    torch.testing.assert_close(log_snr_embedding(gamma, 8), sinusoids(s, 8))
    decade = 1000 * math.log(10) / (hi - lo)
    torch.testing.assert_close(s.diff()[[0, 3]], torch.full((2,), decade, dtype=torch.float64))  # 82 each
    assert (1000 * gamma).diff()[[0, 3]].abs().max() < 1.0         # the paper's input: < 1 for either decade
    # gamma = 1 (the regression baseline's call) stays finite
    assert torch.isfinite(log_snr_embedding(torch.ones(2), 16)).all()


def test_the_embedding_defaults_to_gamma_and_rejects_unknown_values():
    assert UNetConfig().embedding == "gamma" and all("embedding" not in p for p in PRESETS.values())
    with pytest.raises(ValueError, match="embedding must be"):
        UNetConfig(embedding="t")
    a, b = tiny(), tiny(embedding="log_snr")
    b.load_state_dict(a.state_dict())                     # no extra parameter; only the layers' input changes
    torch.nn.init.normal_(a.conv_out.weight), b.conv_out.weight.data.copy_(a.conv_out.weight)
    y_t, x_up, gamma = inputs()
    assert not torch.allclose(a(y_t, x_up, gamma), b(y_t, x_up, gamma))


# ---- the U-Net ------------------------------------------------------------------------------------------------

def test_forward_backward_shape_tiny():
    model = tiny()
    y_t, x_up, gamma = inputs()
    eps_hat = model(y_t, x_up, gamma)
    assert eps_hat.shape == y_t.shape
    eps_hat.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert n_params(model) < 0.3e6


def test_zero_init_outputs_zero_and_seed_determinism():
    torch.manual_seed(3)
    a = UNet.from_preset("tiny")
    torch.manual_seed(3)
    b = UNet.from_preset("tiny")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    y_t, x_up, gamma = inputs()
    assert torch.equal(a(y_t, x_up, gamma), torch.zeros_like(y_t))  # conv_out starts at zero (DDPM)
    assert torch.equal(tiny()(y_t, x_up, gamma), tiny()(y_t, x_up, gamma))


def test_concatenation_of_x_up_as_channels_after_y_t():
    model = tiny()
    assert model.conv_in.in_channels == 6
    y_t, x_up, gamma = inputs()
    out = model(y_t, x_up, gamma)
    assert not torch.allclose(out, model(y_t, x_up + 0.5, gamma))
    assert not torch.allclose(out, model(y_t + 0.5, x_up, gamma))
    with torch.no_grad():
        model.conv_in.weight[:, 3:] = 0  # the last 3 input channels are x_up: order [y_t, x_up]
    torch.testing.assert_close(model(y_t, x_up, gamma), model(y_t, torch.randn_like(x_up), gamma))


def test_film_is_the_only_path_of_gamma():
    model = tiny()
    y_t, x_up, _ = inputs()
    out = model(y_t, x_up, 0.3)
    assert not torch.allclose(out, model(y_t, x_up, 0.7))
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, ResBlock):
                block.film.weight.zero_()
                block.film.bias.zero_()
    torch.testing.assert_close(model(y_t, x_up, 0.3), model(y_t, x_up, 0.7), rtol=0, atol=0)


def test_gamma_scalar_broadcasts_and_float64_is_accepted():
    model = tiny()
    y_t, x_up, _ = inputs(B=3)
    ref = model(y_t, x_up, torch.full((3,), 0.25))
    for gamma in (0.25, torch.tensor(0.25), torch.tensor([0.25]), torch.full((3,), 0.25, dtype=torch.float64),
                  torch.full((3, 1, 1, 1), 0.25)):
        torch.testing.assert_close(model(y_t, x_up, gamma), ref)
    with pytest.raises(ValueError, match="gamma"):
        model(y_t, x_up, torch.rand(2))


def test_bad_sizes_raise_value_error():
    model = tiny()
    assert model.multiple == 2
    y_t, x_up, gamma = inputs(H=15, W=16)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(y_t, x_up, gamma)
    with pytest.raises(ValueError, match="multiples of 16"):
        y = torch.zeros(1, 3, 24, 24, device="meta")
        on_meta("sr3_16_128")(y, y, 0.5)
    y_t, x_up, gamma = inputs()
    with pytest.raises(ValueError, match="same shape"):
        model(y_t, x_up[..., :8], gamma)
    with pytest.raises(ValueError, match="sr3_16_128"):
        UNet.from_preset("sr3_16_256")


def test_head_v_turns_the_network_output_into_eps_hat():
    """head="v" (a named deviation): eps_hat = sqrt(1 - gamma) y_t + sqrt(gamma) F, F the same layers' output."""
    eps_model, v_model = tiny(), tiny(head="v")
    v_model.load_state_dict(eps_model.state_dict())         # no extra parameter: the same weights load
    y_t, x_up, gamma = inputs()
    gamma = torch.tensor([2e-5, 0.7])
    F = eps_model(y_t, x_up, gamma)
    g = gamma[:, None, None, None]
    torch.testing.assert_close(v_model(y_t, x_up, gamma), (1 - g).sqrt() * y_t + g.sqrt() * F)
    # then (8) gives y0_hat = sqrt(gamma) y_t - sqrt(1 - gamma) F: at high noise F itself estimates -y_0
    y0_hat = (y_t - (1 - g).sqrt() * v_model(y_t, x_up, gamma)) / g.sqrt()
    torch.testing.assert_close(y0_hat, g.sqrt() * y_t - (1 - g).sqrt() * F, rtol=1e-4, atol=1e-4)
    # the regression baseline's call (y_t = 0, gamma = 1) sees F unchanged
    zero = torch.zeros_like(y_t)
    torch.testing.assert_close(v_model(zero, x_up, 1.0), eps_model(zero, x_up, 1.0))


def test_head_defaults_to_the_paper_and_rejects_unknown_values():
    assert UNetConfig().head == "eps" and all("head" not in p for p in PRESETS.values())
    with pytest.raises(ValueError, match="head must be"):
        UNetConfig(head="x0")
    from sr3_mini.checkpoint import unet_config_from_dict
    assert unet_config_from_dict(dataclasses.asdict(UNetConfig(head="v"))).head == "v"


def test_attention_sits_at_16x16_and_in_the_middle():
    model, seen = UNet.from_preset("sr3_16_128", channels=8), []  # placement does not depend on the widths
    for m in model.modules():
        if isinstance(m, Attention):
            m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[-1]))
    y = torch.zeros(1, 3, 128, 128)
    model(y, y, 0.5)
    assert sorted(seen) == [8] + [16] * 7  # middle at 8x8; 3 blocks down and 4 up at 16x16


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_table_1_parameter_counts(name):
    n = n_params(on_meta(name))
    assert abs(n / TABLE_1[name] - 1) < 0.05, f"{name}: {n / 1e6:.1f}M"


def test_presets_and_replace():
    assert {"sr3_16_128", "sr3_64_256", "sr3_64_512", "sr3_256_1024", "mini", "tiny"} <= set(PRESETS)
    assert UNet.from_preset("sr3_16_128", channels=8).config.dropout == 0.2  # the paper's 16->128 dropout
    model = tiny()
    variant = UNet(dataclasses.replace(model.config, channels=8, norm_groups=4, attn_head_channels=8))
    assert variant.config.channel_mults == model.config.channel_mults and variant.config.channels == 8
    assert n_params(variant) < n_params(model)
    assert UNetConfig(**dataclasses.asdict(model.config)) == model.config
    assert UNetConfig(channel_mults=[1, 2]).channel_mults == (1, 2)  # JSON lists come back as tuples
    assert 2e6 <= n_params(on_meta("mini")) <= 4e6


def test_channels_last_matches_contiguous():
    model = tiny()
    y_t, x_up, gamma = inputs()
    ref = model(y_t, x_up, gamma)
    model = model.to(memory_format=torch.channels_last)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (y_t, x_up)]
    torch.testing.assert_close(model(*cl, gamma), ref, rtol=1e-4, atol=1e-5)


BF16_U = 2.0**-8      # bf16's unit roundoff: 8 significant bits, so rounding one value costs up to 2^-8 of it


@pytest.mark.parametrize("seed", [1, 2])
def test_bf16_autocast_forward_cpu(seed):
    """head="eps": F itself comes out in bf16, so rounding the output alone costs up to u = 2^-8 relative; the
    convolutions before it about as much again (measured: relative RMS error 3.0e-3 to 3.7e-3, largest error
    1.8 u of max |F|). Bounds: relative RMS error < 2 u, largest error < 4 u max |F|; the old 10 % was 25 u.
    head="v": eps_hat = sqrt(1 - gamma) y_t + sqrt(gamma) F is formed in float32 (tests/test_residual.py), so
    its only bf16 error is sqrt(gamma) times F's, up to float32 rounding (measured 2e-7)."""
    y_t, x_up, gamma = inputs(seed=seed)
    eps_net, v_net = tiny(), tiny(head="v")                            # the same weights: the same F
    F32 = eps_net(y_t, x_up, gamma)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        F16 = eps_net(y_t, x_up, gamma.double())                       # gamma as float64 goes through as well
        eps_v = v_net(y_t, x_up, gamma.double())
    assert F16.shape == y_t.shape and F16.dtype == torch.bfloat16 and torch.isfinite(F16).all()
    err = F16.float() - F32
    assert err.norm() < 2 * BF16_U * F32.norm()
    assert err.abs().max() < 4 * BF16_U * F32.abs().max()
    g = gamma.view(-1, 1, 1, 1)
    eps_v32 = v_net(y_t, x_up, gamma)
    torch.testing.assert_close(eps_v32, (1 - g).sqrt() * y_t + g.sqrt() * F32, rtol=0, atol=1e-6)
    assert eps_v.dtype == torch.float32
    assert ((eps_v - eps_v32).abs() - g.sqrt() * err.abs()).abs().max() < 1e-5


def test_checkpointing_gives_same_grads():
    grads = []
    for checkpointing in (False, True):
        model = tiny(dropout=0.3, checkpointing=checkpointing)
        y_t, x_up, gamma = inputs()
        torch.manual_seed(5)  # the same dropout masks: non-reentrant checkpoint replays the RNG state
        model(y_t, x_up, gamma).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_torch_compile_fullgraph_no_graph_breaks():
    model = tiny()
    y_t, x_up, gamma = inputs()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled(y_t, x_up, gamma), model(y_t, x_up, gamma), rtol=1e-4, atol=1e-5)
    compiled(y_t, x_up, gamma).sum().backward()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_cuda_sr3_16_128_bf16_forward_backward(checkpointing):
    torch.manual_seed(0)
    model = UNet.from_preset("sr3_16_128", checkpointing=checkpointing).cuda().to(memory_format=torch.channels_last)
    y_t, x_up = (torch.randn(2, 3, 128, 128, device="cuda").contiguous(memory_format=torch.channels_last)
                 for _ in range(2))
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eps_hat = model(y_t, x_up, torch.rand(2, device="cuda", dtype=torch.float64))
    (eps_hat.float() - y_t).abs().mean().backward()
    torch.cuda.synchronize()
    assert eps_hat.shape == y_t.shape and torch.isfinite(eps_hat).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    print(f"\nsr3_16_128 bf16 batch 2 128x128 checkpointing={checkpointing}: "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
