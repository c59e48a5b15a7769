"""The OTLP receiver under hostile requests, against the running collector: every
request gets an answer, memory stays bounded, and good requests still go through."""

from __future__ import annotations

import contextlib
import socket
import zlib
from collections.abc import Iterator

import grpc
import psutil
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from harness import CollectorProcess, wait_until

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MiB = 1 << 20


def request(service: str) -> trace_service_pb2.ExportTraceServiceRequest:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("op"):
        pass
    return encode_spans(memory.get_finished_spans())


def post(port: int, head: bytes, body: bytes = b"") -> int:
    """Send raw bytes; the status of the answer (0: closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # It may close early on a request it refused: the answer is what counts.
        with contextlib.suppress(OSError):
            s.sendall(head + body)
        answer = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def head(length: str | None, encoding: str = "", ctype: str = "application/x-protobuf") -> bytes:
    lines = [b"POST /v1/traces HTTP/1.1", b"Host: x", f"Content-Type: {ctype}".encode()]
    if length is not None:
        lines.append(b"Content-Length: " + length.encode("latin-1"))
    if encoding:
        lines.append(f"Content-Encoding: {encoding}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    return b"".join(packer.compress(zeros) for _ in range(size // MiB)) + packer.flush()


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    """A collector of its own: a process that exports OTLP to a collector is taken
    for an SDK-instrumented app (its eBPF spans are held for merging), and the
    sender here is the test process, a client in the other tests."""
    tmp = tmp_path_factory.mktemp("otlp-limits")
    proc = CollectorProcess(tmp, {"file": {"path": str(tmp / "spans.jsonl")}}, otlp_in=True)
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def rss(collector: CollectorProcess) -> Iterator[psutil.Process]:
    yield psutil.Process(collector.proc.pid)


def test_hostile_http_requests_get_answers_and_cost_no_memory(
    collector: CollectorProcess, rss: psutil.Process
) -> None:
    port = collector.otlp_http_port
    before = rss.memory_info().rss
    bomb = gzip_of_zeros(512 * MiB)  # about 0.5 MB on the wire
    good = request("otlp-limits-ok").SerializeToString()
    bad_kind = request("x")
    bad_kind.resource_spans[0].scope_spans[0].spans[0].kind = 99  # type: ignore[assignment]
    bad_status = request("x")
    bad_status.resource_spans[0].scope_spans[0].spans[0].status.code = 7  # type: ignore[assignment]
    cases = [
        (head("-1"), b"x" * 1000, 400),
        (head("abc"), b"", 400),
        (head("\xb2"), b"", 400),
        (head(None), b"", 411),
        (head(str(300 * MiB)), b"x" * 1000, 413),
        (head(str(len(bomb)), "gzip"), bomb, 413),
        (head("5", "gzip"), b"\x1f\x8bxyz", 400),
        (head("7"), b"\xff\xff\xff\xff\xff\xff\xff", 400),
        (head(str(len(bad_kind.SerializeToString()))), bad_kind.SerializeToString(), 400),
        (head(str(len(bad_status.SerializeToString()))), bad_status.SerializeToString(), 400),
        (head(str(len(good)), ctype="text/plain"), good, 415),
    ]
    for raw_head, body, expected in cases:
        assert post(port, raw_head, body) == expected, raw_head
    # each refusal counted where an SRE looks (self-telemetry, once a second)
    wait_until(
        lambda: collector.telemetry()["otlp_requests_refused"] >= len(cases), 10, "the count"
    )
    grown = rss.memory_info().rss - before
    assert grown < 128 * MiB, f"collector grew by {grown / MiB:.0f} MiB"
    assert post(port, head(str(len(good))), good) == 200
    spans = collector.config_path.parent / "spans.jsonl"
    wait_until(
        lambda: spans.exists() and "otlp-limits-ok" in spans.read_text(),
        30,
        "the good request's span",
    )
    assert collector.proc.poll() is None
    log = collector.log_path.read_text(errors="replace")
    assert "Traceback" not in log


def test_hostile_grpc_requests_are_refused_with_a_status(
    collector: CollectorProcess, rss: psutil.Process
) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{collector.otlp_grpc_port}")
    export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
    before = rss.memory_info().rss
    huge = request("x")
    huge.resource_spans[0].resource.attributes.append(
        KeyValue(key="blob", value=AnyValue(string_value="0" * (64 * MiB)))
    )
    bad_kind = request("x")
    bad_kind.resource_spans[0].scope_spans[0].spans[0].kind = 99  # type: ignore[assignment]
    for message, compression, code in (
        (
            huge.SerializeToString(),
            grpc.Compression.NoCompression,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        # small on the wire, 64 MiB once decompressed: refused all the same
        (huge.SerializeToString(), grpc.Compression.Gzip, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (bad_kind.SerializeToString(), None, grpc.StatusCode.INVALID_ARGUMENT),
        (b"\xff\xff\xff\xff", None, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            export(message, timeout=20, compression=compression)
        assert err.value.code() == code, err.value
    grown = rss.memory_info().rss - before
    assert grown < 128 * MiB, f"collector grew by {grown / MiB:.0f} MiB"
    good = request("x").SerializeToString()
    assert export(good, timeout=20) == b""
    channel.close()
    assert collector.proc.poll() is None
    assert "Traceback" not in collector.log_path.read_text(errors="replace")
