"""Where CPU profiles go: OTLP profiles over gRPC, pprof files in a directory, a
Pyroscope-compatible `/ingest` endpoint, or a summary line in the log.

Each `export` takes one `ProfileWindow`, returns whether it was delivered, and
never raises: a backend that is down costs that window, said in the log and in
self-telemetry, and nothing else.
"""

from __future__ import annotations

import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Protocol

from otel_ebpf.model import ProfiledStack, ProfileWindow
from otel_ebpf.processors.profiling import pprof
from otel_ebpf.processors.profiling.otlp import build_request

log = logging.getLogger(__name__)

_PROFILES_EXPORT_METHOD = (
    "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"
)


class ProfileExporter(Protocol):
    name: str

    def export(self, window: ProfileWindow) -> bool: ...
    def shutdown(self) -> None: ...


def _headers(text: str) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_HEADERS' form: "key=value,key2=value2" (values URL-encoded)."""
    out = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            out[key.strip().lower()] = urllib.parse.unquote(value.strip())
    return out


class OtlpGrpcProfileExporter:
    """ProfilesService/Export over gRPC (the endpoint, headers, compression and
    timeout of the `otlp` exporter's settings, else the OTEL_EXPORTER_OTLP_* ones)."""

    def __init__(
        self,
        name: str,
        endpoint: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        compression: str | None = None,
        insecure: bool | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        import grpc

        env = dict(os.environ) if env is None else env
        self.name = name
        endpoint = (
            endpoint
            or env.get("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT")
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or "http://localhost:4317"
        )
        url = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        self.target = url.netloc
        if insecure is None:
            insecure = url.scheme == "http"
        self._timeout = timeout or float(env.get("OTEL_EXPORTER_OTLP_TIMEOUT", "10000")) / 1000
        headers = (
            headers
            if headers is not None
            else _headers(
                env.get(
                    "OTEL_EXPORTER_OTLP_PROFILES_HEADERS", env.get("OTEL_EXPORTER_OTLP_HEADERS", "")
                )
            )
        )
        self._metadata = tuple((k.lower(), v) for k, v in headers.items())
        compression = compression or env.get("OTEL_EXPORTER_OTLP_COMPRESSION", "none")
        self._compression = grpc.Compression.Gzip if compression == "gzip" else None
        if insecure:
            self._channel = grpc.insecure_channel(self.target)
        else:
            certificate = env.get("OTEL_EXPORTER_OTLP_CERTIFICATE")
            roots = Path(certificate).read_bytes() if certificate else None
            self._channel = grpc.secure_channel(
                self.target, grpc.ssl_channel_credentials(root_certificates=roots)
            )
        self._export = self._channel.unary_unary(
            _PROFILES_EXPORT_METHOD,
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=None,
        )

    def export(self, window: ProfileWindow) -> bool:
        import grpc

        if not window.stacks:
            return True
        request = build_request(window)
        for attempt in range(2):  # one retry: the next window is only seconds away
            try:
                self._export(
                    request,
                    timeout=self._timeout,
                    metadata=self._metadata,
                    compression=self._compression,
                )
                return True
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if attempt == 0 and code == grpc.StatusCode.UNAVAILABLE:
                    time.sleep(1.0)
                    continue
                log.warning("profiles to %s not delivered: %s", self.target, code or exc)
                return False
        return False

    def shutdown(self) -> None:
        self._channel.close()


class PprofDirectoryExporter:
    """One gzipped pprof file per window (all processes, labelled per sample), the
    newest `max_files` kept: `go tool pprof -top DIR/cpu-*.pb.gz`."""

    def __init__(self, name: str, directory: str, max_files: int = 360) -> None:
        self.name = name
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._max_files = max_files

    def export(self, window: ProfileWindow) -> bool:
        if not window.stacks:
            return True
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(window.start_ns / 1e9))
        path = self._dir / f"cpu-{stamp}-{window.start_ns % 1_000_000_000:09d}.pb.gz"
        partial = path.with_suffix(".partial")
        try:
            partial.write_bytes(pprof.encode(window))
            os.chmod(partial, 0o600)
            partial.replace(path)
            old = sorted(self._dir.glob("cpu-*.pb.gz"))
            for stale in old[: max(0, len(old) - self._max_files)]:
                stale.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("pprof file %s not written: %s", path, exc)
            return False
        return True

    def shutdown(self) -> None:
        pass


_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.:/-]")


def pyroscope_name(service: str, labels: dict[str, str]) -> str:
    """Pyroscope's `name` parameter: the application, then {label=value,...}
    (characters the syntax reserves are replaced)."""
    clean = _LABEL_VALUE.sub("_", service) or "unknown_service"
    body = ",".join(f"{k}={_LABEL_VALUE.sub('_', v)}" for k, v in sorted(labels.items()) if v)
    return f"{clean}{{{body}}}"


