"""Who may open tunnels and make calls: bearer tokens with rights.

A :class:`TokenAuthority` holds the accepted tokens, each with a :class:`Grant`: the right
to expose (open reverse tunnels, optionally only under given names or for given
services), the right to call (open forward tunnels and make calls, optionally only to
given services), the right to administer (the admin service: list, watch and close
tunnels), and a limit on tunnels. Tokens arrive as ``authorization: Bearer
<token>`` metadata and are compared by their SHA-256 digests in constant time.

:class:`AuthInterceptor` enforces the grants on a ``grpc.aio.Server``; the gateway
enforces the per-service rights of calls made inside forward tunnels, where the token
is the one the tunnel was opened with; :func:`require_tokens` does the same for a plain
``TunnelServiceHandler``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from grpctunnel import metadata as md
from grpctunnel import rate_limited_log
from grpctunnel.gateway.announce import ADMIN, HEALTH, TUNNEL_SERVICE
from grpctunnel.gateway.reflection_client import REFLECTION_SERVICES
from grpctunnel.options import TunnelServiceHandlerOptions

log = logging.getLogger("grpctunnel")

AUTHORIZATION = "authorization"
_BEARER = "bearer "

Refusal = tuple[grpc.StatusCode, str]

OPEN_TUNNEL = f"/{TUNNEL_SERVICE}/OpenTunnel"
OPEN_REVERSE_TUNNEL = f"/{TUNNEL_SERVICE}/OpenReverseTunnel"
# reachable without a token, so load balancers can probe
PUBLIC_SERVICES = frozenset({HEALTH})
# what a caller needs to find its methods (REFLECTION_SERVICES) is open to every token
# that may call at all


class AuthConfigError(ValueError):
    """A token file is malformed; the message says where."""


@dataclass(frozen=True)
class Grant:
    """What one token may do. ``None`` for a set means "any".

    ``name`` identifies the credential: the tunnel names it claims and its tunnel count
    are kept under it. ``group``, when set, names the credentials that share the
    services they expose (see :mod:`grpctunnel.gateway.directory`). A token that may
    call may also use server reflection (callers need it to find methods), whatever its
    ``call_services``. ``may_admin`` is the right to use the admin service
    (:mod:`grpctunnel.gateway.admin`), needed for it whatever else the token may do.
    """

    name: str = "token"
    group: str | None = None
    may_expose: bool = True
    expose_names: frozenset[str] | None = None
    expose_services: frozenset[str] | None = None
    may_call: bool = True
    call_services: frozenset[str] | None = None
    max_tunnels: int | None = None
    may_admin: bool = False

    def may_call_service(self, service: str) -> bool:
        return self.may_call and (self.call_services is None or service in self.call_services)

    def may_expose_as(self, name: str, services: Iterable[str]) -> str | None:
        """Why this grant may not expose ``services`` as ``name``, or None if it may."""
        if not self.may_expose:
            return f"credential {self.name!r} may not expose services"
        if self.expose_names is not None and name not in self.expose_names:
            return f"credential {self.name!r} may not expose under the name {name!r}"
        if self.expose_services is not None:
            denied = sorted(set(services) - self.expose_services)
            if denied:
                return f"credential {self.name!r} may not expose {', '.join(denied)}"
        return None


@dataclass
class TokenAuthority:
    """The accepted tokens and their grants."""

    _grants: dict[bytes, Grant] = field(default_factory=dict)

    @classmethod
    def single(cls, token: str) -> TokenAuthority:
        """One token with every right."""
        authority = cls()
        authority.add(token, Grant(name="token", may_admin=True))
        return authority

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuthority:
        """Reads a token file: either one token on its own (every right), or JSON::

            {"tokens": [
              {"name": "agent-1", "token": "...", "expose": true, "call": false,
               "expose_names": ["agent-1"], "expose_services": ["pkg.Svc"]},
              {"name": "ops", "token": "...", "expose": false, "call": ["pkg.Svc"],
               "max_tunnels": 4},
              {"name": "oncall", "token": "...", "expose": false, "call": false,
               "admin": true}
            ]}

        ``call`` is true (any service), false, or a list of services; ``expose``
        true or false, narrowed by ``expose_names`` / ``expose_services`` when given;
        ``max_tunnels`` bounds the tunnels (forward and reverse) open at once under
        the credential; ``admin`` (default false) the right to use the admin
        service. Entries that share a ``name`` are one credential (two tokens
        during a rotation, say): they share tunnel names and the tunnel limit. A
        service belongs to the credential that exposed it first; credentials with the
        same ``group`` share the services they expose.
        """
        text = Path(path).read_text(encoding="utf-8").strip()
        if not text:
            raise AuthConfigError(f"{path}: the token file is empty")
        if not text.startswith("{"):
            if len(text.split()) != 1:
                raise AuthConfigError(f"{path}: expected one token, or JSON with a 'tokens' list")
            return cls.single(text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise AuthConfigError(f"{path}: not valid JSON: {e}") from None
        entries = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise AuthConfigError(f"{path}: expected a non-empty 'tokens' list")
        authority = cls()
        for i, entry in enumerate(entries):
            authority.add(*_parse_entry(entry, f"{path}: tokens[{i}]"))
        return authority

    def add(self, token: str, grant: Grant) -> None:
        if not token:
            raise AuthConfigError("a token may not be empty")
        self._grants[_digest(token)] = grant

    def tunnel_limit(self, credential: str | None) -> int | None:
        """The ``max_tunnels`` of the credential named ``credential`` (the smallest, if
        several tokens share the name), or None: no limit."""
        limits = [
            g.max_tunnels
            for g in self._grants.values()
            if g.name == credential and g.max_tunnels is not None
        ]
        return min(limits) if limits else None

    def authenticate(self, pairs: Iterable[tuple[str, Any]] | None) -> Grant | None:
        """The grant of the bearer token in ``pairs``, or None."""
        token = bearer_token(pairs)
        if token is None:
            return None
        presented = _digest(token)
        found = None
        for digest, grant in self._grants.items():  # no early exit: constant time per call
            if hmac.compare_digest(digest, presented):
                found = grant
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def _names(value: Any, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthConfigError(f"{where}: expected a list of names")
    return frozenset(value)


def _parse_entry(entry: Any, where: str) -> tuple[str, Grant]:
    if not isinstance(entry, dict):
        raise AuthConfigError(f"{where}: expected an object")
    token = entry.get("token")
    if not isinstance(token, str) or not token:
        raise AuthConfigError(f"{where}: 'token' must be a non-empty string")
    unknown = set(entry) - {
        "name",
        "token",
        "expose",
        "call",
        "expose_names",
        "expose_services",
        "max_tunnels",
        "group",
        "admin",
    }
    if unknown:
        raise AuthConfigError(f"{where}: unknown keys {sorted(unknown)}")
    call = entry.get("call", True)
    if isinstance(call, bool):
        may_call, call_services = call, None
    else:
        may_call, call_services = True, _names(call, f"{where}.call")
    expose = entry.get("expose", True)
    if not isinstance(expose, bool):
        raise AuthConfigError(f"{where}: 'expose' must be true or false")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise AuthConfigError(f"{where}: 'admin' must be true or false")
    max_tunnels = entry.get("max_tunnels")
    if max_tunnels is not None and (not isinstance(max_tunnels, int) or max_tunnels < 1):
        raise AuthConfigError(f"{where}: 'max_tunnels' must be a positive integer")
    group = entry.get("group")
    if group is not None and (not isinstance(group, str) or not group):
        raise AuthConfigError(f"{where}: 'group' must be a non-empty string")
    grant = Grant(
        name=str(entry.get("name") or where),
        group=group,
        may_expose=expose,
        expose_names=_names(entry.get("expose_names"), f"{where}.expose_names"),
        expose_services=_names(entry.get("expose_services"), f"{where}.expose_services"),
        may_call=may_call,
        call_services=call_services,
        max_tunnels=max_tunnels,
        may_admin=admin,
    )
    return token, grant


def bearer_token(pairs: Iterable[tuple[str, Any]] | None) -> str | None:
    value = md.first_value(pairs, AUTHORIZATION)
    if not isinstance(value, str) or not value.lower().startswith(_BEARER):
        return None
    return value[len(_BEARER) :].strip() or None


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata that carries ``token``."""
    return ((AUTHORIZATION, f"Bearer {token}"),)


