"""The credential of a cluster's nodes, and the headers that carry it.

Every node of a cluster (``grpctunnel serve --cluster``) holds the same secret, the
*cluster token*. A node proves it to another in two places, each with an HMAC of the
secret over what it proves (the secret itself never travels):

* :data:`NODE_HEADER`, in the open metadata of the forward tunnel one node keeps to
  another: ``<node id>:<hmac("node", node id)>``. The receiving node admits such a tunnel
  without a caller's token (it is not a caller's tunnel, and counts against no one's
  limit), and lets every call inside it through.
* :data:`HOP_HEADER`, in each call a node relays to another:
  ``<node id>:<hmac("hop", node id)>``. It marks the call as relayed once already, so the
  receiving node routes it to its own tunnels only (never on to a third node: a loop is
  impossible by construction). A call that carries the header without a valid proof, from
  any caller, is refused with PERMISSION_DENIED. (A gateway that is not in a cluster
  gives the header no meaning, as before.)

Proofs are compared in constant time; a proof once checked is remembered (a node's proofs
never change), so checking the hop of each relayed call costs a dictionary look-up.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from grpctunnel import metadata as md
from grpctunnel.gateway.auth import (
    OPEN_TUNNEL,
    AuthInterceptor,
    Refusal,
    TokenAuthority,
    refusing_handler,
)

# where `grpctunnel serve --cluster` reads the cluster token when not given as an option
CLUSTER_TOKEN_ENV = "GRPCTUNNEL_CLUSTER_TOKEN"
NODE_HEADER = "grpctunnel-cluster-node"
HOP_HEADER = "grpctunnel-hop"
# the headers of the node-to-node hop: never relayed from a caller, nor to a backend
CLUSTER_HEADERS = frozenset({NODE_HEADER, HOP_HEADER})

FORGED_HOP = f"the {HOP_HEADER} header is accepted only from the nodes of this gateway's cluster"
FORGED_NODE = f"the {NODE_HEADER} header does not hold a valid cluster credential"

_MAX_REMEMBERED = 4096  # proofs remembered as valid (one per node of the cluster)


class NodeAuth:
    """This node's id and the cluster token: makes this node's proofs and checks other
    nodes' (see the module documentation)."""

    def __init__(self, token: str, node_id: str) -> None:
        if not token:
            raise ValueError("the cluster token may not be empty")
        if ":" in node_id:
            raise ValueError("a node id may not contain ':'")
        self._key = hashlib.sha256(b"grpctunnel-cluster:" + token.encode("utf-8")).digest()
        self.node_id = node_id
        self._valid: dict[str, str] = {}  # proof -> node id, for proofs already checked
        self.hop_value = self._proof("hop", node_id)
        self.node_value = self._proof("node", node_id)

    def _mac(self, purpose: str, node_id: str) -> str:
        return hmac.new(self._key, f"{purpose}:{node_id}".encode(), hashlib.sha256).hexdigest()

    def _proof(self, purpose: str, node_id: str) -> str:
        return f"{node_id}:{self._mac(purpose, node_id)}"

    def _check(self, purpose: str, value: object) -> str | None:
        """The node id a proof for ``purpose`` names, if it is valid; else None."""
        if not isinstance(value, str):
            return None
        known = self._valid.get(f"{purpose}/{value}")
        if known is not None:
            return known
        node_id, _, mac = value.partition(":")
        if not node_id or not mac:
            return None
        if not hmac.compare_digest(mac, self._mac(purpose, node_id)):
            return None
        if len(self._valid) >= _MAX_REMEMBERED:
            self._valid.clear()
        self._valid[f"{purpose}/{value}"] = node_id
        return node_id

    # -- what callers send ------------------------------------------------------------

    def tunnel_metadata(self) -> md.MetadataPairs:
        """The open metadata of this node's tunnels to the other nodes."""
        return ((NODE_HEADER, self.node_value),)

    def hop_metadata(self) -> md.MetadataPairs:
        """The metadata this node adds to every call it relays to another node."""
        return ((HOP_HEADER, self.hop_value),)

    # -- what receivers check ---------------------------------------------------------

    def node_of(self, metadata: Iterable[tuple[str, Any]] | None) -> str | bool:
        """For a tunnel's open metadata: the node id it proves (a str), False when it
        carries :data:`NODE_HEADER` without a valid proof, or True when it carries none
        (a caller's tunnel, judged as such)."""
        value = md.first_value(metadata, NODE_HEADER)
        if value is None:
            return True
        node = self._check("node", value)
        return node if node is not None else False

    def hop_of(self, value: object) -> str | None:
        """The node id a :data:`HOP_HEADER` value proves, or None if it is not valid."""
        return self._check("hop", value)


def is_node_tunnel(auth: NodeAuth | None, metadata: md.MetadataPairs) -> bool:
    """Whether a tunnel opened with ``metadata`` is another node's (a valid proof)."""
    return auth is not None and isinstance(auth.node_of(metadata), str)


class NodeOrTokenInterceptor(AuthInterceptor):
    """The token interceptor of a cluster node: a forward tunnel opened by another node
    of the cluster (a valid :data:`NODE_HEADER`) needs no caller's token; everything else
    is judged by its token as by :class:`~grpctunnel.gateway.auth.AuthInterceptor`. A
    tunnel that carries the header with an invalid proof is refused here."""

    def __init__(
        self,
        authority: TokenAuthority,
        node_auth: NodeAuth,
        on_refusal: Callable[[str, Refusal], None] | None = None,
    ) -> None:
        super().__init__(authority, on_refusal)
        self._node_auth = node_auth

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler_call_details.method == OPEN_TUNNEL:
            node = self._node_auth.node_of(handler_call_details.invocation_metadata)
            if node is False:
                return refusing_handler((grpc.StatusCode.PERMISSION_DENIED, FORGED_NODE))
            if isinstance(node, str):
                return await continuation(handler_call_details)
        return await super().intercept_service(continuation, handler_call_details)


__all__ = [
    "CLUSTER_HEADERS",
    "CLUSTER_TOKEN_ENV",
    "FORGED_HOP",
    "FORGED_NODE",
    "HOP_HEADER",
    "NODE_HEADER",
    "NodeAuth",
    "NodeOrTokenInterceptor",
    "is_node_tunnel",
]
