"""Relay one TCP service and record both directions, to make parser fixtures.

    python tests/captures/record.py LISTEN_PORT UPSTREAM_PORT OUT.bin

Run a real client against LISTEN_PORT; every chunk the relay reads is written
as: 1 byte (1 = client to server), 4 bytes big-endian length, the bytes.
Stops after the first connection closes.
"""

from __future__ import annotations

import selectors
import socket
import struct
import sys


def main() -> None:
    listen_port, upstream_port, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    server = socket.create_server(("127.0.0.1", listen_port))
    client, _ = server.accept()
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    peers = {client: (upstream, 1), upstream: (client, 0)}
    sel = selectors.DefaultSelector()
    for s in peers:
        sel.register(s, selectors.EVENT_READ)
    with open(out_path, "wb") as out:
        while True:
            for key, _ in sel.select():
                src = key.fileobj
                assert isinstance(src, socket.socket)
                data = src.recv(65536)
                dst, to_server = peers[src]
                if not data:
                    return
                out.write(struct.pack(">BI", to_server, len(data)) + data)
                dst.sendall(data)


if __name__ == "__main__":
    main()
