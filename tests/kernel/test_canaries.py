"""No secret leaves the node: real traffic full of canaries (headers, query strings,
userinfo, SQL and Redis literals, error texts, argv), and not one of them in any
exported span, metric or log line, even at debug level."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

from harness import CollectorProcess, Nginx, Postgres, file_resource_spans, wait_until

CANARIES = {
    "AUTHZ": "Authorization header",
    "COOKIE": "Cookie header",
    "APIKEY": "custom credential header",
    "QPASS": "password= in a query",
    "QSIG": "sig= in a query (the conventions' list)",
    "USERINFO": "user:password@ in an absolute-form target",
    "HOSTINFO": "userinfo in a Host header",
    "PGURL": "password in psql's connection URL (argv)",
    "SQLLIT": "a SQL string literal",
    "SQLAFTER": "a SQL literal after one that ends in a backslash",
    "SQLERR": "a value quoted back in a PostgreSQL error",
    "REDISARG": "redis-cli -a (argv)",
    "REDISVAL": "a Redis argument",
    "REDISERR": "a value quoted back in a Redis error",
}


def canary(name: str) -> str:
    return f"zq{name.lower()}qz"


def http_traffic(port: int) -> None:
    url = f"/login?user=ann&password={canary('QPASS')}&sig={canary('QSIG')}&page=2"
    requests = [
        f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {canary('AUTHZ')}\r\nCookie: session={canary('COOKIE')}\r\n"
        f"X-Api-Key: {canary('APIKEY')}\r\nConnection: close\r\n\r\n",
        f"GET http://bob:{canary('USERINFO')}@127.0.0.1:{port}/proxied?x=1 HTTP/1.1\r\n"
        f"Host: eve:{canary('HOSTINFO')}@127.0.0.1:{port}\r\nConnection: close\r\n\r\n",
    ]
    for raw in requests:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(raw.encode())
            while s.recv(65536):
                pass


def test_no_canary_leaves_the_node(tmp_path: Path, nginx: Nginx, redis: int) -> None:
    spans_file = tmp_path / "spans.jsonl"
    collector = CollectorProcess(
        tmp_path / "canary",
        {"file": {"path": str(spans_file)}, "debug": {"verbosity": "detailed"}},
        metrics=["debug"],
        extra_env={"OTEL_EBPF_LOG_LEVEL": "debug", "OTEL_METRIC_EXPORT_INTERVAL": "1000"},
    )
    pg = Postgres(tmp_path / "pg")
    try:
        http_traffic(nginx.port)
        psql = shutil.which("psql") or str(Postgres.BIN / "psql")
        url = f"postgresql://postgres:{canary('PGURL')}@127.0.0.1:{pg.port}/postgres"
        for statement in (
            f"SELECT 'C:\\', '{canary('SQLLIT')}' AS a, '{canary('SQLAFTER')}' AS b",
            f"SELECT '{canary('SQLERR')}'::int",
        ):
            subprocess.run([psql, url, "-X", "-c", statement], capture_output=True, timeout=30)
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        for args in (
            ["SET", "k", canary("REDISVAL")],
            ["CONFIG", canary("REDISERR")],
        ):
            subprocess.run(
                [cli, "-p", str(redis), "-a", canary("REDISARG"), "--no-auth-warning", *args],
                capture_output=True,
                timeout=30,
            )

        def seen() -> set[str]:
            text = spans_file.read_text() if spans_file.exists() else ""
            return {n for n in ("/login", "/proxied", "pg", "SET", "CONFIG") if n in text} | (
                {"pg"} if "postgresql" in text else set()
            )

        wait_until(lambda: {"/login", "/proxied", "SET", "CONFIG", "pg"} <= seen(), 30, "spans")
        time.sleep(2)  # a metrics export or two, with the attributes of these requests
    finally:
        pg.stop()
        assert collector.stop() == 0
    exported = spans_file.read_text()
    log = collector.log_path.read_text(errors="replace")
    leaks = [
        f"{what} ({where})"
        for name, what in CANARIES.items()
        for where, text in (("spans", exported), ("log, metrics and debug lines", log))
        if canary(name) in text
    ]
    assert not leaks, "secrets left the node: " + "; ".join(leaks)

    # ... and the traffic was really seen, redacted rather than missing.
    spans = [
        s for rs in file_resource_spans(spans_file) for ss in rs["scopeSpans"] for s in ss["spans"]
    ]

    def attrs(span: dict) -> dict:  # type: ignore[type-arg]
        return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}

    everything = [(s, attrs(s)) for s in spans]
    login = [a for _, a in everything if a.get("url.path") == "/login"]
    assert login and login[0]["url.query"] == "user=ann&password=REDACTED&sig=REDACTED&page=2"
    proxied = [a for _, a in everything if a.get("url.path") == "/proxied"]
    assert proxied, "the absolute-form request has a span, without its userinfo"
    statements = {a.get("db.query.text") for _, a in everything}
    # One reading of 'C:\' (backslash escapes) runs that literal to the end: all masked.
    assert {"SELECT ?", "SELECT ?::int", "SET ? ?", "CONFIG ?"} <= statements, statements
    errors = {s["status"].get("message") for s, a in everything if a.get("db.system.name")}
    assert "invalid input syntax for type integer: ?" in errors, errors
    assert any(m and m.startswith("ERR unknown subcommand ?") for m in errors), errors
    resources = json.dumps([rs["resource"] for rs in file_resource_spans(spans_file)])
    assert "process.command_line" not in resources  # opt-in
