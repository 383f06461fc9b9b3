"""Per-client fairness of the waiting queue: who is admitted next when the batch has free slots.

Policy (per-connection share): a *client* is one caller connection. Directly, that is the TCP
peer (address and port) of the request; through the control plane's gateway, which pools its
own connections to the deployment, it is the caller's connection as the gateway saw it, passed in
``X-Hotloop-Client`` (honoured only on requests that carry the deployment's key, i.e. from the
gateway). Waiting sequences are admitted round-robin across clients (the least recently admitted
client first, the turns carrying over from one admission to the next) and FIFO within a client.
A request's ``n`` choices are ``n`` sequences of its client, so a client with a 64-choice request
(or many queued requests) takes one turn per round like everyone else: another client's request
waits behind at most one sequence per other waiting client, not behind the whole queue.

Why not per API key: a deployment has one key (the gateway's, when the control plane runs it), so
every caller would be the same client. Per-connection is what the server can tell apart without
trusting what callers say about themselves; a caller that opens many connections gets one turn per
connection, bounded by the server's connection cap.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

# Set by the control plane's gateway: the caller connection a request comes from.
CLIENT_HEADER = "X-Hotloop-Client"
K = TypeVar("K", bound=Hashable)


def fair_order(owners: Sequence[K], last_turn: Mapping[K, int] | None = None) -> list[int]:
    """Indices of ``owners`` (the client of each waiting sequence, oldest first) in admission order.

    Round-robin over clients, FIFO within each. ``last_turn`` is when each client was last
    admitted (any increasing counter): the least recently served client goes first, so the turns
    carry over between admissions (each admission may take only a slot or two). Pure, O(n log c).
    """
    last_turn = last_turn or {}
    queues: dict[K, list[int]] = {}
    for i, owner in enumerate(owners):
        queues.setdefault(owner, []).append(i)
    # Never served (or longest ago) first; ties by whose sequence has waited longest.
    lanes = sorted(queues.values(), key=lambda lane: (last_turn.get(owners[lane[0]], -1), lane[0]))
    order: list[int] = []
    depth = 0
    while lanes:
        order.extend(lane[depth] for lane in lanes)
        depth += 1
        lanes = [lane for lane in lanes if len(lane) > depth]
    return order
