"""TLS against real processes: mutual TLS accepted with the right client certificate and
refused with a wrong one; TLS and plaintext mixed up, said plainly; `serve` refusing a
non-loopback address with neither TLS nor a token. Certificates are made by the tests."""

from __future__ import annotations

import socket

import grpc
import pytest

from .certs import Certs
from .procs import Launcher, assert_failure, no_traceback, run_cli

pytestmark = pytest.mark.timeout(60)

SPEAKS_TLS = "the server speaks TLS: add --tls"
NOT_TLS = "the server does not speak TLS: drop --tls"
UNTRUSTED = "the server's TLS certificate is not trusted: pass --ca-cert"


def _tls_server_args(certs: Certs, *, mutual: bool) -> tuple[str, ...]:
    args = ("--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key))
    return (*args, "--client-ca", str(certs.ca)) if mutual else args


async def test_mutual_tls(launcher: Launcher, certs: Certs) -> None:
    backend = await launcher.backend()
    server = await launcher.server(*_tls_server_args(certs, mutual=True))
    proc, address = server
    assert "(mutual TLS, no token required)" in proc.output
    good = ("--ca-cert", str(certs.ca), "--cert", str(certs.client.cert))
    good += ("--key", str(certs.client.key))
    stranger = ("--ca-cert", str(certs.ca), "--cert", str(certs.stranger.cert))
    stranger += ("--key", str(certs.stranger.key))

    await launcher.exposer(backend, server, "a", *good)
    ok = await run_cli("call", "-s", address, "Echo/Echo", '{"msg": "m"}', *good)
    assert (ok.returncode, ok.stdout) == (0, '{"msg":"m"}\n'), ok

    refused = await run_cli("call", "-s", address, "Echo/Echo", '{"msg": "m"}', *stranger)
    assert_failure(refused, 1, "the server refused the client certificate", "--client-ca")
    without = await run_cli("list", "-s", address, "--ca-cert", str(certs.ca))
    assert_failure(without, 1, "it requires a client certificate (--cert and --key)")
    exposer = await run_cli("expose", backend, "--to", address, "--name", "b", *stranger)
    assert_failure(exposer, 1, "the server refused the client certificate")

    # refused by the TLS layer itself, whatever the client: a grpc channel gets nowhere
    credentials = grpc.ssl_channel_credentials(
        certs.ca.read_bytes(), certs.stranger.key.read_bytes(), certs.stranger.cert.read_bytes()
    )
    async with grpc.aio.secure_channel(address, credentials) as channel:
        probe = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await probe(b"", timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    no_traceback(proc)


async def test_tls_and_plaintext_mixed_up(launcher: Launcher, certs: Certs) -> None:
    backend = await launcher.backend()
    (tls_proc, tls), (plain_proc, plain) = (
        await launcher.server(*_tls_server_args(certs, mutual=False)),
        await launcher.server(),
    )
    assert "(TLS, no token required)" in tls_proc.output

    assert_failure(await run_cli("call", "-s", tls, "Echo/Echo"), 1, SPEAKS_TLS)
    assert_failure(await run_cli("list", "-s", plain, "--tls"), 1, NOT_TLS)
    assert_failure(await run_cli("list", "-s", plain, "--ca-cert", str(certs.ca)), 1, NOT_TLS)
    assert_failure(await run_cli("list", "-s", tls, "--tls"), 1, UNTRUSTED)
    assert_failure(await run_cli("list", "-s", tls, "--ca-cert", str(certs.other_ca)), 1, UNTRUSTED)
    listed = await run_cli("list", "-s", tls, "--ca-cert", str(certs.ca))
    assert listed.returncode == 0 and "grpctunnel.v1.TunnelService" in listed.stdout, listed

    expose = ("expose", backend, "--name", "a", "--to")
    assert_failure(await run_cli(*expose, tls), 1, SPEAKS_TLS)
    assert_failure(await run_cli(*expose, plain, "--tls"), 1, NOT_TLS)
    await launcher.exposer(backend, (tls_proc, tls), "a", "--ca-cert", str(certs.ca))
    no_traceback(tls_proc, plain_proc)


async def test_serve_refuses_an_open_address_without_tls_or_token(certs: Certs) -> None:
    # Holding the port (bound, never listening) shows the refusal comes before binding: a
    # server that tried to bind would fail with "in use" instead.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("0.0.0.0", 0))
        port = str(held.getsockname()[1])
        refused = await run_cli("serve", "--host", "0.0.0.0", "--port", port)
        assert_failure(
            refused,
            2,
            "refusing to listen on 0.0.0.0 with neither TLS nor a token",
            "--tls-cert/--tls-key, --token/--token-file",
            "--allow-insecure",
        )
        assert "listening" not in refused.stderr and "in use" not in refused.stderr
        # with what it asked for, it goes on to bind (and finds the port taken)
        for extra in (
            ("--allow-insecure",),
            ("--token", "s3cret"),
            ("--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key)),
        ):
            bound = await run_cli("serve", "--host", "0.0.0.0", "--port", port, *extra)
            assert bound.returncode == 1, bound
            assert f"ERROR: cannot listen on 0.0.0.0:{port}" in bound.stderr, bound
            if extra == ("--allow-insecure",):
                assert "WARNING listening on 0.0.0.0 with neither TLS nor a token" in bound.stderr
            if extra[0] == "--token":
                assert "tokens travel in clear text without TLS" in bound.stderr


async def test_serve_rejects_half_given_tls_options(certs: Certs) -> None:
    half = await run_cli("serve", "--port", "0", "--tls-cert", str(certs.server.cert))
    assert_failure(half, 2, "--tls-cert and --tls-key go together")
    ca_only = await run_cli("serve", "--port", "0", "--client-ca", str(certs.ca))
    assert_failure(ca_only, 2, "--client-ca needs --tls-cert and --tls-key")
    both = await run_cli("serve", "--port", "0", "--token", "a", "--token-file", "/nonexistent")
    assert_failure(both, 2, "either --token or --token-file")
