from __future__ import annotations

import numpy as np
import pytest

from storm_st._utils import data_dir


@pytest.fixture(scope="session")
def shared_data():
    """Root of ../shared/data (or $STORM_ST_DATA); skips the test when absent."""
    root = data_dir()
    if not root.is_dir():
        pytest.skip(f"shared real data not found at {root}; set STORM_ST_DATA")
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
