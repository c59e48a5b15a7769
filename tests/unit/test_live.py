"""The live view `otel-ebpf top` reads: rates, errors, quantiles and the slowest
requests of the last seconds, and the plain rendering of a snapshot."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind, Status, StatusCode
from rich.console import Console

from otel_ebpf.health import HealthState
from otel_ebpf.live import KEEP_WATCHING_S, MAX_KEYS, SLOWEST_N, WINDOW_S, LiveView
from otel_ebpf.model import BuiltSpan, SpanIds
from otel_ebpf.processors.spans import SCOPE
from otel_ebpf.telemetry import SelfTelemetry
from otel_ebpf.top import render


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def span(
    ms: float,
    kind: SpanKind = SpanKind.SERVER,
    failed: bool = False,
    end_s: float = 1000.0,
    **attributes: Any,
) -> BuiltSpan:
    end = int(end_s * 1e9)
    return BuiltSpan(
        "GET",
        SpanIds(1, 2, False),
        None,
        Resource.create({}),
        {"url.path": "/orders", **attributes},
        kind,
        Status(StatusCode.ERROR if failed else StatusCode.UNSET),
        end - int(ms * 1e6),
        end,
        SCOPE,
    )


def watched(clock: Clock) -> LiveView:
    """A view someone has been looking at for a whole window."""
    live = LiveView(clock)
    live.snapshot()
    clock.now += WINDOW_S
    return live


def only(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


def test_a_service_row_has_its_rate_errors_and_quantiles() -> None:
    clock = Clock()
    live = watched(clock)
    for i in range(100):
        live.span(span(1 + i, failed=i % 10 == 0), "shop", None)
    row = only(live.snapshot()["services"])
    assert row["service"] == "shop"
    assert row["rate"] == 100 / WINDOW_S
    assert row["error_rate"] == 0.1
    assert 50 <= row["p50_ms"] <= 52 and 99 <= row["p99_ms"] <= 100


def test_the_app_share_is_the_server_time_over_server_and_network() -> None:
    live = watched(Clock())
    attrs = {"otel_ebpf.time.server": 0.003, "otel_ebpf.time.network": 0.001}
    live.span(span(4, **attrs), "shop", None)
    assert only(live.snapshot()["services"])["app_share"] == 0.75


def test_a_client_span_is_an_edge_with_its_tcp_trouble() -> None:
    live = watched(Clock())
    live.span(span(5, SpanKind.CLIENT, **{"otel_ebpf.tcp.retransmits": 3}), "web", "db")
    live.span(span(5, SpanKind.CLIENT, True, **{"otel_ebpf.tcp.reset": True}), "web", "db")
    live.connect_failed("web", "db")
    snapshot = live.snapshot()
    assert snapshot["services"] == []  # web served nothing
    edge = only(snapshot["edges"])
    assert (edge["client"], edge["server"], edge["requests"]) == ("web", "db", 2)
    assert (edge["retransmits"], edge["resets"], edge["failed_connects"]) == (3, 1, 1)
    assert edge["error_rate"] == 0.5


def test_a_client_span_without_a_peer_is_left_out() -> None:
    live = watched(Clock())
    live.span(span(5, SpanKind.CLIENT), "web", None)
    assert live.snapshot()["edges"] == []


def test_a_span_kept_one_in_four_stands_for_four_requests() -> None:
    live = watched(Clock())
    live.span(span(5), "shop", None, weight=4)
    assert only(live.snapshot()["services"])["requests"] == 4


def test_an_outlier_counted_elsewhere_is_only_among_the_slowest() -> None:
    live = watched(Clock())
    live.span(span(900, failed=True), "shop", None, weight=0)
    snapshot = live.snapshot()
    assert snapshot["services"] == []
    assert only(snapshot["slowest"])["duration_ms"] == 900


def test_rates_cover_the_window_only() -> None:
    clock = Clock()
    live = watched(clock)
    live.span(span(5), "old", None)
    clock.now += WINDOW_S
    live.span(span(5), "new", None)
    assert [r["service"] for r in live.snapshot()["services"]] == ["new"]


def test_the_slowest_are_kept_a_minute_slowest_first() -> None:
    clock = Clock()
    live = watched(clock)
    for ms in range(1, 3 * SLOWEST_N):
        live.span(span(ms, end_s=clock.now), "shop", None)
    slowest = live.snapshot()["slowest"]
    assert [r["duration_ms"] for r in slowest] == [
        float(ms) for ms in range(3 * SLOWEST_N - 1, 2 * SLOWEST_N - 1, -1)
    ]
    assert slowest[0]["name"] == "GET /orders"
    clock.now += 61
    assert live.snapshot()["slowest"] == []


def test_keys_past_the_limit_are_not_kept() -> None:
    live = watched(Clock())
    for i in range(MAX_KEYS + 10):
        live.span(span(1), f"svc-{i}", None)
    assert len(live.snapshot()["services"]) == MAX_KEYS


def test_a_snapshot_renders_as_plain_text_within_80_columns() -> None:
    live = watched(Clock())
    live.span(span(300), "slow-service", None)
    live.span(span(2, SpanKind.CLIENT, failed=True), "frontend", "failing-service")
    console = Console(width=80, record=True, force_terminal=False)
    console.print(render(live.snapshot(), "rate", "", 24, plain=True, status="status"))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "slow-service" in text and "frontend -> failing-service" in text
    assert "\x1b" not in text  # no escape codes


def test_the_titles_say_what_the_figures_cover() -> None:
    """A view watched for 4 s has 4 s of rates and of slowest requests, not the
    10 s and the minute it keeps once watched that long."""
    clock = Clock()
    live = LiveView(clock)
    live.snapshot()  # starts watching

    def titles_after(seconds: int) -> list[str]:
        clock.now += seconds
        live.span(span(3), "shop", None)
        console = Console(width=100, record=True, force_terminal=False)
        console.print(render(live.snapshot(), "rate", "", 24, plain=True, status=""))
        return [line.strip() for line in console.export_text().splitlines() if "(last" in line]

    assert titles_after(4) == ["services (last 4 s)", "slowest (last 4 s)"]
    assert titles_after(20) == ["services (last 10 s)", "slowest (last 24 s)"]
    assert titles_after(20) == ["services (last 10 s)", "slowest (last 44 s)"]
    assert titles_after(20) == ["services (last 10 s)", "slowest (last minute)"]


def test_a_busy_node_fits_an_80_by_24_terminal() -> None:
    live = watched(Clock())
    for i in range(40):
        live.span(span(i + 1), f"service-with-a-long-name-{i}", None)
        live.span(span(i + 1, SpanKind.CLIENT), f"client-{i}", f"server-with-a-long-name-{i}")
    console = Console(width=80, height=24, record=True, force_terminal=True)
    console.print(render(live.snapshot(), "p99", "", 24, plain=False, status="a status line"))
    lines = console.export_text().splitlines()
    assert len(lines) <= 24, "\n".join(lines)
    assert all(len(line) <= 80 for line in lines)
    assert "service-with-a-long-name-39" in lines[3]  # the slowest first: sorted by p99


def test_nobody_watching_costs_a_time_check_and_keeps_nothing() -> None:
    clock = Clock()
    live = LiveView(clock)
    live.span(span(5), "shop", None)
    assert not live.watched()
    first = live.snapshot()  # starts watching
    assert first["services"] == [] and first["watched_s"] == 0
    live.span(span(5), "shop", None)
    clock.now += 0.5
    assert only(live.snapshot()["services"])["rate"] == 1.0  # per second watched, not per window
    clock.now += KEEP_WATCHING_S + 1
    assert not live.watched()
    live.span(span(5), "shop", None)
    assert live.snapshot()["services"] == []  # what it kept was let go


def test_paths_among_the_slowest_are_templated() -> None:
    live = watched(Clock())
    live.span(span(5, **{"url.path": "/users/12345/reset/9f8e7d6c5b4a39281726"}), "shop", None)
    assert only(live.snapshot()["slowest"])["name"] == "GET /users/{id}/reset/{id}"


def test_the_live_view_answers_loopback_clients_only() -> None:
    state = HealthState(SelfTelemetry(), LiveView())
    assert state.response("/live", "127.0.0.1")[0] == 200
    assert state.response("/live", "::1")[0] == 200
    assert state.response("/live", "10.0.0.7")[0] == 403
    assert state.response("/", "10.0.0.7")[0] == 503  # the health check answers anyone