def service_of(method: str) -> str:
    return method[1:].split("/", 1)[0]


def decide(
    authority: TokenAuthority, method: str, pairs: Iterable[tuple[str, Any]] | None
) -> tuple[Grant | None, tuple[grpc.StatusCode, str] | None]:
    """The grant of the token in ``pairs`` (None if there is no valid one), and why a
    call of ``method`` with it is refused (None if it is not)."""
    service = service_of(method)
    grant = authority.authenticate(pairs)
    if service in PUBLIC_SERVICES:
        return grant, None
    if grant is None:
        if bearer_token(pairs) is None:
            return None, (
                grpc.StatusCode.UNAUTHENTICATED,
                "missing credentials: send 'authorization: Bearer <token>'",
            )
        return None, (grpc.StatusCode.UNAUTHENTICATED, "invalid token")
    if service == ADMIN:  # the admin right alone decides, whatever else the token may do
        if not grant.may_admin:
            return grant, (
                grpc.StatusCode.PERMISSION_DENIED,
                f"credential {grant.name!r} may not use the admin service "
                '(its token-file entry needs "admin": true)',
            )
        return grant, None
    if method == OPEN_REVERSE_TUNNEL:
        if not grant.may_expose:
            return grant, (
                grpc.StatusCode.PERMISSION_DENIED,
                f"credential {grant.name!r} may not expose services",
            )
        return grant, None
    if not grant.may_call:  # neither a forward tunnel nor any call
        return grant, (
            grpc.StatusCode.PERMISSION_DENIED,
            f"credential {grant.name!r} may not make calls",
        )
    if method == OPEN_TUNNEL or service in REFLECTION_SERVICES:
        return grant, None
    if not grant.may_call_service(service):
        return grant, (
            grpc.StatusCode.PERMISSION_DENIED,
            f"credential {grant.name!r} may not call {service}",
        )
    return grant, None


