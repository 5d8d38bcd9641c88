"""`oss-serve up --expert-parallel-size 2`: the replica's ranks run as Ray actors of their own
(RayEngine inside the replica actor), the demo model answers as it does in one process (a
plain answer, a get_weather tool call and a json_schema answer, whose grammars are rebuilt
on the ranks), a schema that cannot be compiled fails only its request (400), and a replica
whose actor dies comes back with new ranks.

(The demo model has one KV head, so it splits over experts, not over attention heads.)
"""

from __future__ import annotations

import json
import time

import jsonschema
import openai
import psutil
import pytest

from oss_serve.workers.training.demo_corpus import PERSON_FORMAT
from tests.e2e.test_up import MODEL, READY_TIMEOUT_S, user, weather_call
from tests.e2e.up_process import UpProcess, left_behind

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]  # first run: trains the demo model


def ranks(up: UpProcess) -> list[psutil.Process]:
    return [p for p in up.tree() if "RankWorker" in " ".join(p.cmdline())]


def client_of(up: UpProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{up.base_url}/v1", api_key=up.api_key(), max_retries=0)


def ask_7_plus_5(up: UpProcess) -> str:
    reply = client_of(up).chat.completions.create(
        model=MODEL, messages=user("What is 7 + 5?"), reasoning_effort="low", temperature=0
    )
    return reply.choices[0].message.content or ""


def test_an_expert_parallel_replica_serves_restarts_and_stops_cleanly(tmp_path):
    up = UpProcess(tmp_path, "--expert-parallel-size", "2").start()
    try:
        up.wait_ready(READY_TIMEOUT_S)
        first_ranks = ranks(up)
        assert len(first_ranks) == 2, up.output()
        answer = ask_7_plus_5(up)
        assert answer.strip()
        check_grammar_requests(client_of(up))
        assert ranks(up) == first_ranks  # the replica was never restarted
        seen = up.tree()
        # the replica actor dies: its ranks go with it; the launcher releases the replica's
        # placement group (else the new ranks could not be placed) and starts it again
        [actor] = [p for p in seen if "ReplicaHostActor" in " ".join(p.cmdline())]
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
        assert ask_7_plus_5(up) == answer  # the restarted ranks give the same greedy answer
        seen += up.tree()
        assert up.terminate() == 0, up.output()
        assert left_behind(seen) == []
    finally:
        up.kill_tree()


def check_grammar_requests(client: openai.OpenAI) -> None:
    """Tools and response_format on the Ray replica: the single-process answers (test_up)."""
    call = weather_call(client, "Paris").choices[0]
    assert call.finish_reason == "tool_calls" and call.message.tool_calls
    assert json.loads(call.message.tool_calls[0].function.arguments) == {"location": "Paris"}
    uncompilable = {"type": "json_schema", "json_schema": {"name": "bad", "schema": BAD_SCHEMA}}
    with pytest.raises(openai.BadRequestError, match="schema"):
        client.chat.completions.create(
            model=MODEL, messages=user("Hi"), response_format=uncompilable, max_tokens=8
        )  # type: ignore[call-overload]
    reply = client.chat.completions.create(
        model=MODEL,
        messages=user("Zoe is 27 years old."),
        response_format=PERSON_FORMAT,  # type: ignore[arg-type]
        temperature=0,
    )
    value = json.loads(reply.choices[0].message.content or "")
    jsonschema.validate(value, PERSON_FORMAT["json_schema"]["schema"])  # the grammar's promise


BAD_SCHEMA = {"type": "string", "pattern": "(("}  # valid JSON, no grammar: xgrammar refuses it
