"""Credentials that routers and replicas share: the cluster token a replica presents on
the link to a router, and the TLS material (PEM files) of the router's ports and of the
replicas' link connections.

The token travels as gRPC metadata and is compared in constant time; it is never logged
(settings hold it as a SecretStr, and `common.logging` masks fields named like it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc

from oss_serve.common.settings import Settings

CLUSTER_TOKEN_METADATA = "x-oss-serve-cluster-token"
REPLICA_ID_METADATA = "x-oss-serve-replica-id"  # who claims to call (logged when refused)


def new_cluster_token() -> str:
    """A fresh random token (256 bits), as `oss-serve up` generates for its run."""
    return "oss-cluster-" + secrets.token_urlsafe(32)


def tokens_match(presented: str, expected: str) -> bool:
    """Constant time in the tokens' contents and lengths (digests are compared)."""
    presented_digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
    expected_digest = hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(presented_digest, expected_digest)


class TlsConfigError(ValueError):
    """TLS flags that do not fit together, or a PEM file that cannot be read."""


@dataclass(frozen=True)
class TlsFiles:
    """--tls-cert / --tls-key / --tls-ca, read once."""

    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    ca_path: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TlsFiles:
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise TlsConfigError("--tls-cert and --tls-key go together: give both or neither")
        return cls(
            cert=_read_pem(settings.tls_cert, "--tls-cert"),
            key=_read_pem(settings.tls_key, "--tls-key"),
            ca=_read_pem(settings.tls_ca, "--tls-ca"),
            cert_path=settings.tls_cert,
            key_path=settings.tls_key,
            ca_path=settings.tls_ca,
        )

    @property
    def serves_tls(self) -> bool:
        return self.cert is not None and self.key is not None

    def server_credentials(self, *, require_client_cert: bool) -> grpc.ServerCredentials:
        """TLS for a gRPC port; with `require_client_cert` (and a CA) peers must present a
        certificate signed by the CA (mTLS)."""
        assert self.cert is not None and self.key is not None
        mutual = require_client_cert and self.ca is not None
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.ca if mutual else None,
            require_client_auth=mutual,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """A replica's side: verify the router with the CA, present our certificate if any."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def _read_pem(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise TlsConfigError(f"{flag} {path}: {err.strerror or err}") from err
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data
