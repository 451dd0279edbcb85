"""Fixtures shared by several test modules."""
import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """pytest -n 2 runs two workers on two cores: more torch threads than cores makes small convolutions many
    times slower (oversubscribed OpenMP threads spin-wait for each other), so each worker uses one. A module that
    trains or samples models opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
