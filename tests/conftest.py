"""Shared pytest fixtures: the repository root on sys.path, a headless matplotlib, small generated data."""

import os
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def busi_root() -> Path:
    """The real ``Dataset_BUSI_with_GT`` folder (`data_loading.find_busi_root`); skips when absent."""
    import data_loading

    try:
        found = data_loading.find_busi_root()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    if found is None:
        pytest.skip(
            f"BUSI dataset not found at {data_loading.SHARED_BUSI} (set BUSI_ROOT to run the busi tests)"
        )
    return data_loading.resolve_root(found)
