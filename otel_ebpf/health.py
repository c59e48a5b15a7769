"""Health endpoint like the collector's health_check extension: 200 once ready, 503 before.

The body is JSON with the self-telemetry counters, handy for people and benchmarks.
GET /live is the node's last seconds for `otel-ebpf top` (otel_ebpf/live.py).
"""

from __future__ import annotations

import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler

from otel_ebpf.http_server import QuietHTTPServer
from otel_ebpf.live import LiveView
from otel_ebpf.telemetry import SelfTelemetry


class HealthState:
    def __init__(self, telemetry: SelfTelemetry, live: LiveView | None = None) -> None:
        self.telemetry = telemetry
        self.live = live
        self.ready = False
        self.status = "starting"

    def response(self, path: str = "/", client: str = "127.0.0.1") -> tuple[int, bytes]:
        if path.split("?", 1)[0] == "/live":
            if self.live is None:
                return 404, b'{"error": "no live view"}'
            if not ipaddress.ip_address(client.removeprefix("::ffff:")).is_loopback:
                # names, peers and paths: for this node's own eyes (the chart
                # opens this port on the pod IP for the kubelet's probes)
                return 403, b'{"error": "the live view answers loopback clients only"}'
            body = {**self.live.snapshot(), "telemetry": self.telemetry.snapshot()}
            return 200, json.dumps(body).encode()
        body = {"status": self.status, "telemetry": self.telemetry.snapshot()}
        return (200 if self.ready else 503), json.dumps(body).encode()


class HealthServer:
    def __init__(self, endpoint: str, state: HealthState) -> None:
        host, _, port = endpoint.rpartition(":")
        host = host.strip("[]")

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # seconds: a probe asks at once; a client that stalls frees its slot

            def do_GET(self) -> None:
                code, body = state.response(self.path, self.client_address[0])
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = QuietHTTPServer((host, int(port)), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
