"""Collector-style YAML configuration, validated, with OTEL_* / OTEL_EBPF_* overrides.

    receivers:  {ebpf: {...}}
    processors: {batch: {...}}
    exporters:  {debug: {}, otlp: {...}, otlphttp: {...}, file: {path: ...}}
    extensions: {health_check: {endpoint: 127.0.0.1:13133}}
    service:    {extensions: [...], pipelines: {traces: {receivers, processors, exporters}}}

Exporter keys follow the collector's `type/name` form (`otlp/jaeger`). Unknown
keys and bad values fail with the key's path. `${env:NAME}` expands in values.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from otel_ebpf.processors.routes import DEFAULT_ID_PATTERNS
from otel_ebpf.processors.selection import parse_ports


class ConfigError(ValueError):
    """Configuration is invalid; the message names the key path."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def _duration_seconds(value: Any) -> Any:
    """'200ms', '5s', '1m' or a number of seconds -> float seconds."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"not a duration: {value!r} (use e.g. 200ms, 5s, 1m)")
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
        return float(m.group(1)) * scale
    return value


Duration = Annotated[float, BeforeValidator(_duration_seconds), Field(gt=0)]


def _power_of_two(low: int, high: int) -> BeforeValidator:
    """Ring buffers and capture masks in the kernel program need powers of two."""

    def check(v: Any) -> Any:
        n = int(v)
        if n & (n - 1) or not low <= n <= high:
            raise ValueError(f"must be a power of two from {low} to {high}")
        return n

    return BeforeValidator(check)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SelectionConfig(_Strict):
    pids: list[int] = []
    executables: list[str] = []  # fnmatch globs on the executable's file name


ProtocolName = Literal["http", "redis", "postgresql", "mysql", "dns", "http2"]


class ProtocolsConfig(_Strict):
    # Server port -> protocol, for ports whose first bytes do not say (or say wrongly).
    ports: dict[Annotated[int, Field(ge=1, le=65535)], ProtocolName] = {}
    # Statement text as sent, literals included: only when explicitly asked for.
    db_query_text: Literal["sanitized", "raw"] = "sanitized"
    dns_timeout: Duration = 5.0  # a DNS query unanswered this long is reported as timed out


class RoutesConfig(_Strict):
    # Path segments matching one of these regular expressions become {id} in http.route.
    id_patterns: list[str] = list(DEFAULT_ID_PATTERNS)
    max_per_service: int = Field(default=100, ge=1)  # then "/{other}"

    @field_validator("id_patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return v


class KubernetesConfig(_Strict):
    metadata: Literal["auto", "true", "false"] = "auto"  # auto: when running in a pod
    api: str = ""  # the API server URL (default: the in-cluster one)
    node_name: str = ""  # this node (default: K8S_NODE_NAME); a node collector's pods


class SidecarConfig(_Strict):
    """What "my pod" is for mode: sidecar (default: the collector's own network namespace)."""

    network_namespace: str = "/proc/self/ns/net"
    cgroup: str = ""  # also require processes under this cgroup path (the pod's)


class EbpfReceiverConfig(_Strict):
    capture_bytes: Annotated[int, _power_of_two(64, 16384)] = 1024
    ring_buffer_pages: Annotated[int, _power_of_two(1, 65536)] = 2048
    max_connections: int = Field(default=65536, ge=16)
    open_ports: str = ""  # e.g. "80,443,8000-8999": server ports to trace
    include: SelectionConfig = SelectionConfig()
    exclude: SelectionConfig = SelectionConfig()
    protocols: ProtocolsConfig = ProtocolsConfig()
    routes: RoutesConfig = RoutesConfig()
    mode: Literal["node", "sidecar"] = "node"  # sidecar: only its own pod's processes
    sidecar: SidecarConfig = SidecarConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()

    @field_validator("open_ports")
    @classmethod
    def _ports(cls, v: str) -> str:
        parse_ports(v)
        return v


class EndpointConfig(_Strict):
    endpoint: str

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        _, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be host:port")
        return v


class OtlpProtocols(_Strict):
    grpc: EndpointConfig | None = None
    http: EndpointConfig | None = None


class OtlpReceiverConfig(_Strict):
    """Like the collector's otlp receiver; the embedded default listens on localhost."""

    protocols: OtlpProtocols = OtlpProtocols(
        grpc=EndpointConfig(endpoint="127.0.0.1:4317"),
        http=EndpointConfig(endpoint="127.0.0.1:4318"),
    )


class BatchConfig(_Strict):
    """Maps to the SDK's BatchSpanProcessor; unset values come from OTEL_BSP_*."""

    send_batch_size: int | None = Field(None, gt=0)
    timeout: Duration | None = None
    max_queue_size: int | None = Field(None, gt=0)


class CorrelateConfig(_Strict):
    """Merging of SDK spans (OTLP in) with eBPF spans of the same requests."""

    hold: Duration = 10.0  # longer than the SDKs' batch delay (5 s by default)
    keep_duplicates: bool = False  # keep eBPF spans the SDK also made, as its children


class OtlpExporterConfig(_Strict):
    """Unset values come from OTEL_EXPORTER_OTLP_* as in any SDK."""

    endpoint: str | None = None
    headers: dict[str, str] | None = None
    compression: Literal["gzip", "none"] | None = None
    timeout: Duration | None = None
    insecure: bool | None = None  # gRPC only


class DebugExporterConfig(_Strict):
    verbosity: Literal["basic", "normal", "detailed"] = "normal"


class FileExporterConfig(_Strict):
    path: str


class PrometheusExporterConfig(_Strict):
    endpoint: str = "127.0.0.1:9464"  # the scrape endpoint (host:port)


RECEIVER_TYPES: dict[str, type[_Strict]] = {
    "ebpf": EbpfReceiverConfig,
    "otlp": OtlpReceiverConfig,
}

PROCESSOR_TYPES: dict[str, type[_Strict]] = {
    "batch": BatchConfig,
    "correlate": CorrelateConfig,
}

EXPORTER_TYPES: dict[str, type[_Strict]] = {
    "otlp": OtlpExporterConfig,
    "otlphttp": OtlpExporterConfig,
    "debug": DebugExporterConfig,
    "file": FileExporterConfig,
    "prometheus": PrometheusExporterConfig,
}
TRACES_ONLY = frozenset({"file"})
METRICS_ONLY = frozenset({"prometheus"})


class HealthCheckConfig(EndpointConfig):
    endpoint: str = "127.0.0.1:13133"


class PipelineConfig(_Strict):
    receivers: list[str]
    processors: list[str] = []
    exporters: list[str]


class ServiceConfig(_Strict):
    extensions: list[str] = []
    pipelines: dict[Literal["traces", "metrics"], PipelineConfig]


class Config(_Strict):
    receivers: dict[Literal["ebpf", "otlp"], Any] = {"ebpf": {}}
    processors: dict[Literal["batch", "correlate"], Any] = {}
    exporters: dict[str, Any]
    extensions: dict[Literal["health_check"], HealthCheckConfig] = {}
    service: ServiceConfig

    @model_validator(mode="after")
    def _references(self) -> Config:
        if not self.service.pipelines:
            raise ValueError("service.pipelines: define a traces or a metrics pipeline")
        for name, pipe in self.service.pipelines.items():
            where = f"service.pipelines.{name}"
            wrong = METRICS_ONLY if name == "traces" else TRACES_ONLY
            for item in pipe.exporters:
                if item.split("/", 1)[0] in wrong:
                    raise ValueError(f"{where}.exporters: {item!r} cannot export {name}")
            for ref, known in (
                ("receivers", self.receivers),
                ("processors", self.processors),
                ("exporters", self.exporters),
            ):
                for item in getattr(pipe, ref):
                    if item not in known:
                        raise ValueError(f"{where}.{ref}: {item!r} is not defined under {ref}")
        for ext in self.service.extensions:
            if ext not in self.extensions:
                raise ValueError(f"service.extensions: {ext!r} is not defined under extensions")
        return self

    @property
    def ebpf(self) -> EbpfReceiverConfig:
        r = self.receivers.get("ebpf")
        return r if isinstance(r, EbpfReceiverConfig) else EbpfReceiverConfig()

    @property
    def traces(self) -> PipelineConfig:
        """The traces pipeline; without one, spans are built for metrics only."""
        return self.service.pipelines.get("traces") or PipelineConfig(
            receivers=["ebpf"], exporters=[]
        )

    @property
    def correlate(self) -> CorrelateConfig | None:
        if "correlate" not in self.traces.processors or not self.traces.exporters:
            return None  # nothing to merge when no spans leave
        c = self.processors.get("correlate")
        return c if isinstance(c, CorrelateConfig) else CorrelateConfig()

    @property
    def otlp(self) -> OtlpReceiverConfig | None:
        if "otlp" not in self.traces.receivers:
            return None
        r = self.receivers.get("otlp")
        return r if isinstance(r, OtlpReceiverConfig) else None

    @property
    def health(self) -> HealthCheckConfig | None:
        if "health_check" in self.service.extensions:
            return self.extensions["health_check"]
        return None


def _first_error(exc: ValidationError, prefix: str = "") -> str:
    err = exc.errors()[0]
    path = ".".join(
        [prefix, *(str(p) for p in err["loc"])] if prefix else [str(p) for p in err["loc"]]
    )
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    msg = msg.removeprefix("Value error, ")
    return f"{path}: {msg}" if path else msg


_ENV_REF = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(text: str, env: dict[str, str]) -> str:
    return _ENV_REF.sub(lambda m: env.get(m.group(1), ""), text)


def default_document(env: dict[str, str]) -> dict[str, Any]:
    """The embedded default: console output unless an OTLP endpoint is configured."""
    wanted = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if not wanted:
        has_endpoint = any(
            env.get(k)
            for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        wanted = ["otlp"] if has_endpoint else ["console"]
    exporters: dict[str, Any] = {}
    for name in wanted:
        if name == "otlp":
            protocol = env.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            )
            if protocol == "grpc":
                exporters["otlp"] = {}
            elif protocol == "http/protobuf":
                exporters["otlphttp"] = {}
            else:
                raise ConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported "
                    "(use grpc or http/protobuf)"
                )
        elif name == "console":
            exporters["debug"] = {}
        elif name != "none":
            raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}")
    return document(exporters, otlp={}, metrics=_default_metrics(env, exporters))


