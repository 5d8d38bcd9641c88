"""A replica's end of the long-lived gRPC link to one router (`ReplicaLink.Connect`).

One bidirectional stream per router carries every request that router owns: Start
handshakes and their replies, output tokens, failures, and the router's cancels. When
the stream breaks, every request on it is told (`lost`), and the next use reconnects;
the requests then re-handshake and resume from what the router says its client has.

The replica proves it belongs to the cluster with the cluster token (metadata on the
stream) and, when the routers' link serves TLS, connects with TLS (its own certificate
too, for mTLS); `LinkSecurity` carries both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from oss_serve.common.logging import get_logger
from oss_serve.common.security import CLUSTER_TOKEN_METADATA, REPLICA_ID_METADATA, TlsFiles
from oss_serve.common.settings import Settings
from oss_serve.protos import replica_link_pb2, replica_link_pb2_grpc

log = get_logger(__name__)
CONNECT_TIMEOUT_S = 2.0
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class LinkDown(ConnectionError):
    """The router cannot be reached (or the stream to it broke)."""


@dataclass(frozen=True)
class LinkSecurity:
    """How a replica proves itself to the routers' link, and how it reaches it."""

    cluster_token: str | None = None
    credentials: grpc.ChannelCredentials | None = None  # None = plain TCP
    server_name: str | None = None  # the name expected in the router's certificate

    @classmethod
    def from_settings(cls, settings: Settings) -> LinkSecurity:
        """TLS when a CA to verify the routers is given (--tls-ca)."""
        tls = TlsFiles.from_settings(settings)
        token = settings.cluster_token
        return cls(
            cluster_token=token.get_secret_value() if token is not None else None,
            credentials=tls.channel_credentials() if tls.ca is not None else None,
            server_name=settings.tls_server_name,
        )

    def channel(self, address: str) -> grpc.aio.Channel:
        if self.credentials is None:
            return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        options: list[tuple[str, str | int]] = list(_CHANNEL_OPTIONS)
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(address, self.credentials, options=options)

    def metadata(self, replica_id: str) -> tuple[tuple[str, str], ...]:
        token = ((CLUSTER_TOKEN_METADATA, self.cluster_token),) if self.cluster_token else ()
        return (*token, (REPLICA_ID_METADATA, replica_id))


class RequestSession:
    """One delivery's view of the link: its Start reply, a cancel, or the link's loss."""

    def __init__(self, key: tuple[str, str]) -> None:
        self.key = key
        self.reply: asyncio.Future[replica_link_pb2.StartReply] = (
            asyncio.get_running_loop().create_future()
        )
        self.cancel: replica_link_pb2.Cancel | None = None
        self.stopped = asyncio.Event()  # set on cancel or link loss
        self.finished = asyncio.Event()  # the router has the finish: safe to acknowledge
        self.lost = False

    def on_cancel(self, cancel: replica_link_pb2.Cancel) -> None:
        self.cancel = cancel
        self.stopped.set()

    def on_lost(self) -> None:
        self.lost = True
        if not self.reply.done():
            self.reply.set_exception(LinkDown("the link to the router broke"))
        self.stopped.set()


class RouterLink:
    def __init__(self, address: str, replica_id: str, security: LinkSecurity | None = None) -> None:
        self.address = address
        self.replica_id = replica_id
        self.security = security or LinkSecurity()
        self._channel: grpc.aio.Channel | None = None
        self._outgoing: asyncio.Queue[replica_link_pb2.ReplicaMessage | None] | None = None
        self._sessions: dict[tuple[str, str], RequestSession] = {}
        self._reader: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def connect(self) -> None:
        """Open the stream (if not open); raises LinkDown when the router is unreachable."""
        async with self._connect_lock:
            if self.connected:
                return
            await self._close_channel()
            channel = self.security.channel(self.address)
            try:
                await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
            except (TimeoutError, grpc.aio.AioRpcError) as err:
                await channel.close()
                raise LinkDown(f"router {self.address} unreachable") from err
            outgoing: asyncio.Queue[replica_link_pb2.ReplicaMessage | None] = asyncio.Queue()
            outgoing.put_nowait(
                replica_link_pb2.ReplicaMessage(
                    hello=replica_link_pb2.Hello(replica_id=self.replica_id)
                )
            )
            call = replica_link_pb2_grpc.ReplicaLinkStub(channel).Connect(
                _drain(outgoing), metadata=self.security.metadata(self.replica_id)
            )
            self._channel, self._outgoing = channel, outgoing
            self._reader = asyncio.create_task(self._read(call, outgoing))

    def open(self, request_id: str, entry_id: str) -> RequestSession:
        key = (request_id, entry_id)
        session = RequestSession(key)
        self._sessions[key] = session
        return session

    def close(self, session: RequestSession) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]

    def send(self, message: replica_link_pb2.ReplicaMessage) -> None:
        """Queue a message; if the link breaks before it is sent, the sessions learn of it."""
        if self._outgoing is None or not self.connected:
            raise LinkDown(f"no link to router {self.address}")
        self._outgoing.put_nowait(message)

    async def start(
        self, session: RequestSession, start: replica_link_pb2.Start, timeout_s: float
    ) -> replica_link_pb2.StartReply:
        self.send(replica_link_pb2.ReplicaMessage(start=start))
        try:
            return await asyncio.wait_for(asyncio.shield(session.reply), timeout_s)
        except TimeoutError:
            raise LinkDown(f"router {self.address} did not answer Start") from None

    async def _read(
        self,
        call: grpc.aio.StreamStreamCall,
        outgoing: asyncio.Queue[replica_link_pb2.ReplicaMessage | None],
    ) -> None:
        try:
            async for message in call:
                self._dispatch(message)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                log.error(
                    "the router refused this replica: give it the routers' cluster token "
                    "(OSS_SERVE_CLUSTER_TOKEN)",
                    router=self.address,
                )
            else:
                log.warning("router link broke", router=self.address, code=str(err.code()))
        finally:
            outgoing.put_nowait(None)
            for session in list(self._sessions.values()):
                session.on_lost()
            self._sessions.clear()

    def _dispatch(self, message: replica_link_pb2.RouterMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "start_reply":
            reply = message.start_reply
            session = self._sessions.get((reply.request_id, reply.entry_id))
            if session is not None and not session.reply.done():
                session.reply.set_result(reply)
        elif kind == "cancel":
            cancel = message.cancel
            session = self._sessions.get((cancel.request_id, cancel.entry_id))
            if session is not None:
                session.on_cancel(cancel)
        elif kind == "finished":
            session = self._sessions.get((message.finished.request_id, message.finished.entry_id))
            if session is not None:
                session.finished.set()

    async def _close_channel(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
            self._channel = None

    async def aclose(self) -> None:
        if self._outgoing is not None:
            self._outgoing.put_nowait(None)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._close_channel()


async def _drain(
    outgoing: asyncio.Queue[replica_link_pb2.ReplicaMessage | None],
) -> AsyncIterator[replica_link_pb2.ReplicaMessage]:
    while (message := await outgoing.get()) is not None:
        yield message


class RouterLinks:
    """The replica's links, one per router address, opened on first use."""

    def __init__(self, replica_id: str, security: LinkSecurity | None = None) -> None:
        self.replica_id = replica_id
        self.security = security or LinkSecurity()
        self._links: dict[str, RouterLink] = {}

    def get(self, address: str) -> RouterLink:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = RouterLink(address, self.replica_id, self.security)
        return link

    async def aclose(self) -> None:
        for link in self._links.values():
            await link.aclose()
        self._links.clear()
