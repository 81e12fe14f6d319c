"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def shakespeare_path() -> Path:
    """The shared offline copy of Tiny Shakespeare (``<repo>/../shared/data``); skips if absent.

    Tests point ``data_dir`` / ``RNN_DATA_DIR`` here so the network is never touched.
    """
    path = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {path}")
    return path
