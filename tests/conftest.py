"""Fixtures shared by the test modules (the repository-level ``conftest.py`` sets the environment)."""
import pytest
import torch

from sr3_mini.toy import ToyProblem


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one thread as on two here, and a shared machine's other processes then
    cannot stall an OpenMP barrier. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy():
    """The toy problem the samplers run on (toy.py): 3 x 8 x 8 images (d = 192), x 3 x 4 x 4, the default mixture.
    test_toy.py checks it against exact references; test_guidance.py and others reuse it."""
    return ToyProblem(channels=3, size=8, scale=2)
