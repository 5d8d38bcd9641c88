"""The tool flags of `oss-serve router` and `up` as settings, and up's demo default."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from oss_serve.cli import app
from oss_serve.commands._common import settings_from_flags, tool_flags
from oss_serve.commands.up import DEMO_DOCS_DIR, _with_demo_tools

pytestmark = pytest.mark.unit


def test_the_flags_become_the_tool_settings():
    flags = tool_flags("python, browser", Path("/docs"), None, "http://a/mcp,http://b", True, 3)
    settings = settings_from_flags(None, **flags)
    assert settings.tools == ["python", "browser"]
    assert settings.browser_docs_dir == Path("/docs")
    assert settings.mcp_allowed_urls == ["http://a/mcp", "http://b"]
    assert settings.allow_unsandboxed_python and settings.max_tool_calls == 3
    assert settings_from_flags(None, **tool_flags("none", None, None, None, None, None)).tools == []


def test_an_unknown_tool_is_refused_with_exit_code_2():
    result = CliRunner().invoke(app, ["router", "--tools", "shell"])
    assert result.exit_code == 2 and "tools" in result.output


def test_up_serving_the_demo_model_enables_its_tools_and_the_demo_mcp_server():
    settings, demo_mcp_server = _with_demo_tools(settings_from_flags(None))
    assert set(settings.tools) <= {"python", "browser", "mcp"}
    assert {"browser", "mcp"} <= set(settings.tools) and demo_mcp_server
    assert settings.browser_docs_dir == DEMO_DOCS_DIR and any(DEMO_DOCS_DIR.glob("*.md"))
    chosen = settings_from_flags(None, **tool_flags("none", None, None, None, None, None))
    assert _with_demo_tools(chosen) == (chosen, False)
    real_model = settings_from_flags(None, model="/models/gpt-oss-20b")
    assert _with_demo_tools(real_model) == (real_model, False)


@pytest.mark.parametrize("command", ["router", "up"])
def test_both_commands_take_the_tool_flags(command):
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    flags = {flag for param in params for flag in param.opts}
    wanted = {"--tools", "--browser-docs-dir", "--browser-search-url", "--mcp-allowed-urls",
              "--allow-unsandboxed-python", "--max-tool-calls"}  # fmt: skip
    assert wanted <= flags
