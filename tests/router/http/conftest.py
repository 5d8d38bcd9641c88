"""The HTTP tests run on the session's serving stack (tests/router/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def stack(serving_stack):
    return serving_stack
