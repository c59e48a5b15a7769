"""A keep-alive HTTP/1.1 (or HTTPS) server for the tests: echo, chunked bodies both ways,
100-continue."""

import socket
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def burn_cpu(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        sum(i * i for i in range(1000))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle and the client's
    # delayed ACK hold every keep-alive response back by 40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/chunked-response"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"alpha", b"beta" * 100, b"gamma"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/burn/"):  # /burn/300: the handler computes for 300 ms of CPU
            burn_cpu(int(self.path.rsplit("/", 1)[1]) / 1000)
        if self.path.startswith("/sleep/"):  # /sleep/300: the handler takes 300 ms
            time.sleep(int(self.path.rsplit("/", 1)[1]) / 1000)
        if self.path.startswith("/big/"):  # /big/N: an N-byte body
            self._reply(200, b"x" * int(self.path.rsplit("/", 1)[1]))
            return
        if self.path.startswith("/resolve/"):  # /resolve/NAME: 502 if NAME does not resolve
            try:
                socket.getaddrinfo(self.path.rsplit("/", 1)[1], 80)
            except OSError:
                self._reply(502, b"cannot resolve\n")
                return
            self._reply(200, b"resolved\n")
            return
        if self.path.startswith("/status/"):
            path = self.path.partition("?")[0]
            self._reply(int(path.rsplit("/", 1)[1]), b"status\n")
            return
        self._reply(200, b"ok " + self.path.encode() + b"\n")

    def do_POST(self) -> None:
        body = self._body()
        self._reply(201, b"received %d\n" % len(body))

    do_PUT = do_POST


class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6 if len(sys.argv) > 2 and ":" in sys.argv[2] else socket.AF_INET


if __name__ == "__main__":
    # py_http_server.py PORT [HOST [CERT KEY]]: with a certificate, HTTPS (Python's
    # ssl module, which links the system's libssl)
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    server = Server((host, int(sys.argv[1])), Handler)
    if len(sys.argv) > 4:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
