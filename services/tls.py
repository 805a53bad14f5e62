"""TLS for the coordinator's gRPC port: the server's certificate and the clients' trust, read from PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from kdmkb.services.errors import ConfigError


def read_pem(path: Path | None, option: str) -> bytes | None:
    """A PEM file's bytes (None for no file); an error names the option and the file, never its contents."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{option}: cannot read {path} ({error.strerror})") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{option}: {path} is not a PEM file")
    return data


@dataclass(frozen=True)
class ServerTLS:
    """The server's certificate and key; with ``client_ca``, clients must present a certificate it signed (mTLS)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: Path | None, key: Path | None, client_ca: Path | None = None) -> ServerTLS:
        if not cert or not key:
            raise ConfigError("--tls-cert/--tls-key: TLS needs both the server's certificate and its key")
        return cls(read_pem(cert, "--tls-cert"), read_pem(key, "--tls-key"), read_pem(client_ca, "--tls-client-ca"))

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.client_ca, require_client_auth=self.client_ca is not None)


@dataclass(frozen=True)
class ClientTLS:
    """Trust ``ca`` (None: the system's roots) for the server's certificate; ``cert`` and ``key``: this client's own, for mTLS."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_files(cls, ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> ClientTLS:
        if bool(cert) != bool(key):
            raise ConfigError("--tls-cert/--tls-key: a client certificate needs its key, and a key its certificate")
        return cls(read_pem(ca, "--tls-ca"), read_pem(cert, "--tls-cert"), read_pem(key, "--tls-key"))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert)
