"""The span budget on the real kernel: requests shed at their start leave no
trace in user space, kept ones say their threshold, and RED counts every one.

nginx answers ab -k; both ends are traced (ab's client spans, nginx's server
spans), so the kernel decides twice per request and the server end takes the
client's random value where it can (the same request's spans are kept or shed
together). Redis commands from redis-benchmark and redis-py the same way, and
PostgreSQL statements from pgbench and libpq's simple queries.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg
import redis as redis_py

from harness import (
    Chain,
    CollectorProcess,
    Nginx,
    Postgres,
    PythonServer,
    ab,
    get_distinct,
    wait_until,
)
from otel_ebpf.processors.budget import RAND_BITS, threshold_for
from otlp_sink import CLIENT, SERVER, GrpcSink, Span

PATH = "/index.html"
CHAINS = Path(__file__).parent / "chains"


def final_telemetry(collector: CollectorProcess) -> dict[str, int]:
    """The counters the collector logged as it stopped (everything flushed)."""
    line = next(x for x in collector.log_path.read_text().splitlines() if "stopped: {" in x)
    return ast.literal_eval(line[line.index("{") :])  # type: ignore[no-any-return]


def uncounted_processes(
    collector: CollectorProcess, telemetry: dict[str, int]
) -> dict[tuple[str, int], int]:
    """Requests shed uncounted, by (service, pid), as the collector's warnings name
    them (the kernel counts the whole node's, this test's and any other process's):
    every one the kernel counted is named."""
    named: Counter[tuple[str, int]] = Counter()
    for line in collector.log_path.read_text().splitlines():
        if "neither counted nor traced" in line:
            said = line.split("per connection): ", 1)[1]
            for service, pid, n in re.findall(r"([^,]+?) \(pid (\d+)\): (\d+)", said):
                named[(service.strip(), int(pid))] += int(n)
    assert sum(named.values()) == telemetry["requests_shed_uncounted"], named
    return dict(named)


def assert_none_uncounted(
    collector: CollectorProcess, telemetry: dict[str, int], *ours: str
) -> None:
    """None of the test's processes (these services, and this one) had a request
    shed uncounted."""
    named = uncounted_processes(collector, telemetry)
    mine = [(s, pid) for s, pid in named if s in ours or pid == os.getpid()]
    assert not mine, named


def red_requests(sink: GrpcSink, metric: str, service: str) -> int:
    series = sink.metrics.series(metric, **{"service.name": service})
    return sum(int(p.value) for a, p in series.items() if dict(a).get("http.route", PATH) == PATH)


def spans_of(sink: GrpcSink, service: str, kind: int) -> list[Span]:
    return [
        s
        for s in list(sink.store.spans)
        if s.service == service and s.kind == kind and s.attributes.get("url.path") == PATH
    ]


def budget_collector(tmp_path: Path, sink: GrpcSink, **env: str) -> CollectorProcess:
    return CollectorProcess(
        tmp_path / "collector",
        {"otlp": {"endpoint": f"127.0.0.1:{sink.port}", "insecure": True}},
        metrics=["otlp"],
        extra_env={"OTEL_METRIC_EXPORT_INTERVAL": "1000", **env},
    )


def test_a_fixed_probability_keeps_that_share_of_spans_and_counts_every_request(
    tmp_path: Path, nginx: Nginx
) -> None:
    sink = GrpcSink()
    collector = budget_collector(tmp_path, sink, OTEL_EBPF_SPAN_PROBABILITY="0.25")
    n = 4_000
    try:
        ab(nginx.url(PATH), n, 4)
        wait_until(
            lambda: (
                red_requests(sink, "http.server.request.duration", "nginx") == n
                and red_requests(sink, "http.client.request.duration", "ab") == n
            ),
            30,
            f"{n} requests counted on both ends",
        )
    finally:
        assert collector.stop() == 0
        sink.stop()
    telemetry = final_telemetry(collector)
    servers, clients = spans_of(sink, "nginx", SERVER), spans_of(sink, "ab", CLIENT)
    # 1 in 4 of each end (binomial: 1,000 +- 27; these bounds are 11 of those wide)
    for spans in (servers, clients):
        assert 700 <= len(spans) <= 1300, len(spans)
    threshold = threshold_for(0.25)
    with_th = [s for s in servers + clients if s.trace_state]
    for span in with_th:  # the specification's promise: randomness >= threshold
        assert span.trace_state == "ot=th:c"
        assert int(span.trace_id, 16) & RAND_BITS >= threshold
    assert len(with_th) > len(servers)  # most say it (not those whose ends decided apart)
    by_id = {s.span_id: s for s in clients}
    for server in servers:  # a server span's parent is a client span that was kept
        if server.parent_span_id:
            assert server.parent_span_id in by_id
            assert by_id[server.parent_span_id].trace_id == server.trace_id
    assert telemetry["requests_shed"] >= 2 * n - 2 * 1300
    graph = sink.metrics.series(
        "traces_service_graph_request_server_seconds", client="ab", server="nginx"
    )
    weighed = sum(int(p.value) for p in graph.values())
    # the graph's server side, from spans alone: each sampled one stands for 4. A
    # shed request kept for being slow (over 1 s: a SYN the full listen queue
    # dropped, retried) is a partial span, and weighs nothing: it was counted.
    sampled = [s for s in servers if not s.attributes.get("otel_ebpf.span.partial")]
    every_client = sink.metrics.series(
        "traces_service_graph_request_server_seconds", server="nginx"
    )
    by_client = {dict(a).get("client"): int(p.value) for a, p in every_client.items()}
    assert list(by_client) == ["ab"], by_client  # never a raw address for a local client
    assert weighed == 4 * len(sampled), (weighed, len(sampled), by_client)
    (shed,) = sink.metrics.series("otel_ebpf.collector.spans", state="shed").values()
    assert int(shed.value) == telemetry["requests_shed"]  # in the self-telemetry metrics too
    assert telemetry["parse_errors"] == 0
    assert telemetry["requests_unanswered"] == 0
    assert_none_uncounted(collector, telemetry, "nginx", "ab")


def test_over_its_budget_the_collector_sheds_spans_and_metrics_still_count_all(
    tmp_path: Path, nginx: Nginx
) -> None:
    """A budget nothing fits in (0.01 cores): the controller halves the capture
    until the collector is within it; RED counts stay exact throughout."""
    sink = GrpcSink()
    collector = budget_collector(
        tmp_path, sink, OTEL_EBPF_SPAN_BUDGET="0.001", OTEL_EBPF_SPAN_BUDGET_MIN_CPU="0.01"
    )
    shedding = re.compile(
        r"span budget: 1 in (\d+) of HTTP/1 requests, Redis commands and PostgreSQL queries get a span"
    )
    sent = 0
    try:
        for _ in range(40):  # rounds of traffic until the controller acts (2-3 here)
            if shedding.search(collector.log_path.read_text()):
                break
            ab(nginx.url(PATH), 2_000, 4)
            sent += 2_000
        assert shedding.search(collector.log_path.read_text()), "the budget never shed"
        wait_until(
            lambda: red_requests(sink, "http.server.request.duration", "nginx") == sent,
            30,
            f"{sent} requests counted",
        )
        lost = collector.telemetry()["events_lost"]  # before the budget took hold, maybe
        ab(nginx.url(PATH), 4_000, 4)  # now mostly shed
        sent += 4_000
        wait_until(
            lambda: red_requests(sink, "http.server.request.duration", "nginx") == sent,
            30,
            f"{sent} requests counted",
        )
        assert collector.telemetry()["events_lost"] == lost  # within budget: nothing lost
    finally:
        assert collector.stop() == 0
        sink.stop()
    telemetry = final_telemetry(collector)
    assert telemetry["requests_shed"] > 0
    # the collector's CPU and its allowance, in the self-telemetry metrics too
    (allowed,) = sink.metrics.series("otel_ebpf.collector.cpu", state="allowed").values()
    assert allowed.value >= 0.01  # the floor set, at least
    assert len(sink.metrics.series("otel_ebpf.collector.cpu", state="used")) == 1
    kept = len(spans_of(sink, "nginx", SERVER))
    assert kept < sent
    assert telemetry["parse_errors"] == 0


def test_without_a_span_exporter_the_budget_is_a_tenth_and_metrics_still_count_all(
    tmp_path: Path, nginx: Nginx
) -> None:
    """Metrics only (no traces pipeline), the budget as installed: spans feed only
    the graph's server side and the split, so 0.005 cores per 1,000 requests/s
    (at least 0.02) sheds where a span pipeline's 0.05 (at least 0.1) would keep
    all. RED stays exact."""
    sink = GrpcSink()
    collector = CollectorProcess(
        tmp_path / "collector",
        {"otlp": {"endpoint": f"127.0.0.1:{sink.port}", "insecure": True}},
        metrics=["otlp"],
        traces=[],
        extra_env={"OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_EBPF_SPAN_BUDGET": None},
    )
    shedding = re.compile(
        r"span budget: 1 in (\d+) of HTTP/1 requests, Redis commands and PostgreSQL queries "
        r"are read for the service graph's server side"
    )
    sent = 0
    try:
        assert "metrics only (no span exporter)" in collector.log_path.read_text()
        for _ in range(40):  # rounds of traffic until the controller acts (1-2 here)
            if shedding.search(collector.log_path.read_text()):
                break
            ab(nginx.url(PATH), 2_000, 4)
            sent += 2_000
        assert shedding.search(collector.log_path.read_text()), "the budget never shed"
        ab(nginx.url(PATH), 8_000, 4)  # now mostly shed
        sent += 8_000
        wait_until(
            lambda: (
                red_requests(sink, "http.server.request.duration", "nginx") == sent
                and red_requests(sink, "http.client.request.duration", "ab") == sent
            ),
            30,
            f"{sent} requests counted on both ends",
        )
    finally:
        assert collector.stop() == 0
        sink.stop()
    telemetry = final_telemetry(collector)
    assert telemetry["requests_shed"] > 0
    assert telemetry["spans_built"] < 2 * sent  # both ends: a span each when nothing is shed
    assert telemetry["spans_exported"] == 0
    assert telemetry["parse_errors"] == 0


def test_a_request_through_a_chain_is_kept_or_shed_whole(tmp_path: Path) -> None:
    """Threads A -> B -> C at 1 in 2: a server request hands its random value to
    the calls its thread sends, a client to the server reading it here, so the
    six spans of a request are kept or shed together. A server that reads
    before its client's send is reported decides alone; that race is rare (0 to 3
    of 400 requests split in runs of this test, 0 of 1,140 in
    bench/context_trees.py), so this allows a few."""
    sink = GrpcSink()
    collector = budget_collector(tmp_path, sink, OTEL_EBPF_SPAN_PROBABILITY="0.5")
    chain = Chain([sys.executable, str(CHAINS / "threads_hop.py")], "whole")
    try:
        requests = get_distinct(chain.port, "whole", 50, 8)
    finally:
        chain.stop()
        assert collector.stop() == 0  # everything flushed
        sink.stop()
    per_request: dict[str, list[Span]] = {}
    for span in sink.store.spans:
        path = str(span.attributes.get("url.path", ""))
        if path.startswith("/whole/"):
            per_request.setdefault(path, []).append(span)
    kept = [spans for spans in per_request.values() if len(spans) == 6]
    split = len(per_request) - len(kept)
    assert 0.3 * requests <= len(kept) <= 0.7 * requests, len(kept)  # 200 +- 10, binomial
    assert split <= 0.05 * requests, f"{split} of {requests} requests split apart"
    for spans in kept:  # one trace, each span the child of the one before
        assert len({s.trace_id for s in spans}) == 1
        ids = {s.span_id for s in spans}
        assert sum(1 for s in spans if s.parent_span_id not in ids) == 1


def test_shed_requests_that_fail_or_are_slow_still_get_a_span(
    tmp_path: Path, nginx: Nginx, py_server: PythonServer
) -> None:
    """Nearly every request shed (1 in 10,000 kept): the failed ones (nginx's 500s,
    on both ends) and the slow ones (300 ms, over the 200 ms asked for) get a
    span each from what the kernel noted; the others stay shed."""
    sink = GrpcSink()
    collector = budget_collector(
        tmp_path,
        sink,
        OTEL_EBPF_SPAN_PROBABILITY="0.0001",
        OTEL_EBPF_SPAN_KEEP_SLOWER_THAN="200ms",
    )
    try:
        ab(nginx.url("/index.html"), 500, 4)
        ab(nginx.url("/fail"), 50, 2)
        for _ in range(3):
            urllib.request.urlopen(
                f"http://127.0.0.1:{py_server.port}/sleep/300", timeout=10
            ).read()
        urllib.request.urlopen(f"http://127.0.0.1:{py_server.port}/sleep/1", timeout=10).read()
    finally:
        assert collector.stop() == 0
        sink.stop()
    spans = list(sink.store.spans)

    def partial(service: str, kind: int, path: str | None = None) -> list[Span]:
        return [
            s
            for s in spans
            if s.service == service
            and s.kind == kind
            and s.attributes.get("otel_ebpf.span.partial")
            and (path is None or s.attributes.get("url.path") == path)
        ]

    def answered_500(service: str, kind: int) -> list[Span]:
        return [
            s
            for s in spans
            if s.service == service
            and s.kind == kind
            and s.attributes.get("http.response.status_code") == 500
        ]

    # Each failed request has its span: from the kernel's note (partial) where it
    # was shed, whole where the 1 in 10,000 kept it (50 requests: rarely one).
    failed = answered_500("nginx", SERVER)
    shed = partial("nginx", SERVER, "/fail")
    assert len(failed) == 50, f"{len(failed)} spans ({len(shed)} partial) of 50 failed requests"
    assert len(shed) >= 48 and all(s.attributes["url.path"] == "/fail" for s in failed)
    assert all(s.status_code == 2 and s.attributes["error.type"] == "500" for s in failed)
    clients = answered_500("ab", CLIENT)  # a client's 500 is its error too
    assert len(clients) == 50, f"{len(clients)} ab spans of 50 failed requests"
    assert len(partial("ab", CLIENT)) >= 48
    slow = partial("py-backend", SERVER, "/sleep/300")
    assert len(slow) == 3 and all(s.status_code == 0 for s in slow)  # kept for being slow
    assert not partial("py-backend", SERVER, "/sleep/1")  # neither failed nor slow
    kept_ok = [s for s in spans if s.service == "nginx" and s.attributes.get("url.path") == PATH]
    assert len(kept_ok) <= 5  # 1 in 10,000 of 500
    assert final_telemetry(collector)["spans_outliers"] >= 50 + 50 + 3
    # ab exited with nearly all its requests shed: its counts still carry its name
    assert red_requests(sink, "http.client.request.duration", "ab") == 550


def db_operations(sink: GrpcSink, *by: str, **attrs: str) -> Counter[str]:
    """Commands counted in db.client.operation.duration, by name (and `by`'s attributes)."""
    counted: Counter[str] = Counter()
    for series, point in sink.metrics.series("db.client.operation.duration", **attrs).items():
        names = dict(series)
        key = " ".join(str(names[a]) for a in ("db.operation.name", *by) if a in names)
        counted[key] += int(point.value)
    return counted


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


def read_lines(sock: socket.socket, n: int) -> bytes:
    """Until `n` CRLF-ended lines are in (a RESP reply each, for simple ones)."""
    data = b""
    while data.count(b"\r\n") < n:
        chunk = sock.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    return data


def partial_errors(spans: list[Span], error: str, errors: int) -> list[Span]:
    """Every failed command has a span (kept ones whole, shed ones from the
    kernel's notes): the shed ones', which there must be."""
    failed = [s for s in spans if s.attributes.get("error.type") == error]
    assert len(failed) == errors
    partial = [s for s in failed if s.attributes.get("otel_ebpf.span.partial")]
    assert partial, "no shed error got a span"
    return partial


def test_redis_commands_are_shed_in_the_kernel_and_counted_exactly(
    tmp_path: Path, redis: int
) -> None:
    """1 in 100 kept: redis-benchmark's commands are counted one by one in the
    kernel (its 50 connections, and redis-server's ends, shed alike); errors
    are counted by their code and each gets a span, shed or not; commands
    pipelined in one write, and inline ones after a shed one, are all captured
    and counted from their spans. One sent behind a shed one, in its own write,
    is neither: the collector says so, naming the process."""
    sink = GrpcSink()
    collector = budget_collector(  # the port named, as the inline commands' bytes cannot
        tmp_path,
        sink,
        OTEL_EBPF_SPAN_PROBABILITY="0.01",
        OTEL_EBPF_PROTOCOL_PORTS=f"{redis}=redis",
    )
    n, errors, pipelines, inline, pairs = 3_000, 25, 20, 20, 5
    try:
        subprocess.run(
            ["redis-benchmark", "-p", str(redis), "-n", str(n), "-t", "set,get", "-q"],
            check=True,
            capture_output=True,
        )
        # no CLIENT SETINFO: redis-py 8.2 and later send its two at connect before
        # reading either answer, and one of them would be uncounted (said below)
        client = redis_py.Redis(port=redis, driver_info=None)
        client.delete("budget-list")
        client.lpush("budget-list", "x")
        for _ in range(errors):
            with contextlib.suppress(redis_py.ResponseError):
                client.incr("budget-list")  # WRONGTYPE
        for i in range(pipelines):  # 10 commands in one write: counted from their spans
            pipe = client.pipeline(transaction=False)
            for j in range(10):
                pipe.hset("budget-hash", f"f{j}", i)
            pipe.execute()
        client.close()
        with socket.create_connection(("127.0.0.1", redis)) as raw:
            for _ in range(inline):
                raw.sendall(b"*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n")  # noted: mostly shed
                assert read_exactly(raw, 7) == b"$1\r\nx\r\n"
                raw.sendall(b"PING\r\n")  # inline, after it: captured all the same
                assert read_exactly(raw, 7) == b"+PONG\r\n"
            for _ in range(pairs):  # the second sent before the first is answered
                raw.sendall(b"*1\r\n$6\r\nDBSIZE\r\n")
                raw.sendall(b"*1\r\n$6\r\nDBSIZE\r\n")
                read_lines(raw, 2)
        wait_until(
            lambda: (
                {
                    op: db_operations(sink, **{"service.name": "redis-benchmark"})[op]
                    for op in ("SET", "GET")
                }
                == {"SET": n, "GET": n}
            ),
            30,
            f"{n} SET and {n} GET counted",
        )
        wait_until(
            lambda: db_operations(sink, **{"error.type": "WRONGTYPE"})["INCRBY"] == errors,
            30,
            f"{errors} WRONGTYPE errors counted",
        )
        wait_until(
            lambda: db_operations(sink)["HSET"] == 10 * pipelines,
            30,
            f"{10 * pipelines} pipelined HSET counted",
        )
        wait_until(
            lambda: (db_operations(sink)["ECHO"], db_operations(sink)["PING"]) == (inline, inline),
            30,
            f"{inline} ECHO and {inline} inline PING counted",
        )
        wait_until(lambda: db_operations(sink)["DBSIZE"] >= pairs, 30, "DBSIZE counted")
    finally:
        assert collector.stop() == 0
        sink.stop()
    telemetry = final_telemetry(collector)
    spans = list(sink.store.spans)
    benchmark = [s for s in spans if s.service == "redis-benchmark"]
    assert len(benchmark) <= 0.03 * 2 * n, len(benchmark)  # 60 +- 8 expected
    for span in partial_errors(spans, "WRONGTYPE", errors):
        assert span.name == "INCRBY" and span.status_code == 2
        assert span.attributes["db.response.status_code"] == "WRONGTYPE"
        assert span.attributes["server.port"] == redis
    assert not sink.metrics.series(  # a database server's side: no span, no metric
        "db.client.operation.duration", **{"service.name": "redis-server"}
    )
    pipelined = [s for s in spans if s.attributes.get("db.operation.name") == "HSET"]
    assert len(pipelined) == 10 * pipelines  # never shed: the kernel saw it was a pipeline
    assert telemetry["requests_shed"] >= 2 * n
    # a second DBSIZE behind a shed one is neither counted nor traced, and said
    # with this process's name; nothing of redis-benchmark's, one at a time, is
    named = uncounted_processes(collector, telemetry)
    mine = sum(count for (_, pid), count in named.items() if pid == os.getpid())
    assert 0 < mine == 2 * pairs - db_operations(sink)["DBSIZE"], named
    server = sum(c for (s, _), c in named.items() if s in ("redis-server", "redis-check-rdb"))
    assert server <= pairs, named  # redis-server's end, if it read the two apart
    assert not [s for s, _ in named if s == "redis-benchmark"], named
    assert telemetry["events_lost"] == 0


def initialised_pgbench(postgres: Postgres) -> list[str]:
    """pgbench's command line for `postgres`, its tables made (before any collector
    starts: its own statements would count)."""
    bench = [str(Postgres.BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(postgres.port)]
    bench += ["-U", "postgres"]
    subprocess.run([*bench, "-i", "-s", "1", "-q", "postgres"], check=True, capture_output=True)
    return bench


def test_postgresql_queries_are_shed_in_the_kernel_and_counted_exactly(
    tmp_path: Path, postgres: Postgres
) -> None:
    """1 in 100 kept: pgbench's statements are counted one by one in the kernel, by
    the operation, table and database their spans would carry (a connection's
    first statements, before the collector has read which database it uses, are
    captured); errors are counted by their SQLSTATE and each gets a span, shed
    or not; the extended protocol's statements are all captured."""
    bench = initialised_pgbench(postgres)
    sink = GrpcSink()
    collector = budget_collector(tmp_path, sink, OTEL_EBPF_SPAN_PROBABILITY="0.01")
    clients, per_client, errors, prepared = 2, 300, 25, 20
    txns = clients * per_client
    try:
        subprocess.run(
            [*bench, "-c", str(clients), "-t", str(per_client), "-n", "postgres"],
            check=True,
            capture_output=True,
        )
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            for i in range(prepared):  # the extended protocol: captured, counted from spans
                conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (i + 1,))
            for _ in range(errors):  # libpq's simple query: noted in the kernel
                result = conn.pgconn.exec_(b"SELECT * FROM no_such_table")
                assert result.error_field(ord("C")) == b"42P01"
        run = {
            "UPDATE pgbench_accounts": txns,
            "UPDATE pgbench_tellers": txns,
            "UPDATE pgbench_branches": txns,
            "SELECT pgbench_accounts": txns,
            "INSERT pgbench_history": txns,
            "BEGIN": txns,
            "END": txns,
        }

        def counted() -> dict[str, int]:
            by_table = db_operations(
                sink,
                "db.collection.name",
                **{"service.name": "pgbench", "db.namespace": "postgres"},
            )
            return {name: by_table[name] for name in run}

        wait_until(lambda: counted() == run, 30, f"pgbench's {7 * txns} statements counted")
        wait_until(
            lambda: (
                db_operations(sink, "db.collection.name", **{"error.type": "42P01"})[
                    "SELECT no_such_table"
                ]
                == errors
            ),
            30,
            f"{errors} 42P01 errors counted",
        )
        wait_until(
            lambda: (
                db_operations(sink, "db.collection.name")["SELECT pgbench_accounts"]
                == txns + prepared
            ),
            30,
            f"{prepared} prepared SELECT counted besides pgbench's",
        )
    finally:
        assert collector.stop() == 0
        sink.stop()
    telemetry = final_telemetry(collector)
    spans = list(sink.store.spans)
    benchmark = [s for s in spans if s.service == "pgbench"]
    assert len(benchmark) <= 0.03 * 7 * txns, len(benchmark)  # 42 +- 7 expected
    for span in partial_errors(spans, "42P01", errors):
        assert span.name == "SELECT no_such_table" and span.status_code == 2
        assert span.attributes["db.namespace"] == "postgres"
        assert span.attributes["server.port"] == postgres.port
    extended = [s for s in spans if s.attributes.get("db.query.text", "").endswith("$1")]
    assert len(extended) == prepared  # never shed: not a simple query
    assert not sink.metrics.series(  # a database server's side: no span, no metric
        "db.client.operation.duration", **{"service.name": "postgres"}
    )
    assert telemetry["requests_shed"] >= 5 * txns
    assert telemetry["events_lost"] == 0


def test_a_burst_from_a_standing_start_loses_no_event(tmp_path: Path, postgres: Postgres) -> None:
    """The budget starts by keeping every span; saturating pgbench fills the ring
    buffer faster than the collector reads it. The kernel sheds every new
    statement while the ring is over half unread (it knows what it wrote and
    what was last read), so nothing overflows while the budget comes down."""
    bench = initialised_pgbench(postgres)
    sink = GrpcSink()
    collector = budget_collector(tmp_path, sink, OTEL_EBPF_SPAN_BUDGET="0.05")
    try:
        done = subprocess.run(
            [*bench, "-c", "2", "-j", "2", "-T", "4", "-n", "postgres"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        txns = int(re.search(r"transactions actually processed: (\d+)", done).group(1))  # type: ignore[union-attr]
        wait_until(
            lambda: sum(db_operations(sink, **{"service.name": "pgbench"}).values()) >= 7 * txns,
            30,
            f"pgbench's {7 * txns} statements counted",
        )
    finally:
        assert collector.stop() == 0
        sink.stop()
    telemetry = final_telemetry(collector)
    assert telemetry["events_lost"] == 0, telemetry
    assert telemetry["requests_shed"] + telemetry["requests_shed_backlog"] > 5 * txns
