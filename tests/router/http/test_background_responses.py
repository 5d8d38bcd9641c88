"""Background responses with the official `openai` client against the real stack (Redis, a
tiny-model replica, two in-process routers): polled to completion, cancelled through
another router (the replica frees its KV), the event stream resumed after a sequence
number on another router, hidden from other keys, refused without `store`; and a router
process killed mid-run: its response is reported failed once its lease lapses."""

from __future__ import annotations

import time

import httpx
import openai
import pydantic
import pytest
from openai.types.responses import ResponseStreamEvent

from oss_serve.router.http.background_runs import LEASE_S
from tests.router.auth.helpers import add_key
from tests.router.http.stack import API_KEY, TINY_MODEL
from tests.router.stack import http_url, start_router

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
LONG = 900  # tokens: ~10 s of decoding on the tiny CPU model, far longer than the checks
TERMINAL = ("completed", "incomplete", "failed", "cancelled")
STREAM_EVENT = pydantic.TypeAdapter(ResponseStreamEvent)  # the client's own event types


@pytest.fixture(scope="module")
def routers(stack):
    """Two routers on one Redis: the test's `client` and `other` (another router)."""
    second = stack.routers[1] if len(stack.routers) > 1 else stack.add_router()
    return stack.router, second


@pytest.fixture(scope="module")
def client(routers):
    return openai.OpenAI(base_url=routers[0].base_url, api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def other(routers):
    return openai.OpenAI(base_url=routers[1].base_url, api_key=API_KEY, max_retries=0)


def _poll(
    client: openai.OpenAI,
    response_id: str,
    until: tuple[str, ...],
    timeout_s: float,
    *,
    with_output: bool = False,
):
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.responses.retrieve(response_id)
        if response.status in until and (response.output or not with_output):
            return response
        assert time.monotonic() < deadline, response.status
        time.sleep(0.05)


def _text(response) -> str:
    """All the text of a response's items so far (reasoning and message alike)."""
    parts = [part for item in response.output for part in getattr(item, "content", None) or ()]
    return "".join(getattr(part, "text", "") for part in parts)


def _strictly_parsed(event: object) -> str:
    """The type an event validates as in the client's own models, usage left aside (the
    newest SDK wants `cache_write_tokens`, which oss-serve's usage does not report)."""
    data = event.to_dict()  # type: ignore[attr-defined]
    if isinstance(data.get("response"), dict):
        data["response"].pop("usage", None)
    return str(STREAM_EVENT.validate_python(data).type)


def _wait_idle(stack, timeout_s: float = 15.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        load = stack.replica_load()
        if load["running"] == "0" and load["kv_blocks_free"] == load["kv_blocks_total"]:
            return load
        assert time.monotonic() < deadline, load
        time.sleep(0.05)


def test_background_response_is_queued_then_polled_to_completion(client, other):
    created = client.responses.create(
        model=TINY_MODEL, input="Say hello.", background=True, max_output_tokens=12
    )
    assert created.status == "queued" and created.background is True and created.output == []
    done = _poll(other, created.id, TERMINAL, 60)  # any router answers the poll
    assert done.status in ("completed", "incomplete")
    assert done.background is True and done.error is None
    assert done.usage is not None and 0 < done.usage.output_tokens <= 12
    assert done.output and all(item.status == "completed" for item in done.output)
    assert client.responses.retrieve(created.id).model_dump() == done.model_dump()


def test_cancel_through_another_router_stops_the_generation(stack, client, other):
    created = client.responses.create(
        model=TINY_MODEL,
        input="Count for a long time.",
        background=True,
        max_output_tokens=LONG,
        extra_body={"ignore_eos": True},
    )
    running = _poll(other, created.id, ("in_progress",), 30, with_output=True)  # output so far
    started_s = time.monotonic()
    cancelled = other.responses.cancel(created.id)  # another router than the one running it
    assert cancelled.status == "cancelled" and cancelled.background is True
    assert _text(cancelled).startswith(_text(running)) and cancelled.output
    _wait_idle(stack)  # the replica stopped it and freed its KV blocks
    assert time.monotonic() - started_s < 5.0  # the rest of 900 tokens would take far longer
    again = client.responses.retrieve(created.id)
    assert again.status == "cancelled"
    assert again.usage is None or again.usage.output_tokens < LONG
    assert other.responses.cancel(created.id).model_dump() == again.model_dump()  # idempotent


def test_stream_resumes_after_a_sequence_number_on_another_router(client, other):
    stream = client.responses.create(
        model=TINY_MODEL, input="Tell me a story.", background=True, stream=True,
        max_output_tokens=24, extra_body={"ignore_eos": True},
    )  # fmt: skip
    first = []
    for event in stream:
        first.append(event)
        if event.sequence_number == 5:
            break
    stream.close()  # the client goes away; the response runs on
    assert [e.type for e in first[:2]] == ["response.created", "response.queued"]
    assert first[0].response.status == "queued" and first[0].response.background is True
    response_id = first[0].response.id
    rest = list(other.responses.retrieve(response_id, stream=True, starting_after=5))
    assert [e.sequence_number for e in rest] == list(range(6, 6 + len(rest)))
    assert rest[-1].type == "response.incomplete"  # max_output_tokens with ignore_eos
    assert rest[-1].response.usage.output_tokens == 24
    everything = list(client.responses.retrieve(response_id, stream=True))
    assert [e.model_dump() for e in everything] == [e.model_dump() for e in first + rest]
    for event in everything:  # each one validates strictly as the event type it names
        assert _strictly_parsed(event) == event.type
    assert everything[2].type == "response.in_progress"
    assert everything[2].response.status == "in_progress"
    text = "".join(e.delta for e in everything if e.type == "response.output_text.delta")
    final = other.responses.retrieve(response_id)
    assert final.status == "incomplete" and final.output_text == text


def test_a_background_response_is_not_found_under_another_key(stack, client):
    created = client.responses.create(
        model=TINY_MODEL, input="Mine.", background=True, stream=False, max_output_tokens=4
    )
    stranger = openai.OpenAI(
        base_url=stack.router.base_url,
        api_key=add_key(stack.redis_url, stack.namespace),
        max_retries=0,
    )
    for attempt in (
        lambda: stranger.responses.retrieve(created.id),
        lambda: stranger.responses.cancel(created.id),
        lambda: list(stranger.responses.retrieve(created.id, stream=True)),
        lambda: stranger.responses.delete(created.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert _poll(client, created.id, TERMINAL, 60).status in ("completed", "incomplete")


def test_refusals_name_the_field(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=TINY_MODEL, input="x", background=True, store=False)
    assert refused.value.body["param"] == "store"
    foreground = client.responses.create(model=TINY_MODEL, input="x", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError) as not_background:
        client.responses.cancel(foreground.id)
    assert not_background.value.body["param"] == "response_id"
    polled_only = client.responses.create(
        model=TINY_MODEL, input="x", background=True, max_output_tokens=2
    )
    with pytest.raises(openai.BadRequestError) as not_streamed:
        list(client.responses.retrieve(polled_only.id, stream=True))
    assert not_streamed.value.body["param"] == "stream"
    url = f"{client.base_url}responses/{polled_only.id}"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for query, field in (("stream=yes", "stream"), ("stream=true&starting_after=x", "starting_after"),
                         ("stream=true&starting_after=-2", "starting_after")):  # fmt: skip
        refused_query = httpx.get(f"{url}?{query}", headers=headers)
        assert refused_query.status_code == 400
        assert refused_query.json()["error"]["param"] == field
    done = _poll(client, polled_only.id, TERMINAL, 60)
    assert client.responses.cancel(polled_only.id).model_dump() == done.model_dump()
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_missing")


def test_a_dead_routers_response_is_reported_failed_after_its_lease(stack, client, tmp_path):
    doomed, _ = start_router(
        stack.redis_url, stack.namespace, tmp_path, "doomed", extra_args=["--api-key", API_KEY]
    )
    try:
        base_url = http_url(doomed)
        _wait_ready(base_url)
        on_doomed = openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0)
        stream = on_doomed.responses.create(
            model=TINY_MODEL, input="Go on and on.", background=True, stream=True,
            max_output_tokens=LONG, extra_body={"ignore_eos": True},
        )  # fmt: skip
        seen = [event for event, _ in zip(stream, range(4), strict=False)]
        response_id = seen[0].response.id
        assert _poll(client, response_id, (*TERMINAL, "in_progress"), 30).status == "in_progress"
        doomed.kill()
        killed_s = time.monotonic()
        failed = _poll(client, response_id, TERMINAL, LEASE_S + 10)
    finally:
        doomed.kill()
        doomed.stop()
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "server_error" and "lease" in failed.error.message
    assert time.monotonic() - killed_s < LEASE_S + 5
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=3))
    assert rest[0].sequence_number == 4 and rest[-1].type == "response.failed"
    _wait_idle(stack)  # the replica dropped the dead router's request


def _wait_ready(base_url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{base_url}/ready").status_code != 200:
        assert time.monotonic() < deadline, "the router never became ready"
        time.sleep(0.1)
