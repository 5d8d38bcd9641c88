import io
import json
import logging

import pytest

from oss_serve.common.logging import configure_logging, get_logger, redact

pytestmark = pytest.mark.unit


def test_json_lines_off_a_terminal_carry_fields():
    stream = io.StringIO()
    configure_logging("info", "auto", stream=stream)
    get_logger("oss_serve.test").info("replica ready", replica_id="r0", kv_blocks=12)
    entry = json.loads(stream.getvalue().strip())
    assert entry["msg"] == "replica ready"
    assert entry["replica_id"] == "r0" and entry["kv_blocks"] == 12
    assert entry["level"] == "info"


def test_secrets_are_redacted_in_messages_and_fields():
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    log = get_logger("oss_serve.test")
    log.info(
        "auth header Bearer abc.def-123 url redis://:pw123@host:6379", api_key="sk-abcdefgh123"
    )
    out = stream.getvalue()
    assert "abc.def-123" not in out and "pw123" not in out and "sk-abcdefgh123" not in out
    assert "***" in out


def test_console_format_is_readable():
    stream = io.StringIO()
    configure_logging("debug", "console", stream=stream)
    get_logger("x").debug("hello", n=3)
    line = stream.getvalue()
    assert "DEBUG" in line and "hello" in line and "n=3" in line
    assert not line.lstrip().startswith("{")


def test_redact_leaves_ordinary_text_alone():
    assert redact("tokens=12 model=gpt-oss-20b") == "tokens=12 model=gpt-oss-20b"
    assert "xyz" not in redact("password=xyz")


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
