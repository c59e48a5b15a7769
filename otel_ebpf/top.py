"""`otel-ebpf top`: the node's services, edges and slowest requests, live.

It reads the collector already running on the node (GET /live on its loopback
health endpoint): a second set of probes would double the kernel's work on a
node in trouble. Where none answers, it starts the probes itself, exporting
nothing. The collector keeps the view only while someone looks, so the first
look at a collector nobody watched starts empty: `--once` waits `--wait`
seconds then. Drawn with rich; plain text when stdout is not a terminal.
"""

from __future__ import annotations

import json
import os
import select
import sys
import termios
import threading
import time
import tty
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from otel_ebpf.live import SLOWEST_S, WINDOW_S

SORTS = ("rate", "errors", "p99", "name")
_SORT_KEY: dict[str, Callable[[dict[str, Any]], Any]] = {
    "rate": lambda r: -r["rate"],
    "errors": lambda r: (-r["error_rate"], -r.get("failed_connects", 0), -r["rate"]),
    "p99": lambda r: -r["p99_ms"],
    "name": lambda r: r.get("service") or f"{r.get('client')} {r.get('server')}",
}


class TopError(Exception):
    """Why top cannot show anything (said to the user as is)."""


class CollectorSource:
    """A running collector's live view, over HTTP on its health endpoint."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.url = f"http://{endpoint}/live"
        self.label = f"collector at {endpoint}"

    def fetch(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url, timeout=3) as response:
            body: dict[str, Any] = json.loads(response.read(8 << 20))
        return body

    def answers(self) -> bool:
        """Whether a collector answers there (a collector that refuses is an error:
        starting probes beside it would double the kernel's work)."""
        try:
            self.fetch()
        except urllib.error.HTTPError as exc:
            why = "no live view (an older otel-ebpf?)" if exc.code == 404 else exc.reason
            raise TopError(f"the collector at {self.endpoint} answered {exc.code}: {why}") from exc
        except (OSError, ValueError):
            return False
        return True

    def close(self) -> None:
        pass


class OwnProbes:
    """No collector answers: the probes, in this process, exporting nothing."""

    label = "own probes (no collector answered)"

    def __init__(self) -> None:
        import tempfile

        from otel_ebpf import config as config_mod
        from otel_ebpf.pipeline import Collector

        # spans built for this view, exported nowhere; no endpoint listens
        doc = config_mod.document({}, traces=[])
        doc.pop("extensions")
        doc["service"].pop("extensions")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(json.dumps(doc))  # JSON is YAML
            f.flush()
            try:
                config = config_mod.load(f.name)
            except config_mod.ConfigError as exc:
                raise TopError(f"config error: {exc}") from exc
        self._collector = Collector(config)
        self._failure: BaseException | None = None
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="collector", daemon=True
        )
        self._thread.start()
        while not ready.wait(0.1):
            if not self._thread.is_alive():
                raise TopError(f"cannot start the probes: {self._failure}")

    def _run(self, ready: threading.Event) -> None:
        try:
            self._collector.run(on_ready=ready.set)
        except BaseException as exc:  # said by the waiting thread
            self._failure = exc

    def fetch(self) -> dict[str, Any]:
        return {
            **self._collector.live.snapshot(),
            "telemetry": self._collector.telemetry.snapshot(),
        }

    def close(self) -> None:
        self._collector.stop()
        self._thread.join(10)


def open_source(endpoint: str) -> CollectorSource | OwnProbes:
    source = CollectorSource(endpoint)
    if source.answers():
        return source
    from otel_ebpf.privileges import can_trace

    if not can_trace():
        raise TopError(
            f"no collector answers at {endpoint} (start one, or point --endpoint at its "
            "health_check endpoint), and starting the probes here needs root"
        )
    return OwnProbes()


# -- rendering -----------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}"


def _rows(rows: list[dict[str, Any]], sort: str, text: str, limit: int) -> list[dict[str, Any]]:
    if text:
        rows = [r for r in rows if any(text in str(r.get(k, "")) for k in _NAMES)]
    return sorted(rows, key=_SORT_KEY[sort])[:limit]


_NAMES = ("service", "client", "server")


# Columns: (header, numeric). Names take what the numbers leave and are cut with
# an ellipsis; numbers keep at least their header's width.
SERVICE_COLUMNS = (("SERVICE", False), ("REQ/S", True), ("ERR%", True), ("P50ms", True),
                   ("P99ms", True), ("APP%", True))  # fmt: skip
EDGE_COLUMNS = (("CLIENT -> SERVER", False), ("REQ/S", True), ("ERR%", True), ("P99ms", True),
                ("APP%", True), ("RETR", True), ("RST", True), ("CONN!", True))  # fmt: skip
SLOWEST_COLUMNS = (("AGO", True), ("SERVICE", False), ("REQUEST", False), ("MS", True),
                   ("REQ/WAIT/RESP", True), ("VERDICT", False))  # fmt: skip


def _table(title: str, columns: tuple[tuple[str, bool], ...], plain: bool) -> Table:
    table = Table(
        box=None if plain else box.SIMPLE_HEAD,
        show_edge=False,
        title=title,
        title_justify="left",
        expand=True,
    )
    for header, numeric in columns:
        if numeric:
            table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
        else:
            table.add_column(header, no_wrap=True, overflow="ellipsis", ratio=1)
    return table


def _seconds(watched: float, most: int) -> str:
    """What a figure covers: its window, or less while the view is younger."""
    covered = max(min(watched, most), 1.0)
    return "minute" if covered >= 60 else f"{covered:.0f} s"


