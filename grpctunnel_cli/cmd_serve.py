"""The `serve` command: a tunnel server that is also a gateway to exposed services.

It reads the options into `GatewaySettings` (the tokens and TLS to require, refusing an
open server on a reachable address), runs a `GatewayServer` until signalled, then stops
it gracefully.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import grpc
import typer

from grpctunnel.gateway import BindError, GatewayServer, GatewaySettings
from grpctunnel.gateway.auth import AuthConfigError, TokenAuthority
from grpctunnel.gateway.cluster_auth import CLUSTER_TOKEN_ENV
from grpctunnel.gateway.directory import DEFAULT_SERVICE_GRACE
from grpctunnel.gateway.server import DEFAULT_MAX_STREAMS_PER_TUNNEL
from grpctunnel_cli.command import run, until_signalled
from grpctunnel_cli.errors import CliError, UsageError
from grpctunnel_cli.logs import set_log_fields, setup_logging
from grpctunnel_cli.options import (
    LIMITS,
    LISTENING,
    OBSERVING,
    SECURITY,
    HostOption,
    LogFormat,
    LogFormatOption,
    MetricsOptions,
    PortOption,
    RelayOptions,
    option_groups,
    switch,
    verbose_option,
)
from grpctunnel_cli.render import Renderer
from grpctunnel_cli.security import TOKEN_ENV, is_loopback, read_file

if TYPE_CHECKING:  # Redis is imported only with --cluster
    from grpctunnel.gateway.cluster import ClusterSettings

__all__ = ["serve"]

CLUSTER = "Cluster"

log = logging.getLogger("grpctunnel")


@option_groups
def serve(
    host: HostOption = "127.0.0.1",
    port: PortOption = 50051,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            metavar="SECONDS",
            help="On Ctrl-C or SIGTERM, time to let calls in flight finish.",
            rich_help_panel=LISTENING,
        ),
    ] = 10.0,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            help=f"Require this bearer token of every tunnel and call (default: ${TOKEN_ENV}).",
            rich_help_panel=SECURITY,
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            metavar="FILE",
            help="Require a token from this file: one token, or JSON with a token per "
            "credential and its rights (see README, Security).",
            rich_help_panel=SECURITY,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            metavar="FILE",
            help="Serve TLS with this certificate (PEM).",
            rich_help_panel=SECURITY,
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key",
            metavar="FILE",
            help="Private key (PEM) of --tls-cert.",
            rich_help_panel=SECURITY,
        ),
    ] = None,
    client_ca: Annotated[
        Path | None,
        typer.Option(
            "--client-ca",
            metavar="FILE",
            help="Mutual TLS: require client certificates signed by this CA (PEM).",
            rich_help_panel=SECURITY,
        ),
    ] = None,
    allow_insecure: Annotated[
        bool,
        switch(
            "--allow-insecure",
            help="Listen on a non-loopback address with neither TLS nor a token.",
            panel=SECURITY,
        ),
    ] = False,
    service_grace: Annotated[
        float,
        typer.Option(
            "--service-grace",
            min=0,
            metavar="SECONDS",
            help="A service belongs to the credential that exposed it first; it keeps it "
            "this long after its last tunnel closed, so a reconnecting exposer gets it back.",
            rich_help_panel=SECURITY,
        ),
    ] = DEFAULT_SERVICE_GRACE,
    no_backend_health: Annotated[
        bool,
        switch(
            "--no-backend-health",
            help="Do not follow each backend's own health service (one Watch per service "
            "of each tunnel): a service is SERVING while a tunnel exposes it.",
            panel=OBSERVING,
        ),
    ] = False,
    *,
    relay: RelayOptions,
    max_streams: Annotated[
        int,
        typer.Option(
            "--max-streams-per-tunnel",
            min=1,
            metavar="N",
            help="Calls one forward tunnel may have in progress at once; beyond, "
            "RESOURCE_EXHAUSTED. The tunnels between cluster nodes have no such cap.",
            rich_help_panel=LIMITS,
        ),
    ] = DEFAULT_MAX_STREAMS_PER_TUNNEL,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="URL",
            help="Join the cluster of serve nodes that share this Redis (redis://HOST:PORT/DB): "
            "any node reaches "
            "the tunnels of every node (see README, Clusters).",
            rich_help_panel=CLUSTER,
        ),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise",
            metavar="HOST:PORT",
            help="Where the other nodes reach this one (default: --host and the port).",
            rich_help_panel=CLUSTER,
        ),
    ] = None,
    cluster_token: Annotated[
        str | None,
        typer.Option(
            "--cluster-token",
            metavar="TOKEN",
            help="The secret every node of the cluster shares; nodes prove it to each "
            f"other (default: ${CLUSTER_TOKEN_ENV}).",
            rich_help_panel=CLUSTER,
        ),
    ] = None,
    cluster_ca: Annotated[
        Path | None,
        typer.Option(
            "--cluster-ca",
            metavar="FILE",
            help="With TLS: the CA (PEM) that signed the other nodes' certificates "
            "(default: --tls-cert itself, for a certificate all nodes share).",
            rich_help_panel=CLUSTER,
        ),
    ] = None,
    cluster_cert: Annotated[
        Path | None,
        typer.Option(
            "--cluster-cert",
            metavar="FILE",
            help="With --client-ca: the certificate (PEM) this node presents to the "
            "others; it must allow client authentication (default: --tls-cert).",
            rich_help_panel=CLUSTER,
        ),
    ] = None,
    cluster_key: Annotated[
        Path | None,
        typer.Option(
            "--cluster-key",
            metavar="FILE",
            help="The private key (PEM) of --cluster-cert.",
            rich_help_panel=CLUSTER,
        ),
    ] = None,
    heartbeat_ttl: Annotated[
        float,
        typer.Option(
            "--cluster-ttl",
            min=0.3,
            metavar="SECONDS",
            help="A node silent this long is dropped from the cluster's view.",
            rich_help_panel=CLUSTER,
        ),
    ] = 3.0,
    verbose: Annotated[
        bool,
        verbose_option(
            "Also log one line per relayed call (method, status, time, tunnel), and "
            "reverse tunnels opening and closing."
        ),
    ] = False,
    log_format: LogFormatOption = LogFormat.plain,
    metrics: MetricsOptions,
) -> None:
    """Run a tunnel server, the gateway to exposed backends.

    Accepts forward and reverse tunnels, and routes each call for a service exposed
    through a reverse tunnel (`grpctunnel expose`) to it. Serves reflection (merged
    across every exposed backend), health per service, and the admin service
    (`grpctunnel tunnels`); with --metrics-port, Prometheus metrics. Logs go to stderr.
    """
    renderer = Renderer()
    setup_logging(verbose, log_format=log_format.value)
    metrics.prepare()

    async def body() -> int:
        authority = _authority(token, token_file)
        credentials = _server_credentials(tls_cert, tls_key, client_ca)
        _check_exposure(host, credentials, authority, allow_insecure)
        joined = None
        if cluster is not None:
            joined = _cluster_settings(
                cluster,
                advertise,
                cluster_token,
                heartbeat_ttl,
                _peer_credentials(
                    tls_cert, tls_key, client_ca, cluster_ca, cluster_cert, cluster_key
                ),
                host,
                port,
            )
        elif any(
            given is not None
            for given in (advertise, cluster_token, cluster_ca, cluster_cert, cluster_key)
        ):
            raise UsageError(
                "--advertise, --cluster-token, --cluster-ca, --cluster-cert and "
                "--cluster-key go with --cluster"
            )
        server = GatewayServer(
            GatewaySettings(
                host=host,
                port=port,
                credentials=credentials,
                authority=authority,
                max_message_length=relay.max_message_length,
                limit_raised_by=f"--max-message-mib {relay.max_message_mib} of `grpctunnel serve`",
                max_streams_per_tunnel=max_streams,
                keepalive_interval=relay.keepalive_interval,
                keepalive_timeout=relay.keepalive_timeout,
                establishment_timeout=relay.establishment_timeout,
                metrics_port=metrics.port,
                metrics_host=metrics.host,
                service_grace=service_grace,
                backend_health=not no_backend_health,
                cluster=joined,
            )
        )
        try:
            await server.start()
        except BindError as error:
            raise CliError(str(error)) from None

        def listening() -> None:
            tls = "mutual TLS" if client_ca else "TLS"
            security = tls if credentials is not None else "plaintext"
            tokens = "tokens required" if authority is not None else "no token required"
            set_log_fields(node=server.gateway.admin.node)
            log.info(
                "tunnel server listening on %s (%s, %s)",
                server.address,
                security,
                tokens,
                extra={"event": "listening", "peer": server.address},
            )
            if server.metrics_server is not None:
                log.info(
                    "metrics at %s",
                    server.metrics_server.url,
                    extra={"event": "metrics_listening", "peer": server.metrics_server.url},
                )

        async def stop() -> None:
            log.info("shutting down: letting calls in flight finish (up to %gs)", grace)
            await server.stop(grace)
            log.info("stopped")

        await until_signalled(stop, ready=listening)
        return 0

    run(body, renderer)


def _cluster_settings(
    url: str,
    advertise: str | None,
    token: str | None,
    ttl: float,
    peer_credentials: grpc.ChannelCredentials | None,
    host: str,
    port: int,
) -> ClusterSettings:
    """The cluster to join: --cluster, --advertise, the cluster token."""
    from grpctunnel.gateway.cluster import ClusterSettings

    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"--cluster takes a Redis URL (redis://HOST:PORT/DB), not {url!r}")
    secret = token if token is not None else os.environ.get(CLUSTER_TOKEN_ENV, "")
    if not secret.strip():
        raise UsageError(
            f"--cluster needs the cluster token: --cluster-token or ${CLUSTER_TOKEN_ENV} "
            "(the same secret on every node)"
        )
    if advertise is None:
        if host in ("0.0.0.0", "::", "[::]", ""):
            raise UsageError(
                f"--host {host} listens on every address: say with --advertise HOST:PORT "
                "where the other nodes reach this one"
            )
        advertise = "" if port == 0 else f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    elif ":" not in advertise:
        raise UsageError(f"--advertise takes HOST:PORT, not {advertise!r}")
    return ClusterSettings(
        redis_url=url,
        advertise=advertise,
        token=secret.strip(),
        heartbeat_ttl=ttl,
        peer_credentials=peer_credentials,
    )


def _peer_credentials(
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None,
    cluster_ca: Path | None,
    cluster_cert: Path | None,
    cluster_key: Path | None,
) -> grpc.ChannelCredentials | None:
    """TLS for the connections to the other nodes, when this node serves TLS (theirs
    are alike): trusting --cluster-ca (else --tls-cert), presenting --cluster-cert
    (else --tls-cert) where nodes require client certificates (--client-ca)."""
    if cert is None or key is None:
        for given, option in ((cluster_ca, "--cluster-ca"), (cluster_cert, "--cluster-cert")):
            if given is not None:
                raise UsageError(f"{option} goes with --tls-cert and --tls-key")
        return None
    if (cluster_cert is None) != (cluster_key is None):
        raise UsageError("--cluster-cert and --cluster-key go together")
    roots = read_file(cluster_ca or cert, "--cluster-ca" if cluster_ca else "--tls-cert")
    if client_ca is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    if cluster_cert is not None and cluster_key is not None:
        chain = read_file(cluster_cert, "--cluster-cert")
        private = read_file(cluster_key, "--cluster-key")
    else:
        chain, private = read_file(cert, "--tls-cert"), read_file(key, "--tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=private, certificate_chain=chain
    )


def _authority(token: str | None, token_file: Path | None) -> TokenAuthority | None:
    """The tokens to require: --token, --token-file or $GRPCTUNNEL_TOKEN; None for none."""
    if token is not None and token_file is not None:
        raise UsageError("give either --token or --token-file, not both")
    if token_file is not None:
        try:
            return TokenAuthority.from_file(token_file)
        except OSError as error:
            raise CliError(
                f"cannot read --token-file {token_file}: {error.strerror or error}"
            ) from None
        except AuthConfigError as error:
            raise CliError(f"bad --token-file: {error}") from None
    text = token if token is not None else os.environ.get(TOKEN_ENV)
    if text is None or (token is None and not text.strip()):
        return None
    if not text.strip():
        raise UsageError("--token is empty")
    return TokenAuthority.single(text.strip())


def _server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None
) -> grpc.ServerCredentials | None:
    """TLS to serve with (mutual with --client-ca); None for plaintext."""
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if cert is None or key is None:
        if client_ca is not None:
            raise UsageError("--client-ca needs --tls-cert and --tls-key")
        return None
    pair = (read_file(key, "--tls-key"), read_file(cert, "--tls-cert"))
    if client_ca is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair], root_certificates=read_file(client_ca, "--client-ca"), require_client_auth=True
    )


def _check_exposure(
    host: str,
    credentials: grpc.ServerCredentials | None,
    authority: TokenAuthority | None,
    allow_insecure: bool,
) -> None:
    """Refuses to listen where others can reach a server with neither TLS nor a token
    (unless --allow-insecure), and warns of tokens sent in clear text."""
    if is_loopback(host):
        return
    if credentials is None and authority is None:
        if not allow_insecure:
            raise UsageError(
                f"refusing to listen on {host} with neither TLS nor a token: anyone who "
                "can reach it could expose services through it and call every exposed "
                "backend. Add --tls-cert/--tls-key, --token/--token-file (or "
                f"${TOKEN_ENV}), or --allow-insecure if the network itself is trusted."
            )
        log.warning(
            "listening on %s with neither TLS nor a token (--allow-insecure): "
            "anyone who can reach it can use it",
            host,
        )
    elif authority is not None and credentials is None:
        log.warning("tokens travel in clear text without TLS (--tls-cert/--tls-key)")