def check(
    authority: TokenAuthority, method: str, pairs: Iterable[tuple[str, Any]] | None
) -> Refusal | None:
    """Why a call of ``method`` with metadata ``pairs`` is refused, or None."""
    return decide(authority, method, pairs)[1]


def first_refusal(*hooks: Callable[..., Refusal | None] | None) -> Callable[..., Refusal | None]:
    """One hook that runs ``hooks`` (None ones skipped) in turn and returns the first
    refusal: how the handler's ``accept_tunnel`` and ``authorize_call`` hooks compose."""
    present = [hook for hook in hooks if hook is not None]
    if len(present) == 1:
        return present[0]

    def combined(*args: Any) -> Refusal | None:
        for hook in present:
            refusal = hook(*args)
            if refusal is not None:
                return refusal
        return None

    return combined


def require_tokens(
    options: TunnelServiceHandlerOptions, authority: TokenAuthority
) -> TunnelServiceHandlerOptions:
    """Makes a plain :class:`~grpctunnel.TunnelServiceHandler` with ``options`` check
    tokens: a tunnel opens only with a token that may open it (expose for reverse
    tunnels, call for forward ones), and each call inside a forward tunnel only if the
    tunnel's token may call that service. Hooks already set run first. Returns
    ``options``. With the services of your own server, add :class:`AuthInterceptor` too::

        options = require_tokens(TunnelServiceHandlerOptions(), authority)
        handler = TunnelServiceHandler(options)
        server = grpc.aio.server(interceptors=[AuthInterceptor(authority)])

    (:class:`~grpctunnel.gateway.Gateway` does this and more: names, limits.)
    """

    def accept_tunnel(kind: str, metadata: md.MetadataPairs, peer: str) -> Refusal | None:
        return check(authority, OPEN_REVERSE_TUNNEL if kind == "reverse" else OPEN_TUNNEL, metadata)

    def authorize_call(metadata: md.MetadataPairs, method: str) -> Refusal | None:
        return check(authority, method, metadata)

    options.accept_tunnel = first_refusal(options.accept_tunnel, accept_tunnel)
    options.authorize_call = first_refusal(options.authorize_call, authorize_call)
    return options


