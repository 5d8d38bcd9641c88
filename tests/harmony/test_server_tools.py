"""Server-side tools in harmony: the hosted tool entries read from a request, the built-in
and MCP namespaces rendered as openai-harmony renders them, the tool loop's next prompt,
and an earlier response's server-side calls as input items."""

from __future__ import annotations

import pytest
from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    Message,
    Role,
    SystemContent,
    ToolDescription,
    ToolNamespaceConfig,
)

from oss_serve.common.vocab import CALL
from oss_serve.harmony import HarmonyRequestError, render_responses_request
from oss_serve.harmony.conversation import tool_output_message
from oss_serve.harmony.render import continue_after_tool
from oss_serve.harmony.server_tools import mcp_namespace, server_tool_request
from oss_serve.harmony.tool_schema import ToolSpec
from tests.harmony import oracle

pytestmark = pytest.mark.unit

DATE = "2025-06-28"
FORECAST = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
MCP_ENTRY = {
    "type": "mcp",
    "server_label": "weather",
    "server_url": "http://127.0.0.1:9/mcp",
    "server_description": "Forecasts by city.",
    "require_approval": "never",
}


def _oracle_tokens(messages: list[Message]) -> list[int]:
    return oracle.encoding().render_conversation_for_completion(
        Conversation.from_messages(messages), Role.ASSISTANT
    )


def _system(*, browser: bool, python: bool) -> Message:
    system = SystemContent.new().with_conversation_start_date(DATE)
    if browser:
        system = system.with_browser_tool()
    if python:
        system = system.with_python_tool()
    return Message.from_role_and_content(Role.SYSTEM, system)


def test_hosted_entries_are_read_and_function_entries_skipped():
    request = server_tool_request(
        [
            {"type": "function", "name": "f"},
            {"type": "web_search_preview"},
            {"type": "code_interpreter", "container": {"type": "auto"}},
            {**MCP_ENTRY, "allowed_tools": {"tool_names": ["forecast"]}, "headers": {"X": "1"}},
        ]
    )
    assert dict(request.builtins) == {"browser": "tools[1]", "python": "tools[2]"}
    [server] = request.mcp_servers
    assert (server.field, server.server_label, server.allowed_tools) == (
        "tools[3]",
        "weather",
        ("forecast",),
    )
    assert dict(server.headers) == {"X": "1"}
    assert request.kinds == {"browser": "tools[1]", "python": "tools[2]", "mcp": "tools[3]"}


def test_builtin_and_mcp_tools_render_like_openai_harmony():
    forecast = ToolSpec("forecast", "The forecast of a city.", FORECAST)
    server = server_tool_request([MCP_ENTRY]).mcp_servers[0]
    body = {
        "instructions": "Be brief.",
        "input": "Weather in Paris?",
        "tools": [
            {"type": "web_search"},
            {"type": "code_interpreter", "container": {"type": "auto"}},
            {
                "type": "function",
                "name": "notify",
                "description": "Tell the user.",
                "parameters": None,
            },
            MCP_ENTRY,
        ],
    }
    ours = render_responses_request(
        body,
        date=DATE,
        builtin_tools=("browser", "python"),
        tool_namespaces=[mcp_namespace(server, [forecast])],
    )
    developer = (
        DeveloperContent.new()
        .with_instructions("Be brief.")
        .with_function_tools([ToolDescription.new("notify", "Tell the user.", None)])
        .with_tools(
            ToolNamespaceConfig(
                name="weather",
                description="Forecasts by city.",
                tools=[ToolDescription.new("forecast", "The forecast of a city.", FORECAST)],
            )
        )
    )
    expected = _oracle_tokens(
        [
            _system(browser=True, python=True),
            Message.from_role_and_content(Role.DEVELOPER, developer),
            Message.from_role_and_content(Role.USER, "Weather in Paris?"),
        ]
    )
    assert ours == expected


def test_an_mcp_namespace_alone_does_not_announce_the_functions_channel():
    server = server_tool_request([{**MCP_ENTRY, "server_description": None}]).mcp_servers[0]
    ours = render_responses_request(
        {"input": "hi", "tools": [MCP_ENTRY]},
        date=DATE,
        tool_namespaces=[mcp_namespace(server, [ToolSpec("forecast", "F.", FORECAST)])],
    )
    namespace = ToolNamespaceConfig(
        name="weather", description=None, tools=[ToolDescription.new("forecast", "F.", FORECAST)]
    )
    developer = DeveloperContent.new().with_tools(namespace)
    expected = _oracle_tokens(
        [
            _system(browser=False, python=False),
            Message.from_role_and_content(Role.DEVELOPER, developer),
            Message.from_role_and_content(Role.USER, "hi"),
        ]
    )
    assert ours == expected


