"""The router never imports torch, the engine or the kernels: it runs on small CPU pods."""

import subprocess
import sys

import pytest

from tests.router.servers import redis_server

pytestmark = pytest.mark.integration
__all__ = ["redis_server"]

CHECK = """
import asyncio, sys
from oss_serve.common.settings import Settings
from oss_serve.router.server import RouterServer
import oss_serve.commands.router, oss_serve.router.chat, oss_serve.router.grpc_api

async def main():
    server = RouterServer(Settings(redis_url=sys.argv[1], grpc_port=0))
    await server.start()
    await asyncio.sleep(0.3)
    await server.stop()

asyncio.run(main())
banned = ("torch", "oss_serve.workers", "oss_serve.kernels", "oss_serve.cluster", "ray")
print(sorted(m for m in sys.modules if m.split(".")[0] in banned or m.startswith(banned[1:])))
"""


def test_a_running_router_has_not_imported_torch_workers_kernels_or_ray(redis_server):
    out = subprocess.run(
        [sys.executable, "-c", CHECK, redis_server.url], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
