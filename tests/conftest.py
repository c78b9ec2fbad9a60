"""Fixtures shared by the test modules (the repository-level ``conftest.py`` sets the environment)."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one thread as on two here, and a shared machine's other processes then
    cannot stall an OpenMP barrier. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