@pytest.mark.parametrize(
    ("call", "result_author", "channel"),
    [
        (
            Message.from_role_and_content(Role.ASSISTANT, "print(6 * 7)")
            .with_channel("analysis")
            .with_recipient("python")
            .with_content_type("code"),
            "python",
            "analysis",
        ),
        (
            Message.from_role_and_content(Role.ASSISTANT, '{"query": "oss-serve"}')
            .with_channel("analysis")
            .with_recipient("browser.search")
            .with_content_type("<|constrain|>json"),
            "browser.search",
            "analysis",
        ),
        (
            Message.from_role_and_content(Role.ASSISTANT, '{"city": "Paris"}')
            .with_channel("commentary")
            .with_recipient("weather.forecast")
            .with_content_type("<|constrain|>json"),
            "weather.forecast",
            "commentary",
        ),
    ],
)
@pytest.mark.parametrize("engine_kept_call_token", [True, False])
def test_the_next_prompt_of_the_loop_is_what_openai_harmony_renders(
    call, result_author, channel, engine_kept_call_token
):
    head = [
        _system(browser=True, python=True),
        Message.from_role_and_content(Role.USER, "question"),
        Message.from_role_and_content(Role.ASSISTANT, "Let me check.").with_channel("analysis"),
    ]
    prompt = _oracle_tokens(head)
    # what the model generated after `<|start|>assistant`: the rest of its call message
    completion = oracle.encoding().render(call)[2:]
    assert completion[-1] == CALL
    if not engine_kept_call_token:
        completion = completion[:-1]
    result = tool_output_message(result_author, "42\n", channel)
    expected = _oracle_tokens(
        [
            *head,
            call,
            Message.from_author_and_content(Author.new(Role.TOOL, result_author), "42\n")
            .with_channel(channel)
            .with_recipient("assistant"),
        ]
    )
    assert continue_after_tool(prompt, completion, result) == expected


def test_an_earlier_responses_server_side_calls_render_and_drop_like_openai_harmony():
    earlier_output = [
        {"type": "mcp_list_tools", "server_label": "weather", "tools": []},
        {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "Compute."}]},
        {"type": "code_interpreter_call", "code": "print(6 * 7)", "container_id": "c",
         "outputs": [{"type": "logs", "logs": "42\n"}]},
        {"type": "web_search_call", "action": {"type": "search", "query": "x"}},
        {"type": "mcp_call", "server_label": "weather", "name": "forecast",
         "arguments": '{"city":"Paris"}', "output": "sunny"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "42, sunny."}]},
    ]  # fmt: skip
    body = {
        "input": [
            {"role": "user", "content": "q1"},
            *earlier_output,
            {"role": "user", "content": "q2"},
        ]
    }
    ours = render_responses_request(body, date=DATE, builtin_tools=("python",))
    messages = [
        _system(browser=False, python=True),
        Message.from_role_and_content(Role.USER, "q1"),
        Message.from_role_and_content(Role.ASSISTANT, "Compute.").with_channel("analysis"),
        Message.from_role_and_content(Role.ASSISTANT, "print(6 * 7)")
        .with_channel("analysis")
        .with_recipient("python")
        .with_content_type("code"),
        Message.from_author_and_content(Author.new(Role.TOOL, "python"), "42\n")
        .with_channel("analysis")
        .with_recipient("assistant"),
        Message.from_role_and_content(Role.ASSISTANT, '{"city":"Paris"}')
        .with_channel("commentary")
        .with_recipient("weather.forecast")
        .with_content_type("<|constrain|>json"),
        Message.from_author_and_content(Author.new(Role.TOOL, "weather.forecast"), "sunny")
        .with_channel("commentary")
        .with_recipient("assistant"),
        Message.from_role_and_content(Role.ASSISTANT, "42, sunny.").with_channel("final"),
        Message.from_role_and_content(Role.USER, "q2"),
    ]
    assert ours == _oracle_tokens(messages)
    text = oracle.encoding().decode(ours)
    assert "print(6 * 7)" not in text  # analysis calls of a finished turn are dropped
    assert "weather.forecast to=assistant" in text  # commentary ones are kept


@pytest.mark.parametrize(
    ("tools", "field"),
    [
        ([{**MCP_ENTRY, "require_approval": "always"}], "tools[0].require_approval"),
        (
            [{k: v for k, v in MCP_ENTRY.items() if k != "require_approval"}],
            "tools[0].require_approval",
        ),
        ([{**MCP_ENTRY, "server_label": "functions"}], "tools[0].server_label"),
        ([{**MCP_ENTRY, "server_label": "a b"}], "tools[0].server_label"),
        ([MCP_ENTRY, MCP_ENTRY], "tools[1].server_label"),
        ([{**MCP_ENTRY, "server_url": None}], "tools[0].server_url"),
        ([{**MCP_ENTRY, "headers": {"X": 1}}], "tools[0].headers.X"),
        ([{**MCP_ENTRY, "allowed_tools": [3]}], "tools[0].allowed_tools[0]"),
        ([{"type": "code_interpreter", "container": "cntr_1"}], "tools[0].container"),
        ([{"type": "web_search"}, {"type": "web_search_preview"}], "tools[1]"),
    ],
)
def test_bad_server_tool_entries_name_the_field(tools, field):
    with pytest.raises(HarmonyRequestError) as error:
        server_tool_request(tools)
    assert error.value.field == field
