"""`oss-serve up --expert-parallel-size 2`: the replica's ranks run as Ray actors of their own
(RayReplica inside the replica actor), the demo model answers as it does in one process, and
a replica whose actor dies comes back with new ranks.

(The demo model has one KV head, so it splits over experts, not over attention heads. Tool
calls and response formats are not tried here: a Ray replica cannot ship their grammar
processors to its ranks yet; see /work/notes/issue-11-up.md.)
"""

from __future__ import annotations

import time

import openai
import psutil
import pytest

from tests.e2e.test_up import MODEL, READY_TIMEOUT_S, user
from tests.e2e.up_process import UpProcess, left_behind

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]  # first run: trains the demo model


def ranks(up: UpProcess) -> list[psutil.Process]:
    return [p for p in up.tree() if "RankWorker" in " ".join(p.cmdline())]


def ask_7_plus_5(up: UpProcess) -> str:
    client = openai.OpenAI(base_url=f"{up.base_url}/v1", api_key=up.api_key(), max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL, messages=user("What is 7 + 5?"), reasoning_effort="low", temperature=0
    )
    return reply.choices[0].message.content or ""


def test_an_expert_parallel_replica_serves_restarts_and_stops_cleanly(tmp_path):
    up = UpProcess(tmp_path, "--expert-parallel-size", "2").start()
    try:
        up.wait_ready(READY_TIMEOUT_S)
        first_ranks = ranks(up)
        assert len(first_ranks) == 2, up.output()
        assert "12" in ask_7_plus_5(up)
        seen = up.tree()
        # the replica actor dies: its ranks go with it; the launcher releases the replica's
        # placement group (else the new ranks could not be placed) and starts it again
        [actor] = [p for p in seen if "ReplicaActor" in " ".join(p.cmdline())]
        actor.kill()
        deadline = time.monotonic() + 120
        while "✓ replica 0 restarted" not in up.output():
            assert time.monotonic() < deadline and "could not restart" not in up.output(), (
                up.output()
            )
            time.sleep(0.2)
        up.wait_ready(60)
        new_ranks = ranks(up)
        assert len(new_ranks) == 2 and not {p.pid for p in new_ranks} & {p.pid for p in first_ranks}
        assert "12" in ask_7_plus_5(up)
        seen += up.tree()
        assert up.terminate() == 0, up.output()
        assert left_behind(seen) == []
    finally:
        up.kill_tree()
