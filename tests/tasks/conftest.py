"""Fixtures for the task tests: where the shared real data lives (`../shared/data` from the repo root,
or `$LOOPLM_SHARED_DATA`); tests that need a file skip with a visible reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def shared_data():
    """`shared_data("gsm8k/test.jsonl")` -> the Path, or skip when it is missing."""
    root = Path(os.environ.get("LOOPLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

    def get(rel: str) -> Path:
        path = root / rel
        if not path.exists():
            pytest.skip(f"shared data file {path} is absent (set LOOPLM_SHARED_DATA)")
        return path

    return get