def _default_metrics(env: dict[str, str], exporters: dict[str, Any]) -> list[str]:
    """Metric exporters per OTEL_METRICS_EXPORTER; by default OTLP when traces go there."""
    wanted = [e.strip() for e in env.get("OTEL_METRICS_EXPORTER", "").split(",") if e.strip()]
    otlp = [k for k in exporters if k in ("otlp", "otlphttp")]
    if not wanted:
        return otlp
    names = []
    for name in wanted:
        if name == "otlp":
            if not otlp:
                exporters["otlphttp"] = {}
                otlp = ["otlphttp"]
            names += otlp
        elif name == "prometheus":
            host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
            port = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")
            exporters["prometheus"] = {"endpoint": f"{host}:{port}"}
            names.append("prometheus")
        elif name == "console":
            exporters.setdefault("debug", {})
            names.append("debug")
        elif name != "none":
            raise ConfigError(f"OTEL_METRICS_EXPORTER: unknown exporter {name!r}")
    return names


def document(
    exporters: dict[str, Any],
    health: dict[str, Any] | None = None,
    batch: dict[str, Any] | None = None,
    otlp: dict[str, Any] | None = None,
    metrics: list[str] | None = None,
    traces: list[str] | None = None,
) -> dict[str, Any]:
    """A traces pipeline: ebpf (and otlp, when given) -> batch -> the exporters named
    in `traces` (by default all that export spans); a metrics pipeline to the
    exporters named in `metrics`, if any."""
    receivers: dict[str, Any] = {"ebpf": {}} if otlp is None else {"ebpf": {}, "otlp": otlp}
    pipelines: dict[str, Any] = {
        "traces": {
            "receivers": list(receivers),
            "processors": ["correlate", "batch"],
            "exporters": (
                traces
                if traces is not None
                else [k for k in exporters if k.split("/", 1)[0] not in METRICS_ONLY]
            ),
        }
    }
    if metrics:
        pipelines["metrics"] = {"receivers": ["ebpf"], "exporters": metrics}
    return {
        "receivers": receivers,
        "processors": {"correlate": {}, "batch": batch or {}},
        "exporters": exporters,
        "extensions": {"health_check": health or {}},
        "service": {"extensions": ["health_check"], "pipelines": pipelines},
    }


