"""The collector's own connections, and their peers: never traced.

An exporter's channel to a backend on this node would otherwise be traced,
its spans exported, traced again: a loop. Sockets we open or accept are known
as ours from their open event (before a byte moves: the peer may read our
first bytes before the kernel reports that we sent them), older ones from the
kernel's first sight of our pid on them, or from /proc.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable

import psutil

from otel_ebpf.model import ConnOpen, Endpoint, OtlpSender, Role

Ends = tuple[Endpoint, Endpoint]  # (local, remote)


def connections_of(pid: int) -> list[Ends]:
    """A process's TCP connections now, from /proc (none when it cannot be read)."""
    try:
        return [
            (Endpoint(c.laddr.ip, c.laddr.port), Endpoint(c.raddr.ip, c.raddr.port))
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.laddr and c.raddr
        ]
    except (psutil.Error, OSError):
        return []


class OwnTraffic:
    def __init__(self, connections: Callable[[int], list[Ends]] = connections_of) -> None:
        """`connections`: where our connections are read from (/proc; tests count)."""
        self._connections = connections
        self._pid = os.getpid()
        self._sockets: dict[int, Ends | None] = {}  # ours, with their ends when known
        self._peers: set[Ends] = set()  # (local, remote) of connections talking to us
        self._listeners: set[int] = set()  # ports we serve on (OTLP in, health)
        # (client socket, our port) -> the client's pid
        self._listener_clients: OrderedDict[OtlpSender, int] = OrderedDict()
        self._checked = 0.0
        self._scanned = 0.0  # the last /proc scan for an unknown client (at most 1/s)

    def add_listener(self, port: int) -> None:
        self._listeners.add(port)

    def pid_of_peer(self, sender: OtlpSender) -> int | None:
        """The process behind `sender`'s connection to our listener (OTLP in):
        from its open event, else from /proc (the first batch on a new connection
        can be handled before that event is: its spans would be nobody's, and the
        SDK process unknown until its next export)."""
        pid = self._listener_clients.get(sender)
        if pid is None and time.monotonic() - self._scanned >= 1.0:
            self._scanned = time.monotonic()
            pid = self._scan_for_client(sender)
        return pid

    def _scan_for_client(self, sender: OtlpSender) -> int | None:
        peer = sender.client
        try:
            for c in psutil.net_connections(kind="tcp"):
                if (
                    c.pid
                    and c.laddr
                    and c.raddr
                    and c.raddr.port == sender.listener_port
                    and (c.laddr.ip, c.laddr.port) == (peer.address, peer.port)
                ):
                    self._remember_client(sender, c.pid)
                    return c.pid
        except (psutil.Error, OSError):
            pass
        return None

    def _remember_client(self, sender: OtlpSender, pid: int) -> None:
        self._listener_clients[sender] = pid
        if len(self._listener_clients) > 4096:
            self._listener_clients.popitem(last=False)

    def __contains__(self, sk: int) -> bool:
        return sk in self._sockets

    def opened(self, ev: ConnOpen) -> bool:
        """A connection opened: True when it is ours (opened by us, or accepted by
        one of our listeners)."""
        self.forget(ev.sk)  # whatever we knew of this address is gone
        if ev.role == Role.CLIENT and ev.remote.port in self._listeners:
            self._remember_client(OtlpSender(ev.local, ev.remote.port), ev.pid)  # OTLP in
        if (ev.role == Role.CLIENT and ev.pid == self._pid) or (
            ev.role == Role.SERVER and ev.local.port in self._listeners
        ):
            self._sockets[ev.sk] = (ev.local, ev.remote)
            self._peers.add((ev.remote, ev.local))
            return True
        return False

    def seen_using(self, sk: int, ends: Ends | None) -> None:
        """The kernel saw us move bytes on `sk` (its ends if known, else /proc tells:
        unless it is known as ours since its open, as every connection to our
        health endpoint is, where reading /proc/net/tcp on a busy node costs
        more than the probe it answers)."""
        if ends is None and sk in self._sockets:
            return
        self._sockets[sk] = ends
        if ends:
            self._peers.add((ends[1], ends[0]))
        else:
            self.mark_current()

    def forget(self, sk: int) -> bool:
        """`sk` closed (or was reused): True if it was ours."""
        if sk not in self._sockets:
            return False
        ends = self._sockets.pop(sk)
        if ends:
            self._peers.discard((ends[1], ends[0]))
        return True

    def is_peer(self, local: Endpoint | None, remote: Endpoint | None, fresh: bool) -> bool:
        """(local, remote) talks to one of our sockets. For a connection older than
        the probes (not `fresh`), /proc is read again now and then: it may be the
        peer of a channel we opened before the probes were attached."""
        if not fresh and time.monotonic() - self._checked > 1.0:
            self._checked = time.monotonic()
            self.mark_current()
        return local is not None and remote is not None and (local, remote) in self._peers

    def mark_current(self) -> None:
        """Our connections now, from /proc: mark the peer of every one."""
        for local, remote in self._connections(self._pid):
            self._peers.add((remote, local))
