"""One hop of a request chain on one asyncio event loop (streams, no framework).

`asyncio_hop.py PORT [NEXT_PORT]`: as threads_hop.py, HTTP/1.1 keep-alive in,
a new connection per outgoing call.
"""

import asyncio
import sys

NEXT = int(sys.argv[2]) if len(sys.argv) > 2 else 0


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length) if length else b""


async def _call(path: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", NEXT)
    writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: next\r\nConnection: close\r\n\r\n")
    _, body = await _read_message(reader)
    writer.close()
    return body


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head, _ = await _read_message(reader)
            path = head.split(b" ", 2)[1]
            if NEXT:
                body = await _call(path)
            else:
                await asyncio.sleep(0.002)
                body = b"leaf " + path + b"\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", int(sys.argv[1]), backlog=256)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
