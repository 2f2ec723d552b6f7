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

BUSI_ROOT = Path(os.environ.get("BUSI_ROOT", REPO_ROOT.parent / "shared" / "data" / "BUSI" / "Dataset_BUSI_with_GT"))


@pytest.fixture(scope="session")
def busi_root() -> Path:
    """The real BUSI folder; the test is skipped when it is absent."""
    if not BUSI_ROOT.is_dir():
        pytest.skip(f"BUSI dataset not found at {BUSI_ROOT} (set BUSI_ROOT to run the busi tests)")
    return BUSI_ROOT