# The refusal (or None) already decided for the call being dispatched: set by whichever
# of the interceptor and a guarded handler sees the call first, so that a call is judged
# once however many of them stand in its way. grpc.aio dispatches a call's interceptors and
# generic handlers in one task, so the value never leaks into another call's decision; it
# is keyed by the call's HandlerCallDetails to be sure.
_decided: ContextVar[tuple[object, Refusal | None] | None] = ContextVar(
    "grpctunnel_auth_decided", default=None
)


def judge(authority: TokenAuthority, details: grpc.HandlerCallDetails) -> Refusal | None:
    """Why the call described by ``details`` is refused, or None: decided once per
    call, whether by :class:`AuthInterceptor`, by :class:`GuardedHandler`, or both."""
    decided = _decided.get()
    if decided is not None and decided[0] is details:
        return decided[1]
    method = details.method
    refusal = check(authority, method, details.invocation_metadata)
    _decided.set((details, refusal))
    if refusal is not None:
        # refused tunnels are worth an operator's attention (rate-limited: a flood of
        # bad tunnels must not fill the disk); refused calls only in debug
        code, why = refusal
        if method in (OPEN_TUNNEL, OPEN_REVERSE_TUNNEL):
            rate_limited_log.REFUSED_TUNNELS.log(
                f"{code.name}: {why}", "refused %s: %s: %s", method, code.name, why
            )
        else:
            log.debug("refused %s: %s: %s", method, code.name, why)
    return refusal


def refusing_handler(refusal: Refusal) -> grpc.RpcMethodHandler[Any, Any]:
    """A method handler that fails any call with ``refusal``'s status."""
    code, details = refusal

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, details)

    return grpc.stream_stream_rpc_method_handler(refuse)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc,type-arg]
    """Refuses calls to a ``grpc.aio.Server`` whose bearer token does not grant them.

    Pass it when creating the server: ``grpc.aio.server(interceptors=[AuthInterceptor(
    authority)])``. It sees only the RPCs on the server itself; calls made inside a
    forward tunnel are checked by the handler's ``authorize_call`` hook against the
    token the tunnel was opened with (:class:`~grpctunnel.gateway.Gateway` wires that
    up, and checks tunnel names, services and limits as tunnels open).
    """

    def __init__(
        self,
        authority: TokenAuthority,
        on_refusal: Callable[[str, Refusal], None] | None = None,
    ) -> None:
        self._authority = authority
        self._on_refusal = on_refusal  # told of each call it refuses: method, refusal

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        refusal = judge(self._authority, handler_call_details)
        if refusal is None:
            return await continuation(handler_call_details)
        if self._on_refusal is not None:
            self._on_refusal(handler_call_details.method, refusal)
        return refusing_handler(refusal)


class GuardedHandler(grpc.GenericRpcHandler):  # type: ignore[misc,type-arg]
    """A generic handler whose calls are refused unless their token grants them: the
    gateway's own handlers stay guarded on a server created without
    :class:`AuthInterceptor`, and are judged only once on a server with it."""

    def __init__(self, authority: TokenAuthority, inner: grpc.GenericRpcHandler[Any, Any]) -> None:
        self._authority = authority
        self._inner = inner

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        found = self._inner.service(handler_call_details)
        if found is None:
            return None
        refusal = judge(self._authority, handler_call_details)
        return found if refusal is None else refusing_handler(refusal)


__all__ = [
    "PUBLIC_SERVICES",
    "REFLECTION_SERVICES",
    "AuthConfigError",
    "AuthInterceptor",
    "Grant",
    "GuardedHandler",
    "Refusal",
    "TokenAuthority",
    "bearer_metadata",
    "bearer_token",
    "check",
    "decide",
    "first_refusal",
    "judge",
    "refusing_handler",
    "require_tokens",
]
