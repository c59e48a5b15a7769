"""RED histograms, route templates and the service graph, read back
through the SDK's in-memory reader (pure logic: no kernel, no exporter)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from metric_points import points
from otel_ebpf.metrics import (
    DB_BUCKETS,
    HTTP_BUCKETS,
    KERNEL_BUCKETS,
    CollectorMetrics,
    rebin,
    split_by_service,
)
from otel_ebpf.model import (
    Endpoint,
    HttpExchange,
    HttpHead,
    RedCount,
    RedisExchange,
    RespValue,
    Role,
    SqlExchange,
)
from otel_ebpf.processes import ProcessInfo
from otel_ebpf.processors.connections import Connection
from otel_ebpf.processors.metrics_recorder import MetricsRecorder
from otel_ebpf.processors.routes import OVERFLOW, RouteTemplates
from otel_ebpf.processors.spans import SpanBuilder
from otel_ebpf.telemetry import SelfTelemetry

SERVER_END, CLIENT_END = Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 50000)


def setup(
    peers: dict[tuple[Endpoint, Endpoint], str] | None = None,
) -> tuple[MetricsRecorder, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    metrics = CollectorMetrics([reader], SelfTelemetry())
    recorder = MetricsRecorder(
        metrics,
        RouteTemplates(max_per_service=100),
        lambda local, remote: (peers or {}).get((local, remote)),
    )
    return recorder, reader


def conn(role: Role, service: str) -> Connection:
    c = Connection(16, role)
    if role == Role.SERVER:
        c.local, c.remote = SERVER_END, CLIENT_END
    else:
        c.local, c.remote = CLIENT_END, SERVER_END
    c.process = ProcessInfo(7, service, service, Resource({"service.name": service}))
    return c


def request(
    path: str,
    status: int,
    role: Role,
    service: str,
    recorder: MetricsRecorder,
    red_in_kernel: bool = False,
) -> None:
    head = HttpHead(True, "GET", path, 0, "1.1", {}, 1_000, False)
    resp = HttpHead(False, "", "", status, "1.1", {}, 2_000_000, False)
    c = conn(role, service)
    span = SpanBuilder(epoch_offset=0).build(HttpExchange(head, 0, resp, 0, 1_000, 2_000_000), c)
    assert span is not None
    recorder.span(span, c.local, c.remote, red_in_kernel)


def test_red_counts_by_method_route_status_with_the_advised_buckets() -> None:
    recorder, reader = setup()
    for status, n in ((200, 7), (404, 3), (503, 2)):
        for i in range(n):
            request(f"/orders/{i}", status, Role.SERVER, "shop", recorder)
    got = {
        (p.attributes["http.route"], p.attributes["http.response.status_code"]): p.count
        for p in points(reader, "http.server.request.duration")
    }
    assert got == {("/orders/{id}", 200): 7, ("/orders/{id}", 404): 3, ("/orders/{id}", 503): 2}
    (p, *_) = points(reader, "http.server.request.duration")
    assert tuple(p.explicit_bounds) == HTTP_BUCKETS and p.attributes["service.name"] == "shop"
    assert p.attributes.get("error.type") in (None, "503")


def test_ten_thousand_ids_stay_under_the_route_cap() -> None:
    recorder, reader = setup()
    for i in range(10_000):
        request(f"/users/{i}/orders/{i * 2654435761:016x}", 200, Role.SERVER, "shop", recorder)
    for i in range(300):  # distinct templates: the cap must hold
        request(f"/p-{chr(97 + i % 26)}{chr(97 + i // 26)}", 200, Role.SERVER, "shop", recorder)
    routes = {p.attributes["http.route"] for p in points(reader, "http.server.request.duration")}
    assert "/users/{id}/orders/{id}" in routes and OVERFLOW in routes
    assert len(routes) == 100 + 1


def test_service_graph_uses_the_peer_process_name() -> None:
    recorder, reader = setup(peers={(CLIENT_END, SERVER_END): "backend"})
    request("/x", 200, Role.CLIENT, "frontend", recorder)
    request("/x", 500, Role.CLIENT, "frontend", recorder)
    (total,) = points(reader, "traces_service_graph_request_total")
    assert dict(total.attributes) == {"client": "frontend", "server": "backend"}
    assert total.value == 2
    (failed,) = points(reader, "traces_service_graph_request_failed_total")
    assert failed.value == 1


def test_push_exports_carry_one_resource_per_service() -> None:
    recorder, reader = setup()
    request("/a", 200, Role.SERVER, "shop", recorder)
    request("/b", 200, Role.SERVER, "cart", recorder)
    data = reader.get_metrics_data()
    assert data is not None
    split = split_by_service(data)
    by_service = {
        rm.resource.attributes.get("service.name"): [
            p for sm in rm.scope_metrics for m in sm.metrics for p in m.data.data_points
        ]
        for rm in split.resource_metrics
    }
    assert {"shop", "cart", "otel-ebpf"} <= set(by_service)  # otel-ebpf: self-telemetry
    assert all("service.name" not in p.attributes for p in by_service["shop"])
    assert len(by_service["shop"]) == len(by_service["cart"]) >= 1


def test_an_edges_time_splits_into_server_and_network_with_its_verdicts() -> None:
    recorder, reader = setup(peers={(CLIENT_END, SERVER_END): "backend"})
    resource = Resource({"service.name": "frontend"})
    for verdict, server, network in (("server", 0.2, 0.01), ("network", 0.01, 0.5)):
        span = ReadableSpan(
            name="GET",
            kind=SpanKind.CLIENT,
            resource=resource,
            start_time=0,
            end_time=int((server + network) * 1e9),
            attributes={
                "http.request.method": "GET",
                "otel_ebpf.time.server": server,
                "otel_ebpf.time.network": network,
                "otel_ebpf.verdict": verdict,
            },
        )
        recorder.span(span, CLIENT_END, SERVER_END)
    parts = {
        p.attributes["otel_ebpf.time.part"]: round(p.sum, 6)
        for p in points(reader, "otel_ebpf.service_graph.request.time")
    }
    assert parts == {"server": 0.21, "network": 0.51}
    verdicts = {
        (p.attributes["server"], p.attributes["otel_ebpf.verdict"]): p.value
        for p in points(reader, "otel_ebpf.service_graph.verdicts")
    }
    assert verdicts == {("backend", "server"): 1, ("backend", "network"): 1}


def kernel_counts(
    path: str,
    status: int,
    requests: int,
    method: str = "GET",
    role: Role = Role.SERVER,
    host: str = "",
    tls: bool = False,
) -> RedCount:
    buckets = [0] * (len(HTTP_BUCKETS) + 1)
    buckets[1] = requests  # (5 ms, 10 ms]
    client = role == Role.CLIENT
    return RedCount(
        7,
        b"app",
        role,
        8080,
        method,
        "" if client else path,
        host,
        "10.0.0.1" if client else "",
        "1.1",
        status,
        tls,
        "http",
        "",
        requests,
        requests * 8_000_000,
        6_000_000,
        9_000_000,
        tuple(buckets),
    )


def test_kernel_counts_join_the_series_spans_would_have_made() -> None:
    recorder, reader = setup()
    request("/orders/1", 200, Role.SERVER, "shop", recorder)  # a span's measurement
    recorder.kernel_http_server(kernel_counts("/orders/2", 200, 5), "shop")
    (point,) = points(reader, "http.server.request.duration")
    assert point.count == 6 and point.attributes["http.route"] == "/orders/{id}"
    assert round(point.sum, 6) == round(0.001999 + 5 * 0.008, 6)
    assert point.bucket_counts[0] == 1 and point.bucket_counts[1] == 5
    assert point.min == 0.001999 and point.max == 0.009


def test_a_request_the_kernel_counted_is_not_counted_again_from_its_span() -> None:
    recorder, reader = setup(peers={(CLIENT_END, SERVER_END): "frontend"})
    request("/a", 200, Role.SERVER, "shop", recorder, red_in_kernel=True)
    assert points(reader, "http.server.request.duration") == []
    assert len(points(reader, "traces_service_graph_request_server_seconds")) == 1


def test_unanswered_and_unknown_methods_from_the_kernel() -> None:
    recorder, reader = setup()
    recorder.kernel_http_server(kernel_counts("/slow", 0, 2), "shop")
    recorder.kernel_http_server(kernel_counts("/x", 503, 1, method="BREW"), "shop")
    got = {
        (
            p.attributes["http.request.method"],
            p.attributes.get("http.response.status_code"),
            p.attributes.get("error.type"),
        ): p.count
        for p in points(reader, "http.server.request.duration")
    }
    assert got == {("GET", None, "no_response"): 2, ("_OTHER", 503, "503"): 1}


def test_an_absolute_target_from_the_kernel_is_routed_by_its_path_alone() -> None:
    recorder, reader = setup()
    target = "http://user:secret@shop.example:8080/orders/17?key=x"
    recorder.kernel_http_server(kernel_counts(target[:64], 200, 1), "shop")
    (point,) = points(reader, "http.server.request.duration")
    assert point.attributes["http.route"] == "/orders/{id}"
    assert "secret" not in repr(point.attributes)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=64),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=10),
    st.integers(0, 999),
)
def test_whatever_path_the_kernel_read_is_a_bounded_route(
    path: bytes, method: str, status: int
) -> None:
    recorder, reader = setup()
    recorder.kernel_http_server(kernel_counts(path.decode("latin-1"), status, 1, method), "shop")
    (point,) = points(reader, "http.server.request.duration")
    assert point.count == 1 and len(str(point.attributes["http.route"])) <= 64


def test_kernel_client_counts_name_the_server_as_their_spans_do() -> None:
    recorder, reader = setup(peers={(CLIENT_END, SERVER_END): "backend"})
    request("/x", 200, Role.CLIENT, "frontend", recorder)  # a span's measurement
    recorder.kernel_http_client(kernel_counts("", 200, 4, role=Role.CLIENT), "frontend", "backend")
    recorder.kernel_http_client(
        kernel_counts("", 404, 2, role=Role.CLIENT, host="api.example"), "frontend", None
    )
    got = {
        (
            p.attributes["server.address"],
            p.attributes["server.port"],
            p.attributes.get("error.type"),
        ): p.count
        for p in points(reader, "http.client.request.duration")
    }
    assert got == {("10.0.0.1", 8080, None): 5, ("api.example", 8080, "404"): 2}
    edges = {
        (p.attributes["server"]): p.value
        for p in points(reader, "traces_service_graph_request_total")
    }
    assert edges == {"backend": 5, "10.0.0.1": 2}
    (failed,) = points(reader, "traces_service_graph_request_failed_total")
    assert failed.value == 2 and failed.attributes["server"] == "10.0.0.1"


def test_a_client_request_the_kernel_counted_keeps_only_its_verdict_from_the_span() -> None:
    recorder, reader = setup(peers={(CLIENT_END, SERVER_END): "backend"})
    span = ReadableSpan(
        name="GET",
        kind=SpanKind.CLIENT,
        resource=Resource({"service.name": "frontend"}),
        start_time=0,
        end_time=10_000_000,
        attributes={
            "http.request.method": "GET",
            "otel_ebpf.time.server": 0.009,
            "otel_ebpf.time.network": 0.001,
            "otel_ebpf.verdict": "server",
        },
    )
    recorder.span(span, CLIENT_END, SERVER_END, red_in_kernel=True)
    assert points(reader, "http.client.request.duration") == []
    assert points(reader, "traces_service_graph_request_total") == []
    assert len(points(reader, "otel_ebpf.service_graph.verdicts")) == 1


def test_kernel_counts_of_https_say_so() -> None:
    recorder, reader = setup()
    recorder.kernel_http_server(kernel_counts("/a", 200, 3, tls=True), "shop")
    (point,) = points(reader, "http.server.request.duration")
    assert point.attributes["url.scheme"] == "https" and point.count == 3


def db_counts(
    name: str,
    error: str,
    requests: int,
    status: int = 1,
    protocol: str = "redis",
    table: str = "",
    database: str = "",
) -> RedCount:
    buckets = [0] * (len(KERNEL_BUCKETS) + 1)
    buckets[3] = requests  # (10 ms, 25 ms]
    return RedCount(
        7,
        b"app",
        Role.CLIENT,
        8080,
        name,
        table,
        database,
        "10.0.0.1",
        "",
        status,
        False,
        protocol,
        error,
        requests,
        requests * 20_000_000,
        20_000_000,
        20_000_000,
        tuple(buckets),
    )


def redis_span(name: bytes, reply: RespValue | None, recorder: MetricsRecorder) -> None:
    bulk = RespValue(ord("$"), name, (), 0, 0, 0)
    command = RespValue(ord("*"), b"", (bulk,), 2, 1_000, 1_000)
    c = conn(Role.CLIENT, "frontend")
    span = SpanBuilder(epoch_offset=0).build(RedisExchange(command, reply, 1_000, 2_000_000), c)
    assert span is not None
    recorder.span(span, c.local, c.remote)


def test_kernel_redis_counts_join_the_series_their_spans_would_have_made() -> None:
    recorder, reader = setup(peers={(CLIENT_END, SERVER_END): "cache"})
    redis_span(b"get", RespValue(ord("$"), b"v", (), 0, 0, 0), recorder)
    redis_span(b"incr", RespValue(ord("-"), b"WRONGTYPE Operation", (), 0, 0, 0), recorder)
    redis_span(b"get", None, recorder)
    recorder.kernel_db_client(db_counts("GET", "", 5), "frontend", "cache")
    recorder.kernel_db_client(db_counts("INCR", "WRONGTYPE", 2), "frontend", "cache")
    recorder.kernel_db_client(db_counts("GET", "", 3, status=0), "frontend", "cache")
    got = {
        tuple(sorted(p.attributes.items())): (p.count, tuple(p.bucket_counts))
        for p in points(reader, "db.client.operation.duration")
    }
    assert len(got) == 3  # the spans' three series, no more
    by_error = {dict(k).get("error.type"): v for k, v in got.items()}
    assert by_error[None][0] == 6 and by_error["WRONGTYPE"][0] == 3
    assert by_error["no_response"][0] == 4
    # the kernel's 20 ms lands in DB_BUCKETS' (10 ms, 50 ms]; the span's 2 ms in (1, 5]
    assert by_error[None][1] == (0, 1, 0, 5, 0, 0, 0, 0, 0, 0)
    (graph,) = points(reader, "traces_service_graph_request_client_seconds")
    assert graph.count == 13 and graph.bucket_counts[0] == 3 and graph.bucket_counts[2] == 10
    (failed,) = points(reader, "traces_service_graph_request_failed_total")
    assert failed.value == 2 + 3 + 2  # WRONGTYPE and unanswered, by span and by kernel


def test_rebinned_counts_keep_every_measurement_in_its_interval() -> None:
    counts = tuple(range(1, len(KERNEL_BUCKETS) + 2))
    for into in (DB_BUCKETS, HTTP_BUCKETS):
        out = rebin(counts, KERNEL_BUCKETS, into)
        assert len(out) == len(into) + 1 and sum(out) == sum(counts)
    assert rebin(counts, KERNEL_BUCKETS, DB_BUCKETS)[:4] == (1, 2, 3, 4 + 5)


def test_kernel_postgresql_counts_join_the_series_their_spans_would_have_made() -> None:
    recorder, reader = setup(peers={(CLIENT_END, SERVER_END): "db"})
    c = conn(Role.CLIENT, "frontend")
    builder = SpanBuilder(epoch_offset=0)
    for query, error in (
        ("UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 3;", None),
        ("BEGIN;", None),
        ("SELECT * FROM missing", "42P01"),
    ):
        x = SqlExchange("postgresql", query, "bench", 1_000, 2_000_000, True, error)
        span = builder.build(x, c)
        assert span is not None
        recorder.span(span, c.local, c.remote)
    pg = {"protocol": "postgresql", "database": "bench"}
    recorder.kernel_db_client(
        db_counts("UPDATE", "", 5, table="pgbench_accounts", **pg), "frontend", "db"
    )
    recorder.kernel_db_client(db_counts("BEGIN", "", 2, **pg), "frontend", "db")
    recorder.kernel_db_client(
        db_counts("SELECT", "42P01", 3, 2, table="missing", **pg), "frontend", "db"
    )
    got = {
        tuple(sorted(p.attributes.items())): p.count
        for p in points(reader, "db.client.operation.duration")
    }
    assert len(got) == 3  # the spans' three series, no more
    by_operation = {dict(k)["db.operation.name"]: (dict(k), n) for k, n in got.items()}
    assert by_operation["UPDATE"][1] == 6 and by_operation["BEGIN"][1] == 3
    failed, n = by_operation["SELECT"]
    assert n == 4 and failed["error.type"] == failed["db.response.status_code"] == "42P01"
    assert failed["db.namespace"] == "bench" and failed["db.collection.name"] == "missing"


def test_the_collectors_memory_and_its_refused_otlp_requests_are_metrics() -> None:
    reader = InMemoryMetricReader()
    telemetry = SelfTelemetry(
        otlp_requests_busy=7,
        otlp_requests_over_memory=5,
        otlp_requests_refused=2,
        memory_resident_mib=120,
        memory_soft_limit_mib=307,
        memory_limit_mib=409,
    )
    CollectorMetrics([reader], telemetry)
    requests = {
        p.attributes["state"]: p.value for p in points(reader, "otel_ebpf.collector.otlp.requests")
    }
    assert requests == {"busy": 2, "over_memory": 5, "refused": 2}
    memory = {p.attributes["state"]: p.value for p in points(reader, "otel_ebpf.collector.memory")}
    assert memory == {"resident": 120 << 20, "soft_limit": 307 << 20, "limit": 409 << 20}
    telemetry.memory_limit_mib = telemetry.memory_soft_limit_mib = 0  # no limiter
    memory = {p.attributes["state"]: p.value for p in points(reader, "otel_ebpf.collector.memory")}
    assert memory == {"resident": 120 << 20}
