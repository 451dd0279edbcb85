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


def pytest_addoption(parser):
    parser.addoption("--run-readme-pipeline", action="store_true",
                     help="also run tests/test_readme_pipeline.py: the README's pipeline block on a fresh phantom "
                          "(29 min on 2 cores beside a training, beyond the suite's budget)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-readme-pipeline"):
        return
    skip = pytest.mark.skip(reason="the README's pipeline block, end to end (29 min on 2 cores): "
                                   "bash scripts/test.sh --run-readme-pipeline tests/test_readme_pipeline.py")
    for item in items:
        if "readme_pipeline" in item.keywords:
            item.add_marker(skip)