class PyroscopeExporter:
    """POST /ingest?format=pprof, one request per service and window, the pprof
    profile as the multipart `profile` part (Pyroscope's and Grafana Alloy's
    `pyroscope.receive_http` ingest API)."""

    def __init__(
        self,
        name: str,
        endpoint: str,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        frequency: int = 49,
    ) -> None:
        self.name = name
        self._endpoint = endpoint.rstrip("/")
        self._headers = dict(headers or {})
        self._timeout = timeout
        self._frequency = frequency

    def export(self, window: ProfileWindow) -> bool:
        by_service: dict[tuple[str, str, str], list[ProfiledStack]] = {}
        for s in window.stacks:
            attrs = window.resources.get(s.pid, {})
            key = (
                str(attrs.get("service.name") or "unknown_service"),
                str(attrs.get("host.name") or ""),
                str(attrs.get("container.id") or ""),
            )
            by_service.setdefault(key, []).append(s)
        ok = True
        for (service, host, container), stacks in by_service.items():
            ok = (
                self._send(window, service, {"hostname": host, "container_id": container}, stacks)
                and ok
            )
        return ok

    def _send(
        self,
        window: ProfileWindow,
        service: str,
        labels: dict[str, str],
        stacks: list[ProfiledStack],
    ) -> bool:
        query = urllib.parse.urlencode(
            {
                "name": pyroscope_name(service, labels),
                "from": window.start_ns // 1_000_000_000,
                "until": max(window.end_ns // 1_000_000_000, window.start_ns // 1_000_000_000 + 1),
                "format": "pprof",
                "sampleRate": self._frequency,
                "spyName": "otel-ebpf",
            }
        )
        boundary = uuid.uuid4().hex
        body = b"".join(
            (
                f"--{boundary}\r\n".encode(),
                b'Content-Disposition: form-data; name="profile"; filename="profile.pprof"\r\n',
                b"Content-Type: application/octet-stream\r\n\r\n",
                pprof.encode(window, stacks),
                f"\r\n--{boundary}--\r\n".encode(),
            )
        )
        request = urllib.request.Request(
            f"{self._endpoint}/ingest?{query}",
            data=body,
            method="POST",
            headers={**self._headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read(1 << 16)
                return True
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("profile of %s not delivered to %s: %s", service, self._endpoint, exc)
            return False

    def shutdown(self) -> None:
        pass


class LogProfileExporter:
    """A line per window with the busiest functions: `otel-ebpf run` on a console."""

    def __init__(self, name: str, top: int = 5) -> None:
        self.name = name
        self._top = top

    def export(self, window: ProfileWindow) -> bool:
        from otel_ebpf.profiling import top_functions

        if not window.stacks:
            return True

        def listed(off_cpu: bool) -> str:
            top = top_functions(window.stacks, self._top, off_cpu=off_cpu)
            return ", ".join(f"{f} {100 * share:.1f}%" for f, _m, share in top) or "-"

        samples = sum(s.samples for s in window.stacks)
        line = f"CPU profile: {samples} samples in {len(window.resources)} processes; top: "
        line += listed(False)
        if window.off_cpu:
            blocked_s = sum(s.off_cpu_ns for s in window.stacks) / 1e9
            line += f"; {blocked_s:.1f} s blocked, in: {listed(True)}"
        log.info("%s", line)
        return True

    def shutdown(self) -> None:
        pass


def build_profile_exporter(key: str, cfg: Any, frequency: int) -> ProfileExporter:
    from otel_ebpf.config import (
        DebugExporterConfig,
        OtlpExporterConfig,
        PprofExporterConfig,
        PyroscopeExporterConfig,
    )

    kind = key.split("/", 1)[0]
    if kind == "debug":
        assert isinstance(cfg, DebugExporterConfig)
        return LogProfileExporter(key)
    if kind == "pprof":
        assert isinstance(cfg, PprofExporterConfig)
        return PprofDirectoryExporter(key, cfg.directory, cfg.max_files)
    if kind == "pyroscope":
        assert isinstance(cfg, PyroscopeExporterConfig)
        return PyroscopeExporter(key, cfg.endpoint, cfg.headers, cfg.timeout, frequency)
    assert isinstance(cfg, OtlpExporterConfig) and kind == "otlp"
    return OtlpGrpcProfileExporter(
        key, cfg.endpoint, cfg.headers, cfg.timeout, cfg.compression, cfg.insecure
    )
