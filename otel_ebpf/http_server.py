"""The HTTP server class for the collector's own endpoints (OTLP/HTTP in, health)."""

from __future__ import annotations

import logging
from http.server import ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class QuietHTTPServer(ThreadingHTTPServer):
    """A client that resets or stalls is its own business: one debug line, never
    a traceback on stderr (socketserver's default). Handler threads never hold
    up shutdown."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended in error", client_address, exc_info=True)
