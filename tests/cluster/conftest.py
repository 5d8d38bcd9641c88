"""Fixtures shared by the cluster tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    """One local Ray runtime per test module (starting it costs seconds): 4 CPUs, ranks
    take half a CPU each."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
