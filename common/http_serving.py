"""Serving an ASGI app inside an event loop someone else owns: a listening TCP socket bound
up front (so the port is known and a taken one fails at once) and a uvicorn server that
leaves SIGINT/SIGTERM to the owner, who stops it by setting `should_exit`."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the owning process handles the signals and stops this server itself


def bind_listening_socket(host: str, port: int, what: str, backlog: int = 2048) -> socket.socket:
    """A non-blocking TCP socket listening on host:port (0: a free port); `what` names the
    server in the error when the address cannot be taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket says it is TCP; with proto 0 each keep-alive answer waited ~40 ms (Nagle + the
    # client's delayed ACK) between its header and body writes.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen for {what} on {host}:{port} (port taken?): {err}") from err
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
