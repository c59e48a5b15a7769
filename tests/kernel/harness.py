"""Processes the kernel tests drive: the collector itself, nginx, a Python HTTP server."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from otel_ebpf.config import document

VENV_BIN = Path(sys.executable).parent
OTEL_EBPF = str(VENV_BIN / "otel-ebpf")
HERE = Path(__file__).parent
GO = shutil.which("go") or "/usr/local/go/bin/go"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this process handed out before: the
    kernel may give a just-closed port again (about 1 in 10,000 calls here), and two
    servers told the same port make one fail to listen, far from the cause."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def file_resource_spans(path: Path) -> list[dict[str, Any]]:
    """The resourceSpans of every request the OTLP-JSON file exporter wrote."""
    return [
        rs for line in path.read_text().splitlines() for rs in json.loads(line)["resourceSpans"]
    ]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), 0.2).close()
        return True
    except OSError:
        return False


def end_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10
) -> None:
    """Ask a server to stop with `sig`; kill it if it has not within `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def health(port: int, host: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


STARTED: list[CollectorProcess] = []  # every collector a test started, for failure reports


class CollectorProcess:
    """`otel-ebpf run --config ...` as users run it, in its own process."""

    def __init__(
        self,
        tmp: Path,
        exporters: dict[str, Any],
        extra_env: Mapping[str, str | None] | None = None,
        otlp_in: bool = False,
        metrics: list[str] | None = None,
        traces: list[str] | None = None,
        profiles: list[str] | None = None,
        profiling: dict[str, Any] | None = None,
        netns: str = "",
        host: str = "127.0.0.1",
        cgroup: Path | None = None,
        command: Sequence[str] = (OTEL_EBPF,),
    ) -> None:
        """`profiles`: exporters of a profiles pipeline (`profiling`: its receiver's
        settings). `netns`: run inside that network namespace (of `ip netns`),
        its health check and OTLP receivers listening on `host`, an address there.
        `cgroup`: a cgroup directory the collector runs in from its start.
        `command`: the collector to run (bench/bpf_paired.py's runs other programs)."""
        self.host = host
        self.health_port = free_port()
        self.otlp_grpc_port, self.otlp_http_port = free_port(), free_port()
        otlp = {
            "protocols": {
                "grpc": {"endpoint": f"{host}:{self.otlp_grpc_port}"},
                "http": {"endpoint": f"{host}:{self.otlp_http_port}"},
            }
        }
        config = document(
            exporters,
            health={"endpoint": f"{host}:{self.health_port}"},
            batch={"timeout": "200ms"},
            otlp=otlp if otlp_in else None,
            metrics=metrics,
            traces=traces,
        )
        if profiles is not None:
            config["receivers"]["profiling"] = profiling or {}
            config["service"]["pipelines"]["profiles"] = {
                "receivers": ["profiling"],
                "exporters": profiles,
            }
        tmp.mkdir(parents=True, exist_ok=True)
        self.config_path = tmp / "collector.yaml"
        self.config_path.write_text(json.dumps(config))  # JSON is YAML
        self.log_path = tmp / "collector.log"
        self.test = os.environ.get("PYTEST_CURRENT_TEST", "")  # whose failure shows our log
        STARTED.append(self)
        # Tests count spans: every request gets one unless a test sets a budget
        # (the span budget's own tests do). None in extra_env unsets a variable.
        given = {**os.environ, "OTEL_EBPF_SPAN_BUDGET": "0", **(extra_env or {})}
        env = {name: value for name, value in given.items() if value is not None}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        # nsenter, not `ip netns exec`: that one remounts /sys, hiding tracefs
        in_netns = ["nsenter", f"--net=/run/netns/{netns}", "--"] if netns else []
        # the shell joins the cgroup, then becomes the collector (same pid)
        in_cgroup = (
            ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs")]
            if cgroup is not None
            else []
        )
        # ended by the kernel (SIGTERM) when the test run is, however it ends:
        # a killed or interrupted run left collectors tracing for an hour
        with_us = ["setpriv", "--pdeathsig", "TERM", "--"]
        self.proc = subprocess.Popen(
            [*with_us, *in_netns, *in_cgroup, *command, "run", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_until(
                lambda: health(self.health_port, host)[0] == 200 or self.proc.poll() is not None,
                60,
                "collector health 200",
            )
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise AssertionError(f"collector exited at start:\n{self.log_path.read_text()}")
        if otlp_in and "OTLP receiver not started" in self.log_path.read_text():
            self.stop()  # the apps' spans would go elsewhere: every merge test would time out
            raise AssertionError(f"OTLP receiver not started:\n{self.log_path.read_text()}")

    def telemetry(self) -> dict[str, int]:
        return health(self.health_port, self.host)[1].get("telemetry", {})

    def wait_caught_up(self, timeout: float = 180.0) -> None:
        """Until it has built and handed on what the traffic so far gave it: no span
        built for a second and none waiting to be exported. (Events alone never
        settle: each of these health checks is a connection it reads.)"""
        deadline = time.monotonic() + timeout
        built = -1
        telemetry: dict[str, int] = {}
        while time.monotonic() < deadline and self.proc.poll() is None:
            telemetry = self.telemetry()
            if telemetry.get("spans_built") == built and telemetry.get("spans_queued") == 0:
                return
            built = telemetry.get("spans_built", -1)
            time.sleep(1.0)  # the span queue's gauge is refreshed every second
        if self.proc.poll() is None:
            raise AssertionError(f"collector still busy after {timeout:.0f} s: {telemetry}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# What every test nginx shares: in the foreground, files under `root`, sendfile.
NGINX_BASE = """
daemon off;
user root;  # the test tree lives under pytest's private tmp dir
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 512; }}
http {{
  access_log off;
  sendfile on;
  keepalive_requests 100000;
  client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp; fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
"""
NGINX_CONF = (
    NGINX_BASE
    + """
  server {{
    listen 127.0.0.1:{port};
    listen 127.0.0.1:{tls_port} ssl;
    ssl_certificate {root}/cert.pem;
    ssl_certificate_key {root}/key.pem;
    root {root}/www;
    location = /fail {{ return 500 "boom\\n"; }}
    location = /bad-upstream {{ proxy_pass http://127.0.0.1:{dead_port}; }}
  }}
}}
"""
)


def self_signed_certificate(where: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key, made with the openssl CLI."""
    cert, key = where / "cert.pem", where / "key.pem"
    if not cert.exists():
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
                *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
                *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
        )
    return cert, key


class Nginx:
    """Debian's nginx serving files on a free port (and HTTPS on another, with a
    self-signed certificate), 404 and 500/502 paths included."""

    def __init__(self, root: Path) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        self.port, self.tls_port = free_port(), free_port()
        self_signed_certificate(root)
        (root / "www").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        (root / "www" / "index.html").write_text("<h1>hello</h1>\n")
        (root / "www" / "big.bin").write_bytes(os.urandom(300_000))
        # A port free a moment ago can be taken meanwhile (an outgoing connection's
        # ephemeral port): then nginx exits at once, and it starts again on others.
        for _ in range(3):
            conf = root / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(
                    root=root, port=self.port, tls_port=self.tls_port, dead_port=free_port()
                )
            )
            with open(root / "stderr.log", "wb") as stderr:
                self.proc = subprocess.Popen(
                    [exe, "-c", str(conf), "-p", str(root)],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            wait_until(
                lambda: listening(self.port) or self.proc.poll() is not None, 10, "nginx listening"
            )
            if self.proc.poll() is None:
                return
            self.port, self.tls_port = free_port(), free_port()
        raise AssertionError(f"nginx did not start: {(root / 'stderr.log').read_text()}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def https_url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.tls_port}{path}"

    def stop(self) -> None:
        end_process(self.proc, signal.SIGQUIT)  # graceful: finish in-flight requests


class PythonServer:
    """A test server script in its own process, named by OTEL_SERVICE_NAME."""

    def __init__(
        self,
        service_name: str,
        host: str = "127.0.0.1",
        script: str = "py_http_server.py",
        args: tuple[str, ...] | None = None,
    ) -> None:
        self.port = free_port()
        self.host = host
        extra = list(args) if args is not None else [host]
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / script), str(self.port), *extra],
            env={**os.environ, "OTEL_SERVICE_NAME": service_name},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: listening(self.port, host), 10, "python server listening")

    def stop(self) -> None:
        end_process(self.proc)


JAEGER_CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {{level: none}}
    logs: {{level: warn}}
extensions:
  healthcheckv2:
    use_v2: true
    http: {{endpoint: "127.0.0.1:{health}"}}
  jaeger_query:
    storage: {{traces: mem}}
    http: {{endpoint: "127.0.0.1:{query}"}}
    grpc: {{endpoint: "127.0.0.1:{query_grpc}"}}
  jaeger_storage:
    backends:
      mem:
        memory: {{max_traces: 100000}}
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{otlp}"}}
processors:
  batch: {{timeout: 100ms}}
exporters:
  jaeger_storage_exporter: {{trace_storage: mem}}
"""


class Jaeger:
    """Real Jaeger v2 with in-memory storage, built by scripts/build-jaeger.sh."""

    def __init__(self, root: Path) -> None:
        binaries = sorted((HERE.parent.parent / ".cache" / "jaeger").glob("jaeger-v*"))
        assert binaries, "Jaeger is built by scripts/setup.sh (scripts/build-jaeger.sh)"
        self.health, self.query, self.otlp = free_port(), free_port(), free_port()
        root.mkdir(parents=True, exist_ok=True)
        conf = root / "jaeger.yaml"
        conf.write_text(
            JAEGER_CONFIG.format(
                health=self.health, query=self.query, query_grpc=free_port(), otlp=self.otlp
            )
        )
        self.log = open(root / "jaeger.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(binaries[-1]), "--config", str(conf)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_until(lambda: listening(self.query) and listening(self.otlp), 60, "Jaeger listening")

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.query}{path}", timeout=10) as r:
            return json.loads(r.read())

    def search(
        self, service: str, start_us: int, spans_expected: int, limit: int, end_us: int = 0
    ) -> list[dict[str, Any]]:
        """Traces of `service` since `start_us`, as the search page lists them, once
        at least `spans_expected` spans are stored and a little more time has passed
        (so that an extra, split trace would show)."""
        url = f"/api/traces?service={service}&start={start_us}&limit={limit}"
        if end_us:
            url += f"&end={end_us}"

        def spans() -> int:
            return sum(len(t["spans"]) for t in self.api(url)["data"])

        try:
            wait_until(lambda: spans() >= spans_expected, 90, f"{spans_expected} spans")
        except AssertionError:
            traces = self.api(url)["data"]
            sizes = sorted({len(t["spans"]) for t in traces})
            raise AssertionError(
                f"{spans()} of {spans_expected} spans in Jaeger after 90 s, in "
                f"{len(traces)} traces of {sizes} spans"
            ) from None
        time.sleep(1.5)
        return list(self.api(url)["data"])

    def trace(self, trace_id: str) -> dict[str, Any]:
        return dict(self.api(f"/api/traces/{trace_id}")["data"][0])

    def stop(self) -> None:
        end_process(self.proc, timeout=3)  # in-memory storage: nothing to flush
        self.log.close()


class Otelcol:
    """The OpenTelemetry Collector built by scripts/build-otelcol.sh, running a config
    of deploy/examples/ as shipped: its endpoints come from the environment
    (`env`; the health check's is set here)."""

    def __init__(self, root: Path, config: Path, env: dict[str, str]) -> None:
        binaries = sorted((HERE.parent.parent / ".cache" / "otelcol").glob("otelcol-v*"))
        assert binaries, "the Collector is built by scripts/setup.sh (scripts/build-otelcol.sh)"
        self.health = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "otelcol.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            # its own telemetry's port (8888) would be shared by every test instance
            [
                str(binaries[-1]),
                "--config",
                str(config),
                "--set",
                "service.telemetry.metrics.level=none",
            ],
            env={**os.environ, "GATEWAY_HEALTH_ENDPOINT": f"127.0.0.1:{self.health}", **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self._healthy() or self.proc.poll() is not None, 60, "Collector up")
        if self.proc.poll() is not None:
            raise AssertionError(f"the Collector exited at start:\n{self.log_path.read_text()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        end_process(self.proc, timeout=10)
        self.log.close()


GATEWAY_CONFIG = HERE.parent.parent / "deploy" / "examples" / "gateway-collector.yaml"


def gateway_collector(root: Path, jaeger: Jaeger, otlp_port: int, prometheus: int = 0) -> Otelcol:
    """A gateway (deploy/examples/gateway-collector.yaml) on 127.0.0.1 exporting to
    `jaeger`: every error trace kept, half of the rest; span metrics every 2 s."""
    return Otelcol(
        root,
        GATEWAY_CONFIG,
        {
            "GATEWAY_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{otlp_port}",
            "GATEWAY_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
            "GATEWAY_PROMETHEUS_ENDPOINT": f"127.0.0.1:{prometheus or free_port()}",
            "GATEWAY_SAMPLING_PERCENTAGE": "50",
            "GATEWAY_METRICS_FLUSH_INTERVAL": "2s",
            "TRACES_OTLP_ENDPOINT": f"127.0.0.1:{jaeger.otlp}",
        },
    )


def _concurrently(client: Callable[[int], None], connections: int) -> None:
    workers = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def ab(url: str, requests: int, concurrency: int) -> str:
    """ApacheBench with keep-alive; its report, once every request completed."""
    out = subprocess.run(
        ["ab", "-k", "-q", "-n", str(requests), "-c", str(concurrency), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert re.search(rf"Complete requests:\s+{requests}", out), out
    assert re.search(r"Failed requests:\s+0", out), out
    return out


def get_many(port: int, path: str, per_connection: int, connections: int = 1) -> None:
    """`per_connection` keep-alive GETs on each of `connections` concurrent connections."""

    def client(_n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(per_connection):
            conn.request("GET", path)
            conn.getresponse().read()
        conn.close()

    _concurrently(client, connections)


def get_distinct(port: int, tag: str, per_connection: int, connections: int) -> int:
    """As get_many, every request with a path of its own (/tag/cNN-III) that the
    chain's last hop must echo ("leaf PATH"); returns the requests made."""
    failures: list[str] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(per_connection):
            path = f"/{tag}/c{n:02d}-{i:03d}"
            conn.request("GET", path)
            if conn.getresponse().read() != f"leaf {path}\n".encode():
                failures.append(path)
        conn.close()

    _concurrently(client, connections)
    assert not failures, f"{len(failures)} requests failed, e.g. {failures[0]}"
    return connections * per_connection


def build_go(source: Path, binary: Path, *flags: str, toolchain: str = "local") -> Path:
    """A static Go program from one main.go, with the toolchain installed here (or
    another one the go command fetches from the module proxy, e.g. "go1.27.3")."""
    subprocess.run(
        [GO, "build", *flags, "-o", str(binary), str(source)],
        check=True,
        env={**os.environ, "GOTOOLCHAIN": toolchain, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
    )
    return binary


def asyncio_pythons() -> dict[str, str]:
    """The interpreters the asyncio chains run on: Debian's 3.11 (its `_asyncio`
    stripped, its symbols from python3.11-dbg) and pyenv's 3.11 and 3.12 builds
    (symbols kept), by name ("3.11-debian", "3.11", "3.12")."""
    found = {}
    if _runs("/usr/bin/python3.11"):
        found["3.11-debian"] = "/usr/bin/python3.11"
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for version in ("3.11", "3.12"):
        builds = sorted(pyenv.glob(f"{version}.*/bin/python{version}"))
        runs = [str(b) for b in builds if _runs(str(b))]
        if runs:
            found[version] = runs[-1]
    return found


def _runs(python: str) -> bool:
    return os.path.exists(python) and subprocess.run([python, "-c", ""]).returncode == 0


def build_cpu_shares(directory: Path) -> Path:
    """The profiling tests' C program (tests/kernel/profiled/cpu_shares.c), with
    frame pointers so that its stacks can be walked."""
    binary = directory / "cpu_shares"
    subprocess.run(
        [
            "gcc",
            "-O1",
            "-fno-omit-frame-pointer",
            "-o",
            str(binary),
            str(HERE / "profiled" / "cpu_shares.c"),
        ],
        check=True,
    )
    return binary


class Chain:
    """Three uninstrumented hops of one runtime, A -> B -> C, each started as
    `argv PORT [NEXT_PORT]` and named `NAME-a`, `NAME-b`, `NAME-c`."""

    def __init__(self, argv: list[str], name: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        next_port: int | None = None
        try:
            for hop in ("c", "b", "a"):
                port = free_port()
                extra = [str(port)] + ([str(next_port)] if next_port else [])
                env = {**os.environ, "OTEL_SERVICE_NAME": f"{name}-{hop}"}
                self.procs.append(subprocess.Popen([*argv, *extra], env=env))
                wait_until(lambda p=port: listening(p), 10, f"{name}-{hop} listening")
                next_port = port
        except AssertionError:
            self.stop()
            raise
        self.port = next_port or 0
        self.name = name
        self.services = {f"{name}-{hop}" for hop in "abc"}

    def stop(self) -> None:
        for proc in self.procs:
            end_process(proc)


def _traversable(path: Path) -> None:
    """Let a system user reach `path`: pytest's temporary directories are 0700 root."""
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o001)


def _as_user(user: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Database servers refuse to run as root: start them as their Debian system user,
    as our own child. setpriv takes the user and becomes the server, so a stop signal
    reaches it (through runuser it never did). Not Popen's user=: that makes Python
    fork this process, gRPC's threads and fork handlers with it, not vfork; one CI
    run's child crashed before its exec (SIGSEGV, then SIGBUS) and PostgreSQL never
    started."""
    entry = pwd.getpwnam(user)
    ids = [f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
    return subprocess.Popen(["setpriv", *ids, "--", *argv], **kwargs)


class Postgres:
    """A throwaway PostgreSQL cluster (Debian's server binaries) on a free port; with
    `tls`, it offers TLS (a self-signed certificate) to clients that ask."""

    BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/15/bin"))

    def __init__(self, root: Path, tls: bool = False) -> None:
        self.port = free_port()
        data = root / "pgdata"
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres", "postgres")
        _traversable(root)
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        self.proc = _as_user(
            "postgres",
            [
                str(self.BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                *self._tls_options(root, tls),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The postmaster listens before its startup process has run; until then it
        # refuses sessions ("the database system is starting up"). pg_ctl -w waits,
        # as this does, for the status line of postmaster.pid to read "ready".
        wait_until(lambda: self._status(data) == "ready", 30, "postgres ready")
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @staticmethod
    def _status(data: Path) -> str:
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return ""
        return lines[7].strip() if len(lines) > 7 else ""

    @staticmethod
    def _tls_options(root: Path, tls: bool) -> list[str]:
        if not tls:
            return ["-c", "ssl=off"]
        cert, key = self_signed_certificate(root / "tls")
        for path in (root / "tls", cert, key):
            shutil.chown(path, "postgres", "postgres")
        key.chmod(0o600)  # PostgreSQL refuses a key others can read
        return ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]

    def stop(self) -> None:
        end_process(self.proc, signal.SIGINT, 20)  # PostgreSQL's fast shutdown


class MariaDB:
    """A throwaway MariaDB server (Debian's mariadb-server) on a free port."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        data = root / "data"
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "mysql", "mysql")
        _traversable(root)
        subprocess.run(
            [
                "mariadb-install-db",
                f"--datadir={data}",
                "--user=mysql",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
        )
        self.socket = root / "mysqld.sock"
        self.proc = _as_user(
            "mysql",
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.socket}",
                f"--pid-file={root}/pid",
                "--skip-grant-tables=0",
                "--innodb-buffer-pool-size=16M",
                "--skip-log-bin",
                f"--tmpdir={root}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: listening(self.port), 60, "mariadb listening")
        # Root over TCP with a password, as applications connect.
        subprocess.run(
            [
                "mariadb",
                f"--socket={self.socket}",
                "-uroot",
                "-e",
                "CREATE DATABASE app; CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'secret';"
                " GRANT ALL ON app.* TO 'app'@'127.0.0.1';",
            ],
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        end_process(self.proc, timeout=30)


DIG = ("dig", "+short", "+tries=1", "+timeout=1")


class Dnsmasq:
    """Debian's dnsmasq answering on port 53 of a spare loopback address.

    www.example.test resolves (A and AAAA), anything under nx.test is NXDOMAIN.
    Port 53 by default, because resolvers (glibc) only ever ask there.
    """

    def __init__(self, address: str = "127.0.53.1", port: int = 53) -> None:
        self.address, self.port = address, port
        self.proc = subprocess.Popen(
            [
                "dnsmasq",
                "--no-daemon",
                f"--port={port}",
                f"--listen-address={address}",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--log-facility=-",
                "--address=/www.example.test/10.1.2.3",
                "--address=/www.example.test/fd00::3",
                "--address=/nx.test/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, "dnsmasq answering")

    def _answers(self) -> bool:
        out = subprocess.run(
            [*DIG, f"@{self.address}", "-p", str(self.port), "www.example.test"],
            capture_output=True,
            text=True,
        )
        return "10.1.2.3" in out.stdout

    def stop(self) -> None:
        end_process(self.proc)


def with_resolver(nameserver: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run argv with /etc/resolv.conf naming `nameserver`, in a private mount namespace."""
    conf = Path(f"/tmp/otel-ebpf-resolv-{os.getpid()}.conf")
    conf.write_text(f"nameserver {nameserver}\noptions attempts:1 timeout:1\n")
    script = f'mount --bind {conf} /etc/resolv.conf && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *argv], capture_output=True, text=True
    )


class NetnsHosts:
    """Two network namespaces joined by a veth pair: 10.77.0.1 (client side) and
    10.77.0.2 (server side); loss and blackholes are made with nftables in them."""

    def __init__(self, prefix: str = "oe") -> None:
        self.prefix = prefix
        self.client_ns, self.server_ns = f"{prefix}-a", f"{prefix}-b"
        self.client_ip, self.server_ip = "10.77.0.1", "10.77.0.2"
        self.close()  # leftovers of an interrupted run
        for command in (
            f"ip netns add {self.client_ns}",
            f"ip netns add {self.server_ns}",
            f"ip link add {prefix}-va netns {self.client_ns} type veth peer name {prefix}-vb"
            f" netns {self.server_ns}",
            f"ip -n {self.client_ns} addr add {self.client_ip}/24 dev {prefix}-va",
            f"ip -n {self.server_ns} addr add {self.server_ip}/24 dev {prefix}-vb",
            f"ip -n {self.client_ns} link set {prefix}-va up",
            f"ip -n {self.server_ns} link set {prefix}-vb up",
            f"ip -n {self.client_ns} link set lo up",
            f"ip -n {self.server_ns} link set lo up",
        ):
            subprocess.run(command.split(), check=True, capture_output=True)

    def run(self, ns: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kwargs)

    def uplink(self, ns: str, subnet: int) -> tuple[str, str]:
        """A veth pair from the host into `ns` on 10.78.{subnet}.0/24, so that its
        processes and the host's reach each other: (the host's address, the ns's)."""
        host_end, ns_end = f"{self.prefix}-u{subnet}", f"{self.prefix}-d{subnet}"
        host_ip, ns_ip = f"10.78.{subnet}.1", f"10.78.{subnet}.2"
        for command in (
            f"ip link add {host_end} type veth peer name {ns_end} netns {ns}",
            f"ip addr add {host_ip}/24 dev {host_end}",
            f"ip -n {ns} addr add {ns_ip}/24 dev {ns_end}",
            f"ip link set {host_end} up",
            f"ip -n {ns} link set {ns_end} up",
        ):
            subprocess.run(command.split(), check=True, capture_output=True)
        return host_ip, ns_ip

    def nft(self, ns: str, rules: str) -> None:
        """Load an nftables ruleset into a namespace (replacing the test table)."""
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=f"table inet oe_test\ndelete table inet oe_test\n{rules}".encode(),
            check=True,
            capture_output=True,
        )

    def close(self) -> None:
        for ns in (self.client_ns, self.server_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
