"""The chart's server-side tools on the routers: off by default, the flags' settings when
`router.tools.enabled` lists tools, the browser's search key only from a Secret."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helm.render import VALUE_SETS, of_kind, render, render_error, requires_helm

pytestmark = [pytest.mark.unit, requires_helm]
TOOLS_ON = (
    "router.tools.enabled={python,browser,mcp}",
    "router.tools.maxToolCalls=4",
    "router.tools.mcpAllowedUrls={http://mcp.tools.svc:8000/mcp}",
    "router.tools.browser.docsDir=/docs",
    "router.tools.browser.apiKey.existingSecret=search-key",
)


def _router_env(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    router = next(
        d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "oss-serve-router"
    )
    return router["spec"]["template"]["spec"]["containers"][0]["env"]


def test_routers_run_no_tools_unless_the_values_list_them():
    names = {e["name"] for e in _router_env(render(VALUE_SETS[0]))}
    assert not {n for n in names if "TOOL" in n or "BROWSER" in n or "MCP" in n}


def test_should_set_the_tool_settings_on_routers_when_router_tools_enabled_is_set():
    env = {e["name"]: e for e in _router_env(render(VALUE_SETS[0], sets=TOOLS_ON))}
    assert json.loads(env["OSS_SERVE_TOOLS"]["value"]) == ["python", "browser", "mcp"]
    assert env["OSS_SERVE_MAX_TOOL_CALLS"]["value"] == "4"
    assert json.loads(env["OSS_SERVE_MCP_ALLOWED_URLS"]["value"]) == [
        "http://mcp.tools.svc:8000/mcp"
    ]
    assert env["OSS_SERVE_BROWSER_DOCS_DIR"]["value"] == "/docs"
    assert env["OSS_SERVE_ALLOW_UNSANDBOXED_PYTHON"]["value"] == "false"
    key = env["OSS_SERVE_BROWSER_SEARCH_API_KEY"]
    assert "value" not in key
    assert key["valueFrom"]["secretKeyRef"] == {"name": "search-key", "key": "api-key"}


def test_an_unknown_tool_or_a_key_literal_is_refused():
    assert "enabled" in render_error("router.tools.enabled={shell}")
    assert "value" in render_error("router.tools.browser.apiKey.value=sk-1")
