"""An uninstrumented middle tier: each request to /chain calls the downstream's /leaf.

`py_proxy_server.py PORT DOWNSTREAM_PORT`. No OpenTelemetry here: the collector
must connect the incoming and outgoing requests on its own.
"""

import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DOWNSTREAM = int(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", DOWNSTREAM, timeout=10)
        conn.request("GET", "/leaf")
        body = conn.getresponse().read()
        conn.close()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
