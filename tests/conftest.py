"""Shared test helpers: where the test media live, and a skip when they are absent (a user's machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

# ../shared/data next to the repository (see its SOURCES.md); the project never commits these files.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_shared_data(*parts: str) -> Path:
    """Return `SHARED_DATA / parts`, skipping the calling test when it does not exist."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test media not found: {path}")
    return path


@pytest.fixture
def shared_data() -> Path:
    """The shared test media folder; skips the test when it is absent."""
    return require_shared_data()
