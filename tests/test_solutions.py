"""The numbers stated in notebooks/solutions.py's answers to the open questions, checked."""
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "notebooks"))
import solutions  # noqa: E402


def test_03_exercise_3_warmup_in_float32():
    assert math.isclose(solutions.warmup_first_step(0.05), -3 * 2**-28, rel_tol=1e-6)   # 3 spacings: 1.1e-8
    assert solutions.warmup_first_step(1.0) == 0.0                                      # a scale of 1 stays put
    one = torch.tensor(1.0)
    down = [k for k in range(1, 10) if (one - k * 1e-8).item() != 1.0]
    up = [k for k in range(1, 10) if (one + k * 1e-8).item() != 1.0]
    assert down[0] == 3 and up[0] == 6


def test_09_exercise_2_trials():
    assert solutions.my_trials_needed(0.05) == 381 and solutions.my_trials_needed(0.03) == 1064
    for n in (10, 381, 1000):
        low, high = solutions.my_wilson(n / 2, n)
        z = 1.959963984540054
        assert math.isclose((high - low) / 2, z / (2 * math.sqrt(n + z * z)), rel_tol=1e-12)


def test_check_says_right_wrong_and_not_attempted(capsys):
    def test(fn):
        assert fn(2) == 4, "not the square"
    assert solutions.check("sq", test, lambda v: v * v)
    assert not solutions.check("sq", test, lambda v: v + 1)
    assert not solutions.check("sq", test, lambda v: ...)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "sq: right" and out[1].startswith("sq: wrong. AssertionError: not the square")
    assert out[2].startswith("sq: not attempted yet")
