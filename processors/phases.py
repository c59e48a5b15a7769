"""Where a request's time went: its phases, as one side saw them, split between
the server, the network and the server's own outgoing calls.

Pure arithmetic on timestamps and the kernel's per-connection counters, so the
same rules hold for every protocol that reports when each message began and
ended. A side measures, in the kernel's clock:

    start            first request byte (sent by a client, read by a server)
    request_end      last request byte
    response_start   first response byte (None: no answer came)
    end              last response byte, or when the connection ended

On a server, waiting for the rest of a request (`request_end - start`) is the
network's or the client's time, never the server's: a body held back by Nagle
behind a delayed ACK, an upload over a slow or lossy link. So is the time its
sends waited for room in the send buffer (`send_wait`): a large response over a
slow link. What remains is the server's, less the time it spent waiting on its
own calls downstream.

A client knows the server's share exactly when the server runs on this node (its
span's split); otherwise it is estimated as the time to the first response byte
less one round trip, and said to be an estimate.
"""

from __future__ import annotations

from typing import Final

# A small request that took this long to arrive whole, in two or more segments,
# waited for an acknowledgement: Linux delays ACKs 40 ms to 200 ms, others up to
# 500 ms; Nagle holds a sender's second small write until that ACK comes.
STALL_MIN_NS: Final = 35_000_000
STALL_MAX_NS: Final = 550_000_000
STALL_MAX_BYTES: Final = 16384
# One round trip this long or more explains such a gap without any stall.
STALL_RTT_FACTOR: Final = 4

# Summary names (`otel_ebpf.verdict`), as the README documents them.
SERVER: Final = "server"
NETWORK: Final = "network"
DOWNSTREAM: Final = "downstream"
FLOW_CONTROL: Final = "flow_control"
STALL: Final = "delayed_ack_stall"


# Plain classes, not NamedTuples: two of each are made per request, and compiled
# a class is made in a fraction of a NamedTuple's (interpreted) constructor's time.


class Timing:
    """What one side measured of one request (nanoseconds)."""

    def __init__(
        self,
        server_side: bool,
        start: int,
        request_end: int,
        response_start: int | None,
        end: int,
        request_bytes: int = 0,
        send_wait: int = 0,  # this side's sends waited for buffer room, during the request
        window_small: int = 0,  # segments seen with a receive window nearly shut
        rtt: int = 0,  # smoothed round-trip time (0: not known)
        downstream: int = 0,  # server: time in its own outgoing calls (their client spans)
    ) -> None:
        self.server_side = server_side
        self.start = start
        self.request_end = request_end
        self.response_start = response_start
        self.end = end
        self.request_bytes = request_bytes
        self.send_wait = send_wait
        self.window_small = window_small
        self.rtt = rtt
        self.downstream = downstream


class PeerSplit:
    """The server side's verdict on a request, for the client span of the same call."""

    def __init__(
        self,
        handling: int,  # the server's whole share: its own time and its downstream calls
        stall: str | None,
        stall_ns: int,
        window_small: int,
    ) -> None:
        self.handling = handling
        self.stall = stall
        self.stall_ns = stall_ns
        self.window_small = window_small


class Split:
    def __init__(
        self,
        request: int,  # first to last request byte
        wait: int,  # last request byte to first response byte (or to the end)
        response: int,  # first to last response byte
        server: int,
        network: int,
        downstream: int,
        stall: str | None,
        stall_ns: int,
        estimated: bool,  # a client's split without its server's span: from the RTT
        verdict: str,
    ) -> None:
        self.request = request
        self.wait = wait
        self.response = response
        self.server = server
        self.network = network
        self.downstream = downstream
        self.stall = stall
        self.stall_ns = stall_ns
        self.estimated = estimated
        self.verdict = verdict


def split(t: Timing, peer: PeerSplit | None = None) -> Split:
    """The phases of one request and where its time went."""
    end = max(t.end, t.start)
    request_end = min(max(t.request_end, t.start), end)
    answered = t.response_start is not None
    response_start = min(max(t.response_start or 0, request_end), end) if answered else end
    request, wait = request_end - t.start, response_start - request_end
    response, duration = end - response_start, end - t.start
    stall: str | None = None
    stall_ns = 0
    window_small = t.window_small
    estimated = False
    if t.server_side:
        if _delayed_ack_stall(request, t.request_bytes, t.rtt):
            stall, stall_ns = STALL, request
        network = min(request + t.send_wait, duration)
        downstream = min(t.downstream, duration - network)
        server = duration - network - downstream
    else:
        downstream = 0
        if peer is not None:
            server = min(peer.handling, duration)
            stall, stall_ns = peer.stall, min(peer.stall_ns, duration)
            window_small += peer.window_small
        else:
            server = max(wait - t.rtt, 0) if answered else 0
            estimated = True
        network = duration - server
    return Split(
        request,
        wait,
        response,
        server,
        network,
        downstream,
        stall,
        stall_ns,
        estimated,
        _verdict(server, network, downstream, stall_ns, window_small),
    )


def _delayed_ack_stall(request_ns: int, request_bytes: int, rtt_ns: int) -> bool:
    if not STALL_MIN_NS <= request_ns <= STALL_MAX_NS:
        return False
    if not 0 < request_bytes <= STALL_MAX_BYTES:
        return False
    return rtt_ns == 0 or rtt_ns * STALL_RTT_FACTOR <= request_ns


def _verdict(server: int, network: int, downstream: int, stall_ns: int, window_small: int) -> str:
    """The part that took most of the time, the network's named by its cause."""
    largest = server if server >= network else network  # max() of three: a generic call
    if downstream > largest:
        largest = downstream
    if largest == network and network > 0:
        if stall_ns * 2 >= network:
            return STALL
        if window_small:
            return FLOW_CONTROL
        return NETWORK
    if largest == downstream and downstream > 0:
        return DOWNSTREAM
    return SERVER
