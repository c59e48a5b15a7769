"""Secrets out of exported strings: URLs, error texts, command lines."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.resources import Resource

from otel_ebpf.model import (
    Endpoint,
    HttpExchange,
    HttpHead,
    RedisExchange,
    RespValue,
    Role,
    SqlExchange,
)
from otel_ebpf.processes import ProcessInfo, ProcessRegistry
from otel_ebpf.processors.connections import Connection
from otel_ebpf.processors.redaction import UrlRedactor, scrub_argv, scrub_message
from otel_ebpf.processors.spans import SpanBuilder


def test_query_values_of_sensitive_keys_are_redacted() -> None:
    urls = UrlRedactor()
    assert urls.query("a=1&sig=abc&Signature=x&AWSAccessKeyId=k&X-Goog-Signature=g") == (
        "a=1&sig=REDACTED&Signature=REDACTED&AWSAccessKeyId=REDACTED&X-Goog-Signature=REDACTED"
    )
    assert urls.query("PASSWORD=pw&api%5Fkey=k&token=&q=token") == (
        "PASSWORD=REDACTED&api%5Fkey=REDACTED&token=&q=token"
    )
    custom = UrlRedactor(["ticket"])
    assert custom.query("ticket=t&password=p&sig=s") == "ticket=REDACTED&password=p&sig=REDACTED"


def test_userinfo_never_survives_a_target() -> None:
    urls = UrlRedactor()
    path, query, origin = urls.split("http://alice:s3cret@example.com:8080/a/b?token=x&y=1")
    assert origin == "http://REDACTED:REDACTED@example.com:8080"
    assert (path, query) == ("/a/b", "token=REDACTED&y=1")
    assert urls.split("/plain?x=1") == ("/plain", "x=1", None)
    assert urls.split("http://u:p@host") == ("/", None, "http://REDACTED:REDACTED@host")


def conn(role: Role) -> Connection:
    c = Connection(16, role)
    c.local, c.remote = Endpoint("127.0.0.1", 40000), Endpoint("127.0.0.1", 8080)
    c.process = ProcessInfo(7, "app", "app", Resource({"service.name": "app"}))
    return c


def test_spans_carry_no_userinfo_and_redacted_queries() -> None:
    head = HttpHead(
        True,
        "GET",
        "http://bob:hunter2@proxy.example/p?access_token=abc",
        0,
        "1.1",
        {"host": "eve:pw@proxy.example:81"},
        0,
        False,
    )
    ok = HttpHead(False, "", "", 200, "1.1", {}, 1, False)
    span = SpanBuilder(0).build(HttpExchange(head, 0, ok, 0, 0, 1), conn(Role.CLIENT))
    assert span is not None
    text = repr(dict(span.attributes or {}))
    assert "hunter2" not in text and "bob" not in text and "abc" not in text and "eve" not in text
    assert span.attributes["url.full"] == (
        "http://REDACTED:REDACTED@proxy.example/p?access_token=REDACTED"
    )
    assert span.attributes["url.path"] == "/p"
    assert (span.attributes["server.address"], span.attributes["server.port"]) == (
        "proxy.example",
        81,
    )


def test_error_texts_lose_their_values_unless_raw_is_asked_for() -> None:
    assert scrub_message('invalid input syntax for type integer: "CANARY"') == (
        "invalid input syntax for type integer: ?"
    )
    assert scrub_message("ERR unknown subcommand 'CANARY'. Try CONFIG HELP.") == (
        "ERR unknown subcommand ?. Try CONFIG HELP."
    )
    assert scrub_message("Duplicate entry 'x@y' for key 'users.email' at row 12") == (
        "Duplicate entry ? for key ? at row ?"
    )
    sql = SqlExchange("postgresql", "SELECT 1", None, 0, 1, True, "22P02", 'bad: "CANARY"')
    for raw, expected in ((False, "bad: ?"), (True, 'bad: "CANARY"')):
        span = SpanBuilder(0, raw_db_query_text=raw).build(sql, conn(Role.CLIENT))
        assert span is not None and span.status.description == expected
        assert span.attributes["db.response.status_code"] == "22P02"


def test_redis_error_text_is_scrubbed() -> None:
    command = RespValue(ord("*"), b"", (RespValue(ord("$"), b"CONFIG", (), 6, 0, 0),), 1, 0, 0)
    reply = RespValue(ord("-"), b"ERR unknown subcommand 'CANARY'", (), 0, 1, 1)
    span = SpanBuilder(0).build(RedisExchange(command, reply, 0, 1), conn(Role.CLIENT))
    assert span is not None and span.status.description == "ERR unknown subcommand ?"
    assert span.attributes["error.type"] == "ERR"


def test_argv_credentials_are_scrubbed() -> None:
    assert scrub_argv(["psql", "postgresql://u:PW@db:5432/app", "-c", "select 1"]) == [
        "psql",
        "postgresql://REDACTED:REDACTED@db:5432/app",
        "-c",
        "select 1",
    ]
    assert scrub_argv(["/usr/bin/redis-cli", "-a", "PW", "-p", "6379"]) == [
        "/usr/bin/redis-cli",
        "-a",
        "REDACTED",
        "-p",
        "6379",
    ]
    assert scrub_argv(["mysql", "-uroot", "-pPW", "--password=PW2", "db"]) == [
        "mysql",
        "-uroot",
        "-pREDACTED",
        "--password=REDACTED",
        "db",
    ]
    assert scrub_argv(["app", "--token", "T", "--api-key=K", "host=x password=PW port=1"]) == [
        "app",
        "--token",
        "REDACTED",
        "--api-key=REDACTED",
        "host=x password=REDACTED port=1",
    ]
    assert scrub_argv(["ls", "-a", "/tmp"]) == ["ls", "-a", "/tmp"]  # -a is redis-cli's only


def test_command_lines_are_opt_in_and_scrubbed(tmp_path: Path) -> None:
    proc = tmp_path  # a /proc of one process
    (proc / "42").mkdir()
    (proc / "42" / "cmdline").write_bytes(b"redis-cli\0-a\0CANARY\0ping\0")
    (proc / "42" / "comm").write_text("redis-cli\n")
    default = ProcessRegistry(proc=str(proc)).get(42).resource.attributes
    assert "process.command_line" not in default and "process.command_args" not in default
    opted = ProcessRegistry(proc=str(proc), command_line=True, command_args=True).get(42)
    attrs = opted.resource.attributes
    assert attrs["process.command_line"] == "redis-cli -a REDACTED ping"
    assert list(attrs["process.command_args"]) == ["redis-cli", "-a", "REDACTED", "ping"]
