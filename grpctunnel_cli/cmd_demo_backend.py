"""The `demo-backend` command: serve the demo Echo service (with reflection and health)
until signalled, as something to expose."""

from __future__ import annotations

from grpctunnel_cli.command import run, until_signalled
from grpctunnel_cli.errors import CliError
from grpctunnel_cli.options import HostOption, PortOption
from grpctunnel_cli.render import Renderer

__all__ = ["demo_backend"]

_STOP_GRACE = 1.0


def demo_backend(host: HostOption = "127.0.0.1", port: PortOption = 9000) -> None:
    """Serve the demo Echo service, with reflection and health.

    Runs until Ctrl-C or SIGTERM; try `grpctunnel expose` on it.
    """
    renderer = Renderer()

    async def body() -> int:
        # Imported here so that other commands do not load the demo service for nothing.
        from grpctunnel_demo.service import start_demo_backend

        try:
            server, bound = await start_demo_backend(host, port)
        except (OSError, RuntimeError):
            # grpc's own message says no more than this (and to set GRPC_VERBOSITY=debug).
            raise CliError(
                f"cannot listen on {host}:{port}: the port is in use or the address is not "
                "one of this host's (GRPC_VERBOSITY=debug shows grpc's reason)"
            ) from None
        shown_host = f"[{host}]" if ":" in host else host

        def listening() -> None:
            renderer.info(
                f"demo backend listening on {shown_host}:{bound} "
                "(grpctunnel.demo.v1.Echo, reflection, health); Ctrl-C to stop"
            )

        await until_signalled(lambda: server.stop(_STOP_GRACE), ready=listening)
        return 0

    run(body, renderer)
