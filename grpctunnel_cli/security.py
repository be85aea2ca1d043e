"""Reading the TLS and bearer-token options of the commands, and explaining connections
that fail.

The client side (`call`, `list`, `describe`, `expose`) reads ``--tls``, ``--ca-cert``,
``--cert``/``--key``, ``--servername``, ``--insecure`` and
``--token``/``--token-file``/``$GRPCTUNNEL_TOKEN`` (declared in options.py) into one
`ClientSecurity`: channel credentials, channel options and the ``authorization`` metadata
to send.

grpcio cannot skip the verification of a server's certificate, so ``--insecure`` trusts
whatever certificate the server shows: `fetch_certificate` takes it with one TLS
handshake that verifies nothing, and the channel then trusts that certificate alone
(as a partial chain) under a name it holds.

When a connection fails, grpc's own words ("Socket closed", "WRONG_VERSION_NUMBER") do not
say that TLS and plaintext were mixed up. `explain_failure` turns them into a hint; where
grpc's words are ambiguous it asks the server itself, with one TLS handshake of its own
(`probe_tls`): a TLS server completes it, a plaintext one answers with bytes that are not
TLS, and a server requiring client certificates closes the connection right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from grpctunnel_cli.errors import CliError, ConnectError, TlsMismatchError, UsageError

__all__ = [
    "TOKEN_ENV",
    "ClientSecurity",
    "client_security",
    "explain_failure",
    "fetch_certificate",
    "is_loopback",
    "probe_tls",
    "read_file",
    "token_from",
]

TOKEN_ENV = "GRPCTUNNEL_TOKEN"


def read_file(path: Path, option: str) -> bytes:
    """The bytes of a file named by an option; CliError naming the option if unreadable."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise CliError(f"cannot read {option} {path}: {error.strerror or error}") from None


def token_from(token: str | None, token_file: Path | None) -> str | None:
    """The token given by --token, else --token-file, else $GRPCTUNNEL_TOKEN (client side:
    a token file holds one token)."""
    if token is not None and token_file is not None:
        raise UsageError("give either --token or --token-file, not both")
    if token is not None:
        if not token.strip():
            raise UsageError("--token is empty")
        return token.strip()
    if token_file is not None:
        text = read_file(token_file, "--token-file").decode("utf-8", errors="replace").strip()
        if not text:
            raise CliError(f"--token-file {token_file} is empty")
        if text.startswith("{") or len(text.split()) != 1:
            raise CliError(
                f"--token-file {token_file} must hold just one token "
                "(a JSON token file is for `grpctunnel serve`)"
            )
        return text
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    return from_env or None


