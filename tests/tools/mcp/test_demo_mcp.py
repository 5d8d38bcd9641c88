"""The demo MCP server `oss-serve up` runs: what a client lists is what the demo corpus
declares, and its one tool rolls within range or says why not."""

from __future__ import annotations

import random

import pytest

from oss_serve.tools.base import ToolCall
from oss_serve.tools.demo_mcp import DEMO_MCP_LABEL, DEMO_MCP_TOOLS, DemoMcpServer, roll
from oss_serve.tools.mcp_client import McpExecutor, McpToolCache

pytestmark = [pytest.mark.integration]


def executor_for(url: str) -> McpExecutor:
    return McpExecutor(
        server_label=DEMO_MCP_LABEL,
        server_url=url,
        headers={},
        allowed_tools=None,
        timeout_s=10.0,
        output_max_bytes=4096,
        tool_cache=McpToolCache(ttl_s=60),
        field="tools[0]",
    )


async def test_a_client_lists_exactly_the_tools_the_demo_corpus_declares() -> None:
    server = await DemoMcpServer().start()
    try:
        assert tuple(await executor_for(server.url).list_tools()) == DEMO_MCP_TOOLS
    finally:
        await server.stop()


async def test_roll_dice_answers_a_number_on_the_die_and_refuses_a_one_sided_die() -> None:
    server = await DemoMcpServer().start()
    try:
        executor = executor_for(server.url)
        rolls = [
            await executor.call(ToolCall(f"{DEMO_MCP_LABEL}.roll_dice", '{"sides": 6}', "chain"))
            for _ in range(5)
        ]
        assert all(not out.error and 1 <= int(out.text) <= 6 for out in rolls), rolls
        refused = await executor.call(
            ToolCall(f"{DEMO_MCP_LABEL}.roll_dice", '{"sides": 1}', "chain")
        )
        assert refused.error and "at least 2 sides" in refused.text
    finally:
        await server.stop()


async def test_a_stopped_server_frees_its_port_for_the_next() -> None:
    first = await DemoMcpServer().start()
    port = first.port
    await first.stop()
    second = await DemoMcpServer(port=port).start()
    await second.stop()


def test_a_seeded_roll_is_reproducible_and_in_range() -> None:
    values = [roll(20, random.Random(seed)) for seed in range(50)]
    assert values == [roll(20, random.Random(seed)) for seed in range(50)]
    assert min(values) >= 1 and max(values) <= 20 and len(set(values)) > 5
