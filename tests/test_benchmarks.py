"""benchmarks/: the diffusers peer has sr3_mini's widths, blocks and attention, and ``run.py --quick`` (the driver,
timing with ``harness.py``, writing with ``report.py``) writes its table into its own section of RESULTS.md. No
timing assertions: machines are noisy.

Skipped, saying why, where diffusers (the optional ``bench`` extra) is not installed.
"""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from sr3_mini.unet import UNet

pytest.importorskip("diffusers", reason="diffusers (the optional `bench` extra: pip install -e '.[bench]') "
                                        "is not installed; the benchmark tests need it")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
from peer import build_peer, num_params  # noqa: E402
import report  # noqa: E402

_spec = importlib.util.spec_from_file_location("sr3_mini_bench_run", BENCH / "run.py")
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


def _count(model, kind: str) -> int:
    return sum(type(m).__name__ == kind for m in model.modules())


@pytest.mark.parametrize("preset", ["tiny", "mini"])
def test_peer_has_our_widths_blocks_and_parameter_count(preset):
    ours = UNet.from_preset(preset)
    peer = build_peer(ours.config)
    assert num_params(peer) == pytest.approx(num_params(ours), rel=0.02)
    # the same residual blocks (BigGAN resampling ones included) and attention layers
    assert _count(peer, "ResnetBlock2D") == _count(ours, "ResBlock")
    assert _count(peer, "Attention") == _count(ours, "Attention")
    widths = sorted({m.out_channels for m in peer.modules() if type(m).__name__ == "ResnetBlock2D"})
    assert widths == sorted({ours.config.channels * m for m in ours.config.channel_mults})


def test_peer_runs_with_our_call_signature_and_flops():
    from torch.utils.flop_counter import FlopCounterMode

    ours = UNet.from_preset("tiny")
    peer = build_peer(ours.config)
    y_t, x_up, gamma = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.rand(2)
    flops = []
    for net in (ours, peer):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            assert net(y_t, x_up, gamma).shape == y_t.shape
        flops.append(counter.get_total_flops())
    assert flops[1] == pytest.approx(flops[0], rel=0.1)  # attention kernels differ in what the counter sees


def test_quick_run_on_tiny_prints_a_table_and_keeps_the_other_section(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# header\n\n<!-- BEGIN cuda -->\nthe GPU table\n<!-- END cuda -->\n\nnotes kept\n")
    threads = torch.get_num_threads()
    try:  # one thread: milliseconds-sized ops gain nothing from more, and lose a lot on a busy machine
        r = run.main(["--device", "cpu", "--quick", "--preset", "tiny", "--size", "16", "--batch", "2",
                      "--no-extras", "--threads", "1", "--results", str(results), "--out", str(tmp_path / "out")])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    for text in ("sr3_mini / diffusers", "training step", "peak memory", "sampling step", "**PASS**|**MISS**"):
        assert any(t in printed for t in text.split("|")), text
    md = results.read_text()
    assert "<!-- BEGIN cpu -->" in md and "the GPU table" in md and "notes kept" in md
    assert r["params"]["sr3_mini"] == num_params(UNet.from_preset("tiny"))
    raw = json.loads((tmp_path / "out" / "bench_cpu.json").read_text())
    assert set(raw["train"]) == {"sr3_mini", "diffusers"} and len(raw["train"]["sr3_mini"]) == 2
    # a second run replaces its own section instead of adding one
    report.update_results(results, "cpu", "new cpu section\n")
    md = results.read_text()
    assert md.count("<!-- BEGIN cpu -->") == 1 and "new cpu section" in md and "the GPU table" in md


def test_report_keeps_every_other_section_and_starts_a_missing_file(tmp_path):
    path = tmp_path / "sub" / "RESULTS.md"
    report.update_results(path, "cuda", "gpu\n")
    assert path.read_text().startswith(report.HEADER) and "<!-- BEGIN cuda -->\ngpu\n<!-- END cuda -->" in \
        path.read_text()
    path.write_text(path.read_text() + "\nnotes\n<!-- BEGIN quality_cpu -->\nq\n<!-- END quality_cpu -->\n")
    report.update_results(path, "cpu", "cpu\n")
    report.update_results(path, "cuda", "gpu 2\n")
    md = path.read_text()
    assert [md.count(f"<!-- BEGIN {d} -->") for d in ("cpu", "cuda", "quality_cpu")] == [1, 1, 1]
    assert "gpu 2\n" in md and "gpu\n<!--" not in md and "notes" in md and "\nq\n" in md


def test_quality_quick_scores_each_setting_and_writes_its_own_section(tmp_path, capsys):
    """benchmarks/quality.py: every setting is sampled and scored, the reference first, in a RESULTS section."""
    from sr3_mini import Schedule
    from sr3_mini import checkpoint as C

    spec = importlib.util.spec_from_file_location("sr3_mini_bench_quality", BENCH / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    torch.manual_seed(0)
    model = UNet.from_preset("tiny", head="v")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    ckpt = C.save_checkpoint(tmp_path / "tiny.pt", C.make_state(
        kind="sr3", model=model, ema=model, optimizer=None, schedule=Schedule.linear(), scale=4, step=7,
        rng=None, train_config={}))
    results = tmp_path / "RESULTS.md"
    results.write_text("# header\n\n<!-- BEGIN cpu -->\nthe CPU table\n<!-- END cpu -->\n")
    threads = torch.get_num_threads()
    try:
        rows = quality.main(["--device", "cpu", "--checkpoint", str(ckpt), "--size", "16", "--quick",
                             "--threads", "1", "--results", str(results)])
    finally:
        torch.set_num_threads(threads)
    labels = [r[0] for r in rows]
    assert labels[0].startswith("DDPM, 100 steps") and any(lb.startswith("DDIM") for lb in labels)
    assert any("searched schedule" in lb for lb in labels)
    for _, steps, seconds, m in rows:
        assert steps in (25, 100) and seconds > 0 and set(m) == {"psnr", "ssim", "consistency", "sharpness"}
        assert all(v == v and abs(v) < float("inf") for v in m.values())   # finite, not NaN
    md = results.read_text()
    assert "<!-- BEGIN quality_cpu -->" in md and "the CPU table" in md and "| 1.00x |" in md
    with pytest.raises(ValueError, match="larger than a held-out photo"):
        quality.held_out(1024)