@dataclass(frozen=True)
class ClientSecurity:
    """How a client command talks to its server: TLS or not, and which token."""

    tls: bool = False
    ca_cert: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    cert_path: Path | None = None
    key_path: Path | None = None
    token: str | None = None
    server_name: str | None = None  # --servername: the name the certificate must hold
    insecure: bool = False  # --insecure: trust the certificate the server shows
    shown_cert: bytes | None = None  # with --insecure: that certificate (PEM), once fetched
    shown_name: str | None = None  # with --insecure: a name that certificate holds
    authority: str | None = None  # --authority: verified as the name without --servername

    def credentials(self) -> grpc.ChannelCredentials | None:
        """Channel credentials for TLS; None for plaintext."""
        if not self.tls:
            return None
        roots = self.shown_cert if self.insecure else self.ca_cert
        return grpc.ssl_channel_credentials(
            root_certificates=roots, private_key=self.key, certificate_chain=self.cert
        )

    def channel_options(self) -> list[tuple[str, object]]:
        """The channel options TLS needs: the server name to verify, if not the host's."""
        name = self.shown_name if self.insecure else self.server_name
        if not self.tls or name is None:
            return []
        return [("grpc.ssl_target_name_override", name)]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata carrying the token, on every request (none without a token)."""
        if not self.token:
            return ()
        from grpctunnel.gateway.auth import bearer_metadata  # imported only when needed

        return bearer_metadata(self.token)

    def token_hint(self) -> str:
        """What to tell a user whom the server did not authenticate."""
        if self.token:
            return "the server did not accept the token given (--token, --token-file or $GRPCTUNNEL_TOKEN)"
        return "the server requires a token: pass --token or --token-file, or set $GRPCTUNNEL_TOKEN"


def client_security(
    *,
    token: str | None,
    token_file: Path | None,
    tls: bool,
    ca_cert: Path | None,
    cert: Path | None,
    key: Path | None,
    server_name: str | None = None,
    insecure: bool = False,
) -> ClientSecurity:
    """Reads and checks the security options of a client command."""
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together")
    if insecure and ca_cert is not None:
        raise UsageError("give either --insecure or --ca-cert, not both")
    if server_name is not None and not server_name.strip():
        raise UsageError("--servername is empty")
    return ClientSecurity(
        tls=tls or insecure or ca_cert is not None or cert is not None,
        server_name=server_name.strip() if server_name is not None else None,
        insecure=insecure,
        ca_cert=read_file(ca_cert, "--ca-cert") if ca_cert is not None else None,
        cert=read_file(cert, "--cert") if cert is not None else None,
        key=read_file(key, "--key") if key is not None else None,
        cert_path=cert,
        key_path=key,
        token=token_from(token, token_file),
    )


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable only from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# --- explaining failed connections --------------------------------------------------------

NOT_TLS_HINT = "the server does not speak TLS: drop --tls (and --ca-cert, --cert, --key)"
SPEAKS_TLS_HINT = (
    "the server speaks TLS: add --tls (and --ca-cert with its CA certificate unless a "
    "public CA signed it)"
)
UNTRUSTED_HINT = (
    "the server's TLS certificate is not trusted: pass --ca-cert with the CA certificate "
    "that signed it"
)
NEEDS_CERT_HINT = (
    "the server closed the connection after the TLS handshake: it requires a client "
    "certificate (--cert and --key)"
)
CERT_REFUSED_HINT = (
    "the server refused the client certificate: it must be signed by a CA the server "
    "trusts (its --client-ca)"
)


def _host_port(target: str) -> tuple[str, int] | None:
    text = target.strip()
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host, int(port)


async def probe_tls(
    target: str,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    timeout: float = 3.0,
) -> str | None:
    """What one TLS handshake with ``target`` shows: "tls" (it completed and the server
    went on talking HTTP/2), "tls-closed" (it completed, then the server hung up: it wants
    a client certificate it trusts), "plaintext" (the answer was not TLS), or None (no
    connection at all, or nothing conclusive)."""
    address = _host_port(target)
    if address is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a probe of the protocol, not of trust
    context.set_alpn_protocols(["h2"])
    if cert is not None and key is not None:
        with contextlib.suppress(OSError, ssl.SSLError):
            context.load_cert_chain(cert, key)
    host, port = address
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), timeout
        )
    except ssl.SSLError:
        return "plaintext"
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # the HTTP/2 client preface
        data = await asyncio.wait_for(reader.read(9), timeout)
        return "tls" if data else "tls-closed"
    except (ssl.SSLError, ConnectionError):
        return "tls-closed"
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


def _names_held(cert: dict[str, Any]) -> list[str]:
    """The names a certificate (as ``getpeercert()`` gives it) holds: DNS and IP
    alternative names, then its common name."""
    names = [
        value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")
    ]
    for part in cert.get("subject", ()):
        names += [value for key, value in part if key == "commonName"]
    return [name for name in names if "*" not in name]


async def fetch_certificate(
    target: str, server_name: str | None, timeout: float
) -> tuple[bytes, str]:
    """The certificate a TLS server at ``target`` shows (PEM) and a name it holds, for
    ``--insecure``: nothing is verified. ``server_name`` is sent as SNI when given.
    A ConnectError when no TLS handshake can be made."""
    address = _host_port(target)
    if address is None:
        raise UsageError(f"--insecure needs a HOST:PORT server, not {target!r}")
    host, port = address
    sni = server_name or (None if _is_ip(host) else host)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    der = await _handshake(host, port, context, sni, timeout, target)
    pem = ssl.DER_cert_to_PEM_cert(der).encode("ascii")
    # A second handshake trusting that certificate alone reads the names it holds.
    trusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    trusting.check_hostname = False
    trusting.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    trusting.load_verify_locations(cadata=pem.decode("ascii"))
    trusting.set_alpn_protocols(["h2"])
    names: list[str] = []
    with contextlib.suppress(ssl.SSLError, ConnectError):
        names = await _handshake(host, port, trusting, sni, timeout, target, decoded=True)
    return pem, (names[0] if names else host)


async def _handshake(
    host: str,
    port: int,
    context: ssl.SSLContext,
    sni: str | None,
    timeout: float,
    target: str,
    *,
    decoded: bool = False,
) -> Any:
    """One TLS handshake: the peer's certificate in DER, or (``decoded``) its names."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=sni), timeout
        )
    except ssl.SSLError as error:
        if decoded:
            raise
        raise TlsMismatchError(
            f"cannot connect to {target}: the server does not speak TLS: drop --insecure "
            f"(TLS: {error.reason or error})"
        ) from None
    except asyncio.TimeoutError:
        raise ConnectError(
            f"cannot connect to {target}: no TLS handshake within {timeout:g}s"
        ) from None
    except OSError as error:
        raise ConnectError(f"cannot connect to {target}: {error.strerror or error}") from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        if decoded:
            return _names_held(ssl_object.getpeercert() or {})
        der = ssl_object.getpeercert(binary_form=True)
        if der is None:
            raise ConnectError(f"cannot connect to {target}: the server showed no certificate")
        return der
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def explain_failure(target: str, security: ClientSecurity, details: str) -> str | None:
    """A hint for a connection to ``target`` that failed with grpc's ``details``, when it
    failed because of TLS; None when TLS is not the problem (or it cannot tell)."""
    lowered = details.lower()
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return UNTRUSTED_HINT
    if "hostname verification" in lowered:
        address = _host_port(target)
        name = security.server_name or security.authority or (address[0] if address else target)
        return (
            f"the server's certificate does not hold the name {name!r} (--servername, or "
            "--authority, names the one to verify)"
        )
    if security.tls and ("wrong_version_number" in lowered or "record_layer" in lowered):
        return NOT_TLS_HINT
    if any(
        words in lowered
        for words in ("connection refused", "dns resolution failed", "name resolution")
    ):
        return None
    seen = await probe_tls(target, cert=security.cert_path, key=security.key_path)
    if not security.tls:
        return SPEAKS_TLS_HINT if seen in ("tls", "tls-closed") else None
    if seen == "plaintext":
        return NOT_TLS_HINT
    if seen == "tls-closed":
        return NEEDS_CERT_HINT if security.cert is None else CERT_REFUSED_HINT
    return None
