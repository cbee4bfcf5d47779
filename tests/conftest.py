import numpy as np
import pytest

import linly_engine as le


@pytest.fixture
def threads():
    """Restores the pool size after a test changes it."""
    before = le.get_num_threads()
    yield
    le.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
