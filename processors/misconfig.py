"""Socket settings that silently do not take, found from the process's own calls.

A socket's buffer sizes set after its handshake (`setsockopt(SO_RCVBUF)` on an
accepted or connected socket) do not change the TCP window scale, which both
ends fixed in the SYNs: a smaller receive buffer then advertises a tiny window
and throttles every upload to that socket (often a hundredfold), a larger one
cannot be used in full. Set on a listening socket it is fine (each SYN reads the
listener's buffer), so the kernel program only reports accepted and connected
sockets, and this module checks /proc that the socket is TCP and names its port.

Reported once per process and port: a log line, a count in the self-telemetry,
and an attribute on the spans of that process's connections at that port.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Final

from otel_ebpf.model import SocketBufferSet

log = logging.getLogger(__name__)

_TCP_LISTEN: Final = "0A"
MAX_REPORTED: Final = 4096
# A process that sets the option on every accepted socket would cost a read of its
# namespace's TCP table per connection: look again at most this often.
RECHECK_NS: Final = 10_000_000_000


class Misconfigurations:
    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        # (pid, local port) -> what is wrong there, for the spans of those connections
        self._found: OrderedDict[tuple[int, int], str] = OrderedDict()
        self._said: set[tuple[str, int, str]] = set()
        self._looked: OrderedDict[tuple[int, str], int] = OrderedDict()  # (pid, option) -> ts

    def at(self, pid: int, local_port: int) -> str | None:
        """What is misconfigured on this process's sockets at this local port."""
        return self._found.get((pid, local_port)) if self._found else None

    def buffer_set(self, ev: SocketBufferSet, executable: str) -> bool:
        """A buffer size set past the handshake; True when it is new (to count)."""
        last = self._looked.get((ev.pid, ev.option))
        if last is not None and ev.ts - last < RECHECK_NS:
            return False  # said already, or not TCP: the same again, most likely
        self._looked[(ev.pid, ev.option)] = ev.ts
        if len(self._looked) > MAX_REPORTED:
            self._looked.popitem(last=False)
        ends = self._tcp_ports(ev.pid, ev.fd)
        if ends is None:
            return False  # not TCP (a connected UDP socket), or already gone
        local, remote, served = ends
        what = f"{ev.option} set after the handshake"
        self._found[(ev.pid, local)] = what
        if len(self._found) > MAX_REPORTED:
            self._found.popitem(last=False)
        port = local if served else remote
        key = (executable, port, ev.option)
        if key in self._said:
            return False
        self._said.add(key)
        side = f"connections accepted on port {port}" if served else f"connections to port {port}"
        log.warning(
            "%s[%d] sets %s=%d on %s after their handshake: the TCP window scale is "
            "already fixed, so the setting does not take as meant (a smaller receive "
            "buffer throttles the peer); set it on the listening socket or before connect()",
            executable,
            ev.pid,
            ev.option,
            ev.value,
            side,
        )
        return True

    def _tcp_ports(self, pid: int, fd: int) -> tuple[int, int, bool] | None:
        """(local port, remote port, accepted from a listener of this process)."""
        try:
            link = os.readlink(f"{self._proc}/{pid}/fd/{fd}")
        except OSError:
            return None
        if not link.startswith("socket:["):
            return None
        inode = link[len("socket:[") : -1]
        found = None
        listening: set[int] = set()
        for table in ("tcp", "tcp6"):
            try:
                with open(f"{self._proc}/{pid}/net/{table}") as f:
                    next(f, None)
                    for line in f:
                        fields = line.split()
                        if len(fields) < 10:
                            continue
                        local = int(fields[1].rsplit(":", 1)[1], 16)
                        if fields[3] == _TCP_LISTEN:
                            listening.add(local)
                        if fields[9] == inode:
                            found = (local, int(fields[2].rsplit(":", 1)[1], 16))
            except (OSError, ValueError, IndexError):
                continue
        if found is None:
            return None
        return found[0], found[1], found[0] in listening