def render(
    snapshot: dict[str, Any], sort: str, text: str, height: int, plain: bool, status: str
) -> Group:
    """Services, edges and the slowest requests, within `height` lines."""
    room = max(height - 10, 3)  # three titles and header rules, headers, the status line
    services_n, edges_n = max(room * 2 // 5, 1), max(room * 7 // 20, 1)
    watched = float(snapshot.get("watched_s", SLOWEST_S))
    window = int(snapshot.get("window_s", WINDOW_S))
    services = _table(f"services (last {_seconds(watched, window)})", SERVICE_COLUMNS, plain)
    for r in _rows(snapshot.get("services", []), sort, text, services_n):
        services.add_row(r["service"], *_numbers(r, "rate", "error_rate", "p50_ms", "p99_ms"))
    edges = _table("edges: client -> server", EDGE_COLUMNS, plain)
    for r in _rows(snapshot.get("edges", []), sort, text, edges_n):
        edges.add_row(
            f"{r['client']} -> {r['server']}",
            *_numbers(r, "rate", "error_rate", "p99_ms"),
            *(str(r[k]) for k in ("retransmits", "resets", "failed_connects")),
        )
    slowest = _table(f"slowest (last {_seconds(watched, SLOWEST_S)})", SLOWEST_COLUMNS, plain)
    shown = [
        r
        for r in snapshot.get("slowest", [])
        if not text or text in r["service"] or text in r["peer"]
    ]
    for r in shown[: max(room - services_n - edges_n, 1)]:
        phases = "/".join(
            _ms(r[f"{p}_ms"]) if r[f"{p}_ms"] is not None else "-"
            for p in ("request", "wait", "response")
        )
        slowest.add_row(
            f"{r['ago_s']:.0f}s",
            r["service"],
            r["name"] + (f" -> {r['peer']}" if r["peer"] else ""),
            _ms(r["duration_ms"]),
            phases,
            ("error " if r["failed"] else "") + r["verdict"],
        )
    return Group(services, edges, slowest, Text(status, style="" if plain else "dim"))


def _numbers(row: dict[str, Any], *keys: str) -> list[str]:
    """A row's figures as shown; APP% always last."""
    shown = []
    for key in keys:
        if key == "rate":
            shown.append(f"{row[key]:.1f}")
        elif key == "error_rate":
            shown.append(f"{100 * row[key]:.1f}")
        else:
            shown.append(_ms(row[key]))
    return [*shown, _share(row["app_share"])]


def _status(source: Any, snapshot: dict[str, Any], sort: str, text: str, keys: bool) -> str:
    telemetry = snapshot.get("telemetry", {})
    one_in = telemetry.get("span_budget_one_in", 1)
    parts = [
        f"{source.label}",
        f"sort {sort}",
        f"filter {text!r}" if text else "",
        f"spans: 1 in {one_in}, rates weighted" if one_in > 1 else "",
        "keys: s sort, / filter, q quit" if keys else "",
    ]
    return " | ".join(p for p in parts if p)


# -- the loop ------------------------------------------------------------------


def run(
    endpoint: str,
    once: bool,
    as_json: bool,
    sort: str,
    text: str,
    interval: float,
    warmup: float,
) -> int:
    source = open_source(endpoint)
    try:
        watched_s = source.fetch().get("watched_s", WINDOW_S)  # this read starts the view
        if once and watched_s < warmup:
            print(f"watching for {warmup - watched_s:.0f} s ...", file=sys.stderr)
            time.sleep(warmup - watched_s)
        if once or as_json or not sys.stdout.isatty():
            return _print_loop(source, once, as_json, sort, text, interval)
        return _live_loop(source, sort, text, interval)
    finally:
        source.close()


def _print_loop(
    source: Any, once: bool, as_json: bool, sort: str, text: str, interval: float
) -> int:
    console = Console(highlight=False, width=max(Console().width, 100))
    while True:
        snapshot = source.fetch()
        if as_json:
            print(json.dumps(snapshot), flush=True)
        else:
            status = _status(source, snapshot, sort, text, keys=False)
            console.print(render(snapshot, sort, text, 10_000, plain=True, status=status))
        if once:
            return 0
        time.sleep(interval)


def _live_loop(source: Any, sort: str, text: str, interval: float) -> int:
    console = Console()
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin)
    typing: str | None = None  # the filter being typed
    try:
        tty.setcbreak(stdin)
        with Live(console=console, screen=True, auto_refresh=False) as live:
            next_fetch = 0.0
            snapshot: dict[str, Any] = {}
            problem = ""
            while True:
                now = time.monotonic()
                if now >= next_fetch:
                    try:
                        snapshot, problem = source.fetch(), ""
                    except (OSError, ValueError) as exc:  # keeps showing the last one
                        problem = f"cannot read {source.label}: {exc}"
                    next_fetch = now + interval
                status = problem or _status(source, snapshot, sort, text, keys=True)
                if typing is not None:
                    status = f"filter: {typing}_  (Enter to apply, Esc to clear)"
                live.update(
                    render(snapshot, sort, text, console.height, plain=False, status=status),
                    refresh=True,
                )
                ready, _, _ = select.select([stdin], [], [], max(next_fetch - now, 0.05))
                if not ready:
                    continue
                key = os.read(stdin, 1).decode(errors="replace")
                if typing is not None:
                    if key in ("\n", "\r"):
                        text, typing = typing, None
                    elif key == "\x1b":
                        text, typing = "", None
                    elif key in ("\x7f", "\b"):
                        typing = typing[:-1]
                    elif key.isprintable():
                        typing += key
                elif key == "q":
                    return 0
                elif key == "s":
                    sort = SORTS[(SORTS.index(sort) + 1) % len(SORTS)]
                elif key == "/":
                    typing = ""
    except KeyboardInterrupt:
        return 0
    finally:
        termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
