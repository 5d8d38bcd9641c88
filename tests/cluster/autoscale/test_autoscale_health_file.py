"""The autoscaler's liveness file: fresh after a round, stale when the loop stops."""

from __future__ import annotations

import os
import time

import pytest

from oss_serve.common.health_file import main, touch

pytestmark = pytest.mark.unit


def test_probe_passes_after_a_round_and_fails_when_rounds_stop(tmp_path):
    path = tmp_path / "alive"
    assert main([str(path), "--max-age-s", "60"]) == 1  # no round yet
    touch(path)
    assert main([str(path), "--max-age-s", "60"]) == 0
    old = time.time() - 120
    os.utime(path, (old, old))
    assert main([str(path), "--max-age-s", "60"]) == 1
