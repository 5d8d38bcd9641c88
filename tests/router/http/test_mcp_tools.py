"""MCP servers as tools of a request, against a real MCP server (the SDK's MCPServer, over
streamable HTTP and SSE) and a real router + replica + Redis: the server's tools are listed
first (the `mcp_list_tools` item and its events, parsed by the openai models), declared as
a namespace in the developer message, called through the request's tools with their
result or error as the model's next message; an unreachable server is a 424, one outside the
allow-list a 400, and the headers reach the server but never the response."""

from __future__ import annotations

import httpx
import openai
import pytest

from oss_serve.common.settings import Settings
from oss_serve.common.vocab import o200k_harmony
from oss_serve.harmony import BuiltinToolCall, render_responses_request
from oss_serve.harmony.server_tools import server_tool_request
from oss_serve.router.tool_set import open_request_tools
from oss_serve.tools.server_tools import ServerTools
from tests.router.http.stack import API_KEY
from tests.router.http.tool_events import check_documented_order, parsed
from tests.router.servers import free_port
from tests.tools.mcp.conftest import McpTestServer, mcp_server  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
LABEL = "calc"


def _entry(url: str, **extra: object) -> dict[str, object]:
    return {
        "type": "mcp",
        "server_label": LABEL,
        "server_url": url,
        "require_approval": "never",
        **extra,
    }


def _url(transport: str, served: McpTestServer) -> str:
    return served.streamable_url if transport == "streamable" else served.sse_url


@pytest.fixture(scope="module")
def mcp_router(stack, mcp_server):  # noqa: F811
    _, served = mcp_server
    return stack.add_router(tools=["mcp"], mcp_allowed_urls=[served.base_url])


async def test_a_tool_of_the_mcp_server_is_declared_and_called(mcp_server):  # noqa: F811
    transport, served = mcp_server
    server_tools = ServerTools.from_settings(
        Settings(tools=["mcp"], mcp_allowed_urls=[served.base_url])
    )
    entry = _entry(_url(transport, served), allowed_tools=["add", "fail"])
    request = server_tool_request([entry])
    tools = await open_request_tools(server_tools, request, "ts_mcp")
    try:
        [listing] = tools.listings
        assert sorted(t.name for t in listing.tools) == ["add", "fail"]
        prompt = render_responses_request(
            {"input": "2 + 3?", "tools": [entry]}, tool_namespaces=tools.namespaces
        )
        text = o200k_harmony().decode(prompt)
        assert f"## {LABEL}\n\nnamespace {LABEL} {{" in text and "type add = (_: {" in text
        added = await tools.call(BuiltinToolCall(f"{LABEL}.add", "commentary", '{"a":2,"b":3}'))
        assert (added.error, added.text, added.author) == (False, "5", f"{LABEL}.add")
        failed = await tools.call(BuiltinToolCall(f"{LABEL}.fail", "commentary", "{}"))
        assert failed.error and "broken on purpose" in failed.text
        refused = await tools.call(BuiltinToolCall(f"{LABEL}.slow", "commentary", "{}"))
        assert refused.error  # not among allowed_tools: the model reads why, nothing runs
    finally:
        await tools.aclose()
        await server_tools.aclose()


def test_the_listing_streams_first_in_order_and_headers_stay_private(
    mcp_router,
    mcp_server,  # noqa: F811
):
    transport, served = mcp_server
    client = openai.OpenAI(base_url=mcp_router.base_url, api_key=API_KEY, max_retries=0)
    entry = _entry(_url(transport, served), headers={"X-Secret-Token": "s3cr3t"})
    stream = client.responses.create(
        input="Add 2 and 3.", tools=[entry], max_output_tokens=8, temperature=0, stream=True
    )
    events = [event.model_dump(mode="json", exclude_unset=True) for event in stream]
    parsed(events)
    kinds = check_documented_order(events)
    assert kinds[0] == "mcp_list_tools"
    listing = next(e["item"] for e in events if e["type"] == "response.output_item.done")
    assert listing["server_label"] == LABEL
    assert {t["name"] for t in listing["tools"]} == {"add", "fail", "slow", "long_text"}
    assert any(h.get("x-secret-token") == "s3cr3t" for h in served.received_headers)
    final = events[-1]["response"]
    assert "s3cr3t" not in str(final) and "headers" not in final["tools"][0]
    stored = client.responses.retrieve(final["id"])
    assert "s3cr3t" not in stored.model_dump_json()


def test_an_mcp_server_that_cannot_be_listed_is_a_424_naming_its_url(stack):
    nothing_url = f"http://127.0.0.1:{free_port()}"
    router = stack.add_router(tools=["mcp"], mcp_allowed_urls=[nothing_url])
    reply = httpx.post(
        f"{router.base_url}/responses",
        json={"input": "hi", "tools": [_entry(f"{nothing_url}/mcp")]},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert reply.status_code == 424, reply.text
    assert reply.json()["error"]["param"] == "tools[0].server_url"


def test_an_mcp_url_outside_the_allow_list_is_a_400_naming_it(mcp_router):
    client = openai.OpenAI(base_url=mcp_router.base_url, api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(input="hi", tools=[_entry("http://198.51.100.7/mcp")])
    assert refused.value.body["param"] == "tools[0].server_url"
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            input="hi", tools=[_entry("http://198.51.100.7/mcp", require_approval="always")]
        )
    assert refused.value.body["param"] == "tools[0].require_approval"


def test_chat_takes_the_same_entries_in_server_tools(mcp_router, mcp_server):  # noqa: F811
    transport, served = mcp_server
    client = openai.OpenAI(base_url=mcp_router.base_url, api_key=API_KEY, max_retries=0)
    body = {"server_tools": [_entry(_url(transport, served))]}
    messages = [{"role": "user", "content": "Add 2 and 3."}]
    plain = client.chat.completions.create(
        model="", messages=messages, max_tokens=8, temperature=0, extra_body=body
    )
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage.prompt_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="", messages=messages, max_tokens=8, temperature=0, extra_body=body,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="", messages=messages, n=2, extra_body=body)
    assert refused.value.body["param"] == "n"
    function = {"server_tools": [{"type": "function", "function": {"name": "f"}}]}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="", messages=messages, extra_body=function)
    assert refused.value.body["param"] == "server_tools[0].type"
