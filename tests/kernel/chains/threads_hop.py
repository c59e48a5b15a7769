"""One hop of a request chain on threads (ThreadingHTTPServer + http.client).

`threads_hop.py PORT [NEXT_PORT]`: GET /path calls NEXT_PORT's /path and answers
with its body; the last hop waits 2 ms (so requests overlap) and answers
"leaf /path". No OpenTelemetry: the collector links the hops on its own.
"""

import http.client
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NEXT = int(sys.argv[2]) if len(sys.argv) > 2 else 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if NEXT:
            conn = http.client.HTTPConnection("127.0.0.1", NEXT, timeout=30)
            conn.request("GET", self.path)
            body = conn.getresponse().read()
            conn.close()
        else:
            time.sleep(0.002)
            body = f"leaf {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 256
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
