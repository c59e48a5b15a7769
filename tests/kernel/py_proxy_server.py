"""An uninstrumented middle tier: each request to /chain calls the downstream's /leaf,
and PINGs redis-server over raw RESP when a Redis port is given; /fail calls the
downstream's /status/500 and answers with its status.

`py_proxy_server.py PORT DOWNSTREAM_PORT [REDIS_PORT]`. No OpenTelemetry here:
the collector must connect the incoming and outgoing requests on its own.
"""

import http.client
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DOWNSTREAM = int(sys.argv[2])
REDIS = int(sys.argv[3]) if len(sys.argv) > 3 else 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", DOWNSTREAM, timeout=10)
        conn.request("GET", "/status/500" if self.path.startswith("/fail") else "/leaf")
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if REDIS:
            with socket.create_connection(("127.0.0.1", REDIS), timeout=5) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                s.recv(64)
        self.send_response(response.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
