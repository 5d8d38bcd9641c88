"""`oss-serve up --expert-parallel-size 2`: the replica's ranks run as Ray actors of their own
(RayReplica inside the replica actor) and the demo model answers as it does in one process.

(The demo model has one KV head, so it splits over experts, not over attention heads.)
"""

from __future__ import annotations

import json

import openai
import pytest

from oss_serve.workers.data.demo_corpus import WEATHER_TOOL
from tests.e2e.test_up import MODEL, READY_TIMEOUT_S, user
from tests.e2e.up_process import UpProcess, left_behind

pytestmark = [pytest.mark.e2e]


def test_an_expert_parallel_replica_serves_the_demo_model_and_stops_cleanly(tmp_path):
    up = UpProcess(tmp_path, "--expert-parallel-size", "2").start()
    try:
        up.wait_ready(READY_TIMEOUT_S)
        processes = up.tree()
        ranks = [p for p in processes if "RankWorker" in " ".join(p.cmdline())]
        assert len(ranks) == 2, [" ".join(p.cmdline()) for p in processes]
        client = openai.OpenAI(base_url=f"{up.base_url}/v1", api_key=up.api_key(), max_retries=0)
        answer = client.chat.completions.create(
            model=MODEL, messages=user("What is 7 + 5?"), reasoning_effort="low", temperature=0
        )
        assert "12" in (answer.choices[0].message.content or "")
        call = client.chat.completions.create(
            model=MODEL,
            messages=user("What's the weather in Tokyo?"),
            tools=[WEATHER_TOOL],
            temperature=0,
        )
        tool_calls = call.choices[0].message.tool_calls
        assert tool_calls and json.loads(tool_calls[0].function.arguments) == {"location": "Tokyo"}
        assert up.terminate() == 0, up.output()
        assert left_behind(processes) == []
    finally:
        up.kill_tree()