def _apply_env(doc: dict[str, Any], env: dict[str, str]) -> None:
    """OTEL_EBPF_* variables override the file (names from OpenTelemetry eBPF
    Instrumentation where it has the concept)."""
    ebpf = doc.setdefault("receivers", {}).setdefault("ebpf", {}) or {}
    doc["receivers"]["ebpf"] = ebpf

    def ints(name: str, value: str) -> list[int]:
        try:
            return [int(p) for p in value.split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"{name}: expected comma-separated pids, got {value!r}") from None

    if "OTEL_EBPF_OPEN_PORT" in env:
        ebpf["open_ports"] = env["OTEL_EBPF_OPEN_PORT"]
    if "OTEL_EBPF_AUTO_TARGET_EXE" in env:
        ebpf.setdefault("include", {})["executables"] = [
            g.strip() for g in env["OTEL_EBPF_AUTO_TARGET_EXE"].split(",") if g.strip()
        ]
    if "OTEL_EBPF_EXCLUDE_EXE" in env:
        ebpf.setdefault("exclude", {})["executables"] = [
            g.strip() for g in env["OTEL_EBPF_EXCLUDE_EXE"].split(",") if g.strip()
        ]
    if "OTEL_EBPF_TARGET_PIDS" in env:
        ebpf.setdefault("include", {})["pids"] = ints(
            "OTEL_EBPF_TARGET_PIDS", env["OTEL_EBPF_TARGET_PIDS"]
        )
    if "OTEL_EBPF_EXCLUDE_PIDS" in env:
        ebpf.setdefault("exclude", {})["pids"] = ints(
            "OTEL_EBPF_EXCLUDE_PIDS", env["OTEL_EBPF_EXCLUDE_PIDS"]
        )
    if "OTEL_EBPF_CAPTURE_BYTES" in env:
        ebpf["capture_bytes"] = env["OTEL_EBPF_CAPTURE_BYTES"]
    if "OTEL_EBPF_MODE" in env:
        ebpf["mode"] = env["OTEL_EBPF_MODE"]
    for name, section, key in (
        ("OTEL_EBPF_SIDECAR_NETNS", "sidecar", "network_namespace"),
        ("OTEL_EBPF_SIDECAR_CGROUP", "sidecar", "cgroup"),
        ("OTEL_EBPF_KUBE_METADATA_ENABLE", "kubernetes", "metadata"),
        ("OTEL_EBPF_KUBE_API", "kubernetes", "api"),
        ("OTEL_EBPF_KUBE_NODE_NAME", "kubernetes", "node_name"),
    ):
        if name in env:
            ebpf[section] = {**(ebpf.get(section) or {}), key: env[name]}
    protocols: dict[str, Any] = {
        key: env[name]
        for name, key in (
            ("OTEL_EBPF_DNS_TIMEOUT", "dns_timeout"),
            ("OTEL_EBPF_DB_QUERY_TEXT", "db_query_text"),
        )
        if name in env
    }
    if "OTEL_EBPF_PROTOCOL_PORTS" in env:  # "5433=postgresql,6380=redis"
        pairs = [p.partition("=") for p in env["OTEL_EBPF_PROTOCOL_PORTS"].split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError(
                "OTEL_EBPF_PROTOCOL_PORTS: expected port=protocol pairs, "
                f"got {env['OTEL_EBPF_PROTOCOL_PORTS']!r}"
            )
        protocols["ports"] = {port.strip(): name.strip() for port, _, name in pairs}
    if protocols:
        ebpf["protocols"] = {**(ebpf.get("protocols") or {}), **protocols}
    if "OTEL_EBPF_HEALTH_ENDPOINT" in env and "health_check" in (doc.get("extensions") or {}):
        doc["extensions"]["health_check"] = {"endpoint": env["OTEL_EBPF_HEALTH_ENDPOINT"]}


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read, expand, override and validate; raises ConfigError with the key path."""
    env = dict(os.environ) if env is None else env
    if path is None:
        doc = default_document(env)
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            doc = yaml.safe_load(_expand(text, env)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    _apply_env(doc, env)
    try:
        config = Config.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None
    receivers: dict[str, Any] = {}
    for name, body in config.receivers.items():
        try:
            receivers[name] = RECEIVER_TYPES[name].model_validate(body or {})
        except ValidationError as exc:
            raise ConfigError(_first_error(exc, f"receivers.{name}")) from None
    processors: dict[str, Any] = {}
    for processor, body in config.processors.items():
        try:
            processors[processor] = PROCESSOR_TYPES[processor].model_validate(body or {})
        except ValidationError as exc:
            raise ConfigError(_first_error(exc, f"processors.{processor}")) from None
    exporters: dict[str, Any] = {}
    for key, body in config.exporters.items():
        kind = key.split("/", 1)[0]
        model = EXPORTER_TYPES.get(kind)
        if model is None:
            known = ", ".join(EXPORTER_TYPES)
            raise ConfigError(f"exporters.{key}: unknown exporter type {kind!r} (known: {known})")
        try:
            exporters[key] = model.model_validate(body or {})
        except ValidationError as exc:
            raise ConfigError(_first_error(exc, f"exporters.{key}")) from None
    return config.model_copy(
        update={"receivers": receivers, "processors": processors, "exporters": exporters}
    )
