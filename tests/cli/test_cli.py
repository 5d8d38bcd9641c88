import subprocess
import sys

import pytest
from typer.testing import CliRunner

from oss_serve.cli import app

pytestmark = pytest.mark.unit
SUBCOMMANDS = ["up", "router", "replica", "plan", "bench", "inspect", "finetune", "autoscale"]
runner = CliRunner()


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "oss_serve.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("oss-serve ")
