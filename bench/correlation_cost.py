"""What correlation costs per span: the Correlator and the Merger alone, no kernel.

Each iteration is one request seen from both ends on one node (a client span
and its server span, linked by socket context) plus one outgoing call made
while serving it (thread context): three spans. Prints microseconds per span.
"""

from __future__ import annotations

import sys
import time

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from otel_ebpf.model import Endpoint, HttpHead, Role
from otel_ebpf.processors.correlate import Correlator
from otel_ebpf.processors.merge import Merger

CLIENT, SERVER, DB = (
    Endpoint("10.0.0.1", 40000),
    Endpoint("10.0.0.2", 80),
    Endpoint("10.0.0.3", 5432),
)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    correlator = Correlator()
    exported: list[ReadableSpan] = []
    merger = Merger(exported.append)
    span = ReadableSpan("GET", context=SpanContext(1, 1, False))
    heads = [HttpHead(True, "GET", "/", 0, "1.1", {}, i * 1000, False, i * 100) for i in range(n)]
    start = time.perf_counter()
    for i, head in enumerate(heads):
        a = correlator.started(Role.CLIENT, head, 1, 1, CLIENT, SERVER, True)
        b = correlator.started(Role.SERVER, head, 2, 2, SERVER, CLIENT, True)
        c = correlator.started(
            Role.CLIENT, head, 2, 2, Endpoint("10.0.0.2", 50000 + i % 1000), DB, True
        )
        for rc in (c, b, a):
            correlator.finished(rc)
            merger.ebpf(span, rc, rc.pid)
    elapsed = time.perf_counter() - start
    assert b.parent_id == a.span_id and c.parent_id == b.span_id
    print(f"correlation + merge: {elapsed / (3 * n) * 1e6:.2f} us per span ({3 * n} spans)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
