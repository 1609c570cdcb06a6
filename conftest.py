"""Shared by every test directory (python_tests/, bench/): the devices that
device-parametrised tests run on, and the `cuda` marker.

A test that needs a CUDA device carries the `cuda` marker (directly, or through
the "cuda" value of the `device` fixture); without a device it is skipped, so
`pytest -m cuda` (or `-k cuda`) selects every CUDA test on any machine and the
GPU session runs exactly those. This is a conftest.py at the root, not a
module, because pytest loads it for both directories without imports or path
changes, and test helpers stay out of the installed package.
"""
import pytest
import torch

CUDA_AVAILABLE = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def pytest_collection_modifyitems(config, items):
    if CUDA_AVAILABLE:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
