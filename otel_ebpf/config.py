"""Collector-style YAML configuration, validated, with OTEL_* / OTEL_EBPF_* overrides.

    receivers:  {ebpf: {...}}
    processors: {memory_limiter: {...}, batch: {...}, correlate: {...}}
    exporters:  {debug: {}, otlp: {...}, otlphttp: {...}, file: {path: ...}}
    extensions: {health_check: {endpoint: 127.0.0.1:13133}}
    service:    {extensions: [...], pipelines: {traces: {receivers, processors, exporters}}}

Exporter keys follow the collector's `type/name` form (`otlp/jaeger`). Unknown
keys and bad values fail with the key's path. `${env:NAME}` expands in values.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from otel_ebpf.processors.protocols.numbers import decimal
from otel_ebpf.processors.redaction import DEFAULT_QUERY_KEYS
from otel_ebpf.processors.routes import DEFAULT_ID_PATTERNS
from otel_ebpf.processors.selection import parse_ports
from otel_ebpf.receivers.otlp_body import DEFAULT_MAX_BODY
from otel_ebpf.receivers.program_cache import DEFAULT_PROGRAM_CACHE
from otel_ebpf.scheduling import parse_cpu_list


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


def _power_of_two(low: int, high: int) -> AfterValidator:
    """Ring buffers and capture masks in the kernel program need powers of two
    (checked after pydantic has made the value an int, or refused it)."""

    def check(n: int) -> int:
        if n & (n - 1) or not low <= n <= high:
            raise ValueError(f"must be a power of two from {low} to {high}")
        return n

    return AfterValidator(check)


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


class RedactionConfig(_Strict):
    """Values of these URL query keys become REDACTED (matched without case), besides
    the HTTP conventions' own list (AWSAccessKeyId, Signature, sig, X-Goog-Signature)."""

    query_keys: list[str] = list(DEFAULT_QUERY_KEYS)


class Toggle(_Strict):
    enabled: bool = False


class ResourceAttributesConfig(_Strict):
    """Opt-in resource attributes (the Collector's `resource_attributes` form):
    argv often carries credentials, so command lines stay home unless asked for."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    command_line: Toggle = Field(default=Toggle(), alias="process.command_line")
    command_args: Toggle = Field(default=Toggle(), alias="process.command_args")


class SpanBudgetConfig(_Strict):
    """How many requests get a span (processors/budget.py): the collector's CPU
    kept under `cpu_per_1k_requests` of one core per 1,000 requests/s (never
    below `min_cpu`, never above `max_cpu`) by shedding spans in the kernel, at request start; or a
    fixed `probability`. Metrics count every request either way."""

    cpu_per_1k_requests: float = Field(default=0.05, ge=0)  # 0: no budget, a span per request
    min_cpu: float = Field(default=0.1, gt=0, le=64)
    # Never more, however busy the node: a node serving 100,000 requests/s does
    # not give its collector 5 cores. Unset: a tenth of the node's CPUs, at most
    # half a core (otel_ebpf/span_budget.py).
    max_cpu: float | None = Field(default=None, gt=0, le=64)
    probability: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _min_within_max(self) -> SpanBudgetConfig:
        if self.max_cpu is not None and self.min_cpu > self.max_cpu:
            raise ValueError(f"min_cpu {self.min_cpu} is above max_cpu {self.max_cpu}")
        return self

    # A shed request this slow still gets a span, as a failed one does (0: never).
    keep_slower_than: Annotated[float, BeforeValidator(_duration_seconds), Field(ge=0)] = 1.0


class EbpfReceiverConfig(_Strict):
    # At most 4096: the per-CPU scratch event holds 4x the capture and a per-CPU
    # map value is limited to 32 KiB.
    capture_bytes: Annotated[int, _power_of_two(64, 4096)] = 1024
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
    redaction: RedactionConfig = RedactionConfig()
    resource_attributes: ResourceAttributesConfig = ResourceAttributesConfig()
    span_budget: SpanBudgetConfig = SpanBudgetConfig()
    # Uprobes on Go programs' runtime and net/http for goroutine context (bpf/go.bpf.c).
    go_goroutines: bool = True
    # Uprobes on CPython's _asyncio for asyncio task context (bpf/asyncio.bpf.c).
    python_asyncio: bool = True
    # Uprobes on Node's node::InternalMakeCallback for callback context (bpf/node.bpf.c).
    node_callbacks: bool = True
    # Where compiled programs are kept, so a restart skips the compiler ("": compile
    # every time). Owned by the collector's user, writable by it alone.
    program_cache: str = DEFAULT_PROGRAM_CACHE
    # The collector's scheduling priority (every thread): 19, the lowest, lets the
    # traced programs preempt it at once, so its bursts of work do not sit in
    # their latency (nginx paced, a span each: p99 x9.6 at 0, x2.0 at 19; 10
    # was not enough). On a saturated node it then gets little CPU: the kernel
    # keeps counting and sheds spans while its ring buffer is read down.
    nice: int = Field(default=19, ge=-20, le=19)
    # The CPUs the collector runs on, every thread ("0-1,3"; "": wherever the
    # kernel puts it): a node's housekeeping CPUs, off those its services need.
    cpus: str = ""

    @field_validator("open_ports")
    @classmethod
    def _ports(cls, v: str) -> str:
        parse_ports(v)
        return v

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: str) -> str:
        if v.strip():
            parse_cpu_list(v)
        return v

    @field_validator("program_cache")
    @classmethod
    def _cache_directory(cls, v: str) -> str:
        if v and not v.startswith("/"):
            raise ValueError("must be an absolute path, or empty for no cache")
        return v


def _host_port(v: str) -> str:
    host, sep, port = v.rpartition(":")
    number = decimal(port)
    if not sep or not host or number is None or number > 65535:
        raise ValueError("must be host:port")
    return v


class EndpointConfig(_Strict):
    endpoint: Annotated[str, AfterValidator(_host_port)]


class GrpcServerConfig(EndpointConfig):
    max_recv_msg_size_mib: int = Field(default=4, ge=1, le=1024)  # as the Collector's


class HttpServerConfig(EndpointConfig):
    max_request_body_size: int = Field(default=DEFAULT_MAX_BODY, ge=1024)  # bytes


class OtlpProtocols(_Strict):
    grpc: GrpcServerConfig | None = None
    http: HttpServerConfig | None = None


class OtlpReceiverConfig(_Strict):
    """Like the collector's otlp receiver; the embedded default listens on localhost.
    Requests over the size bounds are refused (before and after decompression)."""

    protocols: OtlpProtocols = OtlpProtocols(
        grpc=GrpcServerConfig(endpoint="127.0.0.1:4317"),
        http=HttpServerConfig(endpoint="127.0.0.1:4318"),
    )


class BatchConfig(_Strict):
    """The span export queue (span_batches); unset values come from OTEL_BSP_*."""

    send_batch_size: int | None = Field(None, gt=0)
    timeout: Duration | None = None
    max_queue_size: int | None = Field(None, gt=0)


@dataclass(frozen=True)
class BatchSettings:
    """How spans wait for their exporter, as the SDK's BatchSpanProcessor has it
    (and its defaults)."""

    max_queue_size: int = 2048
    schedule_delay_s: float = 5.0
    max_export_batch_size: int = 512


def span_batching(config: Config, env: dict[str, str]) -> BatchSettings:
    """The batch processor's settings where the traces pipeline lists one, else
    OTEL_BSP_SCHEDULE_DELAY (ms), OTEL_BSP_MAX_QUEUE_SIZE and
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE, else the defaults. A value that is not a
    positive whole number is a ConfigError naming where it came from (the SDK
    logged a traceback and went on with its default)."""
    batch = config.processors.get("batch") if "batch" in config.traces.processors else None
    assert batch is None or isinstance(batch, BatchConfig)
    default = BatchSettings()

    def from_env(variable: str, fallback: int) -> int:
        text = env.get(variable, "").strip()
        if not text:
            return fallback
        value = decimal(text)
        if not value:
            raise ConfigError(f"{variable}: expected a positive whole number, got {text!r}")
        return value

    if batch is not None and batch.timeout is not None:  # a Duration: above zero
        delay_s = batch.timeout
    else:
        delay_s = from_env("OTEL_BSP_SCHEDULE_DELAY", int(default.schedule_delay_s * 1000)) / 1000
    queue = (batch.max_queue_size if batch else None) or from_env(
        "OTEL_BSP_MAX_QUEUE_SIZE", default.max_queue_size
    )
    size = (batch.send_batch_size if batch else None) or from_env(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default.max_export_batch_size
    )
    if size > queue:
        raise ConfigError(
            f"the export batch size ({size}) is larger than the export queue ({queue}): "
            "set processors.batch.send_batch_size or OTEL_BSP_MAX_EXPORT_BATCH_SIZE lower, "
            "or the queue (max_queue_size, OTEL_BSP_MAX_QUEUE_SIZE) higher"
        )
    return BatchSettings(queue, delay_s, size)


DEFAULT_LIMIT_PERCENTAGE = 80  # the memory limiter's, of the memory the collector may use
DEFAULT_SPIKE_PERCENTAGE = 20


class MemoryLimiterConfig(_Strict):
    """As the Collector's memory_limiter: a limit on the collector's resident
    memory, in MiB or as a percentage of what it may use (its cgroup's limit,
    else the machine's). Above the limit less its spike allowance, apps' OTLP
    requests are answered "retry later" before they are decoded
    (otel_ebpf/memory_limit.py). Neither limit given: 80 % and 20 %."""

    # How often a request's admission reads the resident memory again. The
    # Collector has no default (1 s is its advice); a read costs microseconds
    # here, and a burst of large requests fills a second.
    check_interval: Duration = 0.1
    limit_mib: int | None = Field(default=None, gt=0)
    spike_limit_mib: int | None = Field(default=None, gt=0)  # default: a fifth of limit_mib
    limit_percentage: int | None = Field(default=None, gt=0, le=100)
    spike_limit_percentage: int | None = Field(default=None, gt=0, le=100)

    @model_validator(mode="after")
    def _one_kind(self) -> MemoryLimiterConfig:
        if self.limit_mib is not None and self.limit_percentage is not None:
            raise ValueError("set limit_mib or limit_percentage, not both")
        if self.limit_mib is not None:
            if self.spike_limit_percentage is not None:
                raise ValueError("with limit_mib, give the spike as spike_limit_mib")
            if self.spike_limit_mib is not None and self.spike_limit_mib >= self.limit_mib:
                raise ValueError("spike_limit_mib must be smaller than limit_mib")
        else:
            if self.spike_limit_mib is not None:
                raise ValueError("spike_limit_mib goes with limit_mib")
            limit = self.limit_percentage or DEFAULT_LIMIT_PERCENTAGE
            if (self.spike_limit_percentage or 0) >= limit:
                raise ValueError("spike_limit_percentage must be smaller than limit_percentage")
        return self


class CorrelateConfig(_Strict):
    """Merging of SDK spans (OTLP in) with eBPF spans of the same requests."""

    hold: Duration = 10.0  # longer than the SDKs' batch delay (5 s by default)
    keep_duplicates: bool = False  # keep eBPF spans the SDK also made, as its children


def exporter_url(v: str, scheme_required: bool = True) -> str:
    """An OTLP endpoint: http(s)://host[:port][/path], or host:port for gRPC; empty
    (an unset `${env:...}`) leaves it to the OTEL_EXPORTER_OTLP_* variables."""
    if not v:
        return v
    if "://" not in v and not scheme_required:
        return _host_port(v)
    try:
        url = urlsplit(v)
        url.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        raise ValueError(f"{v!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        form = "http(s)://host:port" + ("" if scheme_required else " or host:port")
        raise ValueError(f"{v!r} is not a URL of the form {form}")
    return v


GrpcEndpoint = Annotated[str, AfterValidator(partial(exporter_url, scheme_required=False))]
HttpEndpoint = Annotated[str, AfterValidator(exporter_url)]


class OtlpExporterConfig(_Strict):
    """Unset values come from OTEL_EXPORTER_OTLP_* as in any SDK (checked at start too)."""

    endpoint: GrpcEndpoint | None = None
    headers: dict[str, str] | None = None
    compression: Literal["gzip", "none"] | None = None
    timeout: Duration | None = None
    insecure: bool | None = None  # gRPC only


class OtlpHttpExporterConfig(OtlpExporterConfig):
    endpoint: HttpEndpoint | None = None


class DebugExporterConfig(_Strict):
    verbosity: Literal["basic", "normal", "detailed"] = "normal"


class FileExporterConfig(_Strict):
    path: str


class PprofExporterConfig(_Strict):
    directory: str  # one gzipped pprof file per profile interval
    max_files: int = Field(default=360, ge=1)  # the oldest go first


class PyroscopeExporterConfig(_Strict):
    endpoint: HttpEndpoint  # a Pyroscope-compatible server: POST {endpoint}/ingest
    headers: dict[str, str] | None = None
    timeout: Duration = 10.0


class PrometheusExporterConfig(_Strict):
    endpoint: str = "127.0.0.1:9464"  # the scrape endpoint (host:port)


class ProfilingReceiverConfig(_Strict):
    """On-CPU profiling (a `profiles` pipeline): samples per CPU-second, how often
    a profile is exported, and whether samples carry the span they were taken under."""

    frequency: int = Field(default=49, ge=1, le=999)
    interval: Annotated[float, BeforeValidator(_duration_seconds), Field(ge=1, le=600)] = 10.0
    span_tie_in: bool = True
    off_cpu: bool = False  # blocked time by stack too (a probe on every context switch)


RECEIVER_TYPES: dict[str, type[_Strict]] = {
    "ebpf": EbpfReceiverConfig,
    "otlp": OtlpReceiverConfig,
    "profiling": ProfilingReceiverConfig,
}

PROCESSOR_TYPES: dict[str, type[_Strict]] = {
    "batch": BatchConfig,
    "correlate": CorrelateConfig,
    "memory_limiter": MemoryLimiterConfig,
}

EXPORTER_TYPES: dict[str, type[_Strict]] = {
    "otlp": OtlpExporterConfig,
    "otlphttp": OtlpHttpExporterConfig,
    "debug": DebugExporterConfig,
    "file": FileExporterConfig,
    "prometheus": PrometheusExporterConfig,
    "pprof": PprofExporterConfig,
    "pyroscope": PyroscopeExporterConfig,
}
TRACES_ONLY = frozenset({"file"})
METRICS_ONLY = frozenset({"prometheus"})
PROFILES_ONLY = frozenset({"pprof", "pyroscope"})
PROFILE_EXPORTERS = frozenset({"otlp", "debug"}) | PROFILES_ONLY  # OTLP profiles: gRPC only
SIGNAL_RECEIVERS = {
    "traces": frozenset({"ebpf", "otlp"}),
    "metrics": frozenset({"ebpf"}),
    "profiles": frozenset({"profiling"}),
}


class HealthCheckConfig(EndpointConfig):
    endpoint: Annotated[str, AfterValidator(_host_port)] = "127.0.0.1:13133"


class PipelineConfig(_Strict):
    receivers: list[str]
    processors: list[str] = []
    exporters: list[str]


class ServiceConfig(_Strict):
    extensions: list[str] = []
    pipelines: dict[Literal["traces", "metrics", "profiles"], PipelineConfig]


def _settings(v: Any) -> Any:
    if v is not None and not isinstance(v, dict):
        raise ValueError("must be a mapping of settings (or empty, for the defaults)")
    return v


# A component's settings until its own model types them (in `load`): a mapping,
# or empty (`debug:` means "with defaults").
Body = Annotated[Any, AfterValidator(_settings)]


class Config(_Strict):
    receivers: dict[Literal["ebpf", "otlp", "profiling"], Body] = {"ebpf": {}}
    processors: dict[Literal["batch", "correlate", "memory_limiter"], Body] = {}
    exporters: dict[str, Body]
    extensions: dict[Literal["health_check"], HealthCheckConfig] = {}
    service: ServiceConfig

    @model_validator(mode="after")
    def _references(self) -> Config:
        if not self.service.pipelines:
            raise ValueError("service.pipelines: define a traces, metrics or profiles pipeline")
        for name, pipe in self.service.pipelines.items():
            where = f"service.pipelines.{name}"
            for item in pipe.exporters:
                kind = item.split("/", 1)[0]
                if (
                    (name == "profiles" and kind not in PROFILE_EXPORTERS)
                    or (name != "profiles" and kind in PROFILES_ONLY)
                    or (name == "traces" and kind in METRICS_ONLY)
                    or (name == "metrics" and kind in TRACES_ONLY)
                ):
                    raise ValueError(f"{where}.exporters: {item!r} cannot export {name}")
            for item in pipe.receivers:
                if item in self.receivers and item not in SIGNAL_RECEIVERS[name]:
                    raise ValueError(f"{where}.receivers: {item!r} does not receive {name}")
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
    def memory_limiter(self) -> MemoryLimiterConfig | None:
        if "memory_limiter" not in self.traces.processors:
            return None
        m = self.processors.get("memory_limiter")
        return m if isinstance(m, MemoryLimiterConfig) else MemoryLimiterConfig()

    @property
    def otlp(self) -> OtlpReceiverConfig | None:
        if "otlp" not in self.traces.receivers:
            return None
        r = self.receivers.get("otlp")
        return r if isinstance(r, OtlpReceiverConfig) else None

    @property
    def profiling(self) -> ProfilingReceiverConfig | None:
        """The profiling receiver's settings, when a profiles pipeline uses it."""
        pipe = self.service.pipelines.get("profiles")
        if pipe is None or "profiling" not in pipe.receivers:
            return None
        r = self.receivers.get("profiling")
        return r if isinstance(r, ProfilingReceiverConfig) else ProfilingReceiverConfig()

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
    msg = {
        "extra_forbidden": "unknown key",
        "dict_type": "must be a mapping (name: settings)",
        "model_type": "must be a mapping (name: settings)",
    }.get(err["type"], err["msg"])
    msg = msg.removeprefix("Value error, ")
    return f"{path}: {msg}" if path else msg


_ENV_REF = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(text: str, env: dict[str, str]) -> str:
    return _ENV_REF.sub(lambda m: env.get(m.group(1), ""), text)


def default_document(env: dict[str, str]) -> dict[str, Any]:
    """The embedded default: console output unless an OTLP endpoint is configured."""
    wanted = _names(env, "OTEL_TRACES_EXPORTER")
    if not wanted:
        has_endpoint = any(
            env.get(k)
            for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        wanted = ["otlp"] if has_endpoint else ["console"]
    exporters: dict[str, Any] = {}
    traces = []
    for name in wanted:
        if name == "otlp":
            traces.append(_otlp_exporter(env, "TRACES"))
        elif name == "console":
            traces.append("debug")
        elif name != "none":
            raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}")
    exporters.update((name, {}) for name in traces)
    # Metrics default to OTLP where traces go there, and (the specification's
    # default) where traces go nowhere: that is a metrics-only collector.
    otlp_traces = any(n in ("otlp", "otlphttp") for n in traces)
    metrics_wanted = _names(env, "OTEL_METRICS_EXPORTER") or (
        ["otlp"] if otlp_traces or wanted == ["none"] else []
    )
    metrics = _default_metrics(env, metrics_wanted, exporters)
    doc = document(exporters, otlp={}, metrics=metrics, traces=traces)
    profiles = _default_profiles(env, exporters)
    if profiles:
        doc["receivers"]["profiling"] = {}
        doc["service"]["pipelines"]["profiles"] = {
            "receivers": ["profiling"],
            "exporters": profiles,
        }
    return doc


def _default_profiles(env: dict[str, str], exporters: dict[str, Any]) -> list[str]:
    """Profile exporters per OTEL_EBPF_PROFILE_EXPORTER (added to `exporters`);
    none by default: profiling is opt-in."""
    names = []
    for name in _names(env, "OTEL_EBPF_PROFILE_EXPORTER"):
        if name == "otlp":  # gRPC: OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT, else _ENDPOINT
            exporters["otlp/profiles"] = {}
            names.append("otlp/profiles")
        elif name == "pprof":
            directory = env.get("OTEL_EBPF_PROFILE_PPROF_DIR", "/var/lib/otel-ebpf/profiles")
            exporters["pprof"] = {"directory": directory}
            names.append("pprof")
        elif name == "pyroscope":
            endpoint = env.get("OTEL_EBPF_PROFILE_PYROSCOPE_ENDPOINT", "")
            if not endpoint:
                raise ConfigError(
                    "OTEL_EBPF_PROFILE_EXPORTER=pyroscope: set "
                    "OTEL_EBPF_PROFILE_PYROSCOPE_ENDPOINT (e.g. http://127.0.0.1:4040)"
                )
            exporters["pyroscope"] = {"endpoint": endpoint}
            names.append("pyroscope")
        elif name == "console":
            exporters.setdefault("debug", {})
            names.append("debug")
        elif name != "none":
            raise ConfigError(f"OTEL_EBPF_PROFILE_EXPORTER: unknown exporter {name!r}")
    return names


def _names(env: dict[str, str], variable: str) -> list[str]:
    return [e.strip() for e in env.get(variable, "").split(",") if e.strip()]


def _otlp_exporter(env: dict[str, str], signal: str) -> str:
    """`otlp` (gRPC) or `otlphttp`, as OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL or
    OTEL_EXPORTER_OTLP_PROTOCOL say (http/protobuf by default, as the SDK's)."""
    variable = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    if variable not in env:
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = env.get(variable, "http/protobuf")
    if protocol == "grpc":
        return "otlp"
    if protocol == "http/protobuf":
        return "otlphttp"
    raise ConfigError(f"{variable}: {protocol!r} is not supported (use grpc or http/protobuf)")


def _default_metrics(
    env: dict[str, str], wanted: list[str], exporters: dict[str, Any]
) -> list[str]:
    """Metric exporters per OTEL_METRICS_EXPORTER (added to `exporters`)."""
    names = []
    for name in wanted:
        if name == "otlp":
            exporter = _otlp_exporter(env, "METRICS")
            exporters.setdefault(exporter, {})
            names.append(exporter)
        elif name == "prometheus":
            host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
            port = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")
            if ":" in host and not host.startswith("["):  # IPv6: bracketed, as in a URL
                host = f"[{host}]"
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
    """A traces pipeline: ebpf (and otlp, when given) -> memory_limiter -> correlate
    -> batch -> the exporters named in `traces` (by default all that export
    spans); a metrics pipeline to the exporters named in `metrics`, if any."""
    receivers: dict[str, Any] = {"ebpf": {}} if otlp is None else {"ebpf": {}, "otlp": otlp}
    pipelines: dict[str, Any] = {
        "traces": {
            "receivers": list(receivers),
            "processors": ["memory_limiter", "correlate", "batch"],
            "exporters": (
                traces
                if traces is not None
                else [
                    k for k in exporters if k.split("/", 1)[0] not in METRICS_ONLY | PROFILES_ONLY
                ]
            ),
        }
    }
    if metrics:
        pipelines["metrics"] = {"receivers": ["ebpf"], "exporters": metrics}
    return {
        "receivers": receivers,
        "processors": {"memory_limiter": {}, "correlate": {}, "batch": batch or {}},
        "exporters": exporters,
        "extensions": {"health_check": health or {}},
        "service": {"extensions": ["health_check"], "pipelines": pipelines},
    }


class _Overlay:
    """A document built from variables, remembering which variable set which key."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}
        self.sources: dict[str, str] = {}  # dotted key path -> variable

    def put(self, path: tuple[str, ...], value: Any, variable: str) -> None:
        node = self.doc
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        self.sources[".".join(path)] = variable


_EBPF = ("receivers", "ebpf")
_EBPF_VARIABLES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    # variable, key path under receivers.ebpf, comma-separated list
    ("OTEL_EBPF_OPEN_PORT", ("open_ports",), False),
    ("OTEL_EBPF_CAPTURE_BYTES", ("capture_bytes",), False),
    ("OTEL_EBPF_RING_BUFFER_PAGES", ("ring_buffer_pages",), False),
    ("OTEL_EBPF_MODE", ("mode",), False),
    ("OTEL_EBPF_GO_GOROUTINES", ("go_goroutines",), False),
    ("OTEL_EBPF_PYTHON_ASYNCIO", ("python_asyncio",), False),
    ("OTEL_EBPF_NODE_CALLBACKS", ("node_callbacks",), False),
    ("OTEL_EBPF_PROGRAM_CACHE", ("program_cache",), False),
    ("OTEL_EBPF_NICE", ("nice",), False),
    ("OTEL_EBPF_CPUS", ("cpus",), False),
    ("OTEL_EBPF_AUTO_TARGET_EXE", ("include", "executables"), True),
    ("OTEL_EBPF_EXCLUDE_EXE", ("exclude", "executables"), True),
    ("OTEL_EBPF_TARGET_PIDS", ("include", "pids"), True),
    ("OTEL_EBPF_EXCLUDE_PIDS", ("exclude", "pids"), True),
    ("OTEL_EBPF_REDACT_QUERY_KEYS", ("redaction", "query_keys"), True),
    ("OTEL_EBPF_SIDECAR_NETNS", ("sidecar", "network_namespace"), False),
    ("OTEL_EBPF_SIDECAR_CGROUP", ("sidecar", "cgroup"), False),
    ("OTEL_EBPF_KUBE_METADATA_ENABLE", ("kubernetes", "metadata"), False),
    ("OTEL_EBPF_KUBE_API", ("kubernetes", "api"), False),
    ("OTEL_EBPF_KUBE_NODE_NAME", ("kubernetes", "node_name"), False),
    ("OTEL_EBPF_DNS_TIMEOUT", ("protocols", "dns_timeout"), False),
    ("OTEL_EBPF_DB_QUERY_TEXT", ("protocols", "db_query_text"), False),
    ("OTEL_EBPF_SPAN_BUDGET", ("span_budget", "cpu_per_1k_requests"), False),
    ("OTEL_EBPF_SPAN_BUDGET_MIN_CPU", ("span_budget", "min_cpu"), False),
    ("OTEL_EBPF_SPAN_BUDGET_MAX_CPU", ("span_budget", "max_cpu"), False),
    ("OTEL_EBPF_SPAN_PROBABILITY", ("span_budget", "probability"), False),
    ("OTEL_EBPF_SPAN_KEEP_SLOWER_THAN", ("span_budget", "keep_slower_than"), False),
    (
        "OTEL_EBPF_PROCESS_COMMAND_LINE",
        ("resource_attributes", "process.command_line", "enabled"),
        False,
    ),
    (
        "OTEL_EBPF_PROCESS_COMMAND_ARGS",
        ("resource_attributes", "process.command_args", "enabled"),
        False,
    ),
)


def _env_overlay(env: dict[str, str]) -> _Overlay:
    """OTEL_EBPF_* variables as a document to lay over the file's (names from
    OpenTelemetry eBPF Instrumentation where it has the concept). Values stay
    strings: the schema types them like any other."""
    overlay = _Overlay()
    for name, path, is_list in _EBPF_VARIABLES:
        if name in env:
            value: Any = env[name]
            if is_list:
                value = [v.strip() for v in value.split(",") if v.strip()]
            overlay.put((*_EBPF, *path), value, name)
    if "OTEL_EBPF_PROTOCOL_PORTS" in env:  # "5433=postgresql,6380=redis"
        text = env["OTEL_EBPF_PROTOCOL_PORTS"]
        pairs = [p.partition("=") for p in text.split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError(
                f"OTEL_EBPF_PROTOCOL_PORTS: expected port=protocol pairs, got {text!r}"
            )
        ports = {port.strip(): name.strip() for port, _, name in pairs}
        overlay.put((*_EBPF, "protocols", "ports"), ports, "OTEL_EBPF_PROTOCOL_PORTS")
    for name, key in (
        ("OTEL_EBPF_PROFILE_FREQUENCY", "frequency"),
        ("OTEL_EBPF_PROFILE_INTERVAL", "interval"),
        ("OTEL_EBPF_PROFILE_SPAN_TIE_IN", "span_tie_in"),
        ("OTEL_EBPF_PROFILE_OFF_CPU", "off_cpu"),
    ):
        if name in env:
            overlay.put(("receivers", "profiling", key), env[name], name)
    if "OTEL_EBPF_HEALTH_ENDPOINT" in env:
        overlay.put(
            ("extensions", "health_check", "endpoint"),
            env["OTEL_EBPF_HEALTH_ENDPOINT"],
            "OTEL_EBPF_HEALTH_ENDPOINT",
        )
    return overlay


def _merge(doc: dict[str, Any], overlay: dict[str, Any]) -> None:
    """Lay `overlay` over `doc`, mapping into mapping. Where the file has something
    else (a list, a number) the file stays as written and the schema says what is
    wrong with it."""
    for key, value in overlay.items():
        if not isinstance(value, dict):
            doc[key] = value
            continue
        if doc.get(key) is None:
            doc[key] = {}
        if isinstance(doc[key], dict):
            _merge(doc[key], value)


def _validated(model: type[_Strict], body: Any, where: str) -> Any:
    try:
        return model.model_validate(body or {})
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, where)) from None


def _read(path: str | Path, env: dict[str, str]) -> dict[str, Any]:
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        doc = yaml.safe_load(_expand(text, env)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return doc


_ENDPOINT_VARIABLES = {
    "traces": ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    "metrics": ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    "profiles": ("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
}


def _check_endpoint_variables(config: Config, env: dict[str, str]) -> None:
    """An OTLP exporter without an endpoint takes the SDK's variables: check them now,
    not at the first failed export."""
    for signal, pipe in config.service.pipelines.items():
        for key in pipe.exporters:
            cfg = config.exporters[key]
            if not isinstance(cfg, OtlpExporterConfig) or cfg.endpoint is not None:
                continue
            name = next((n for n in _ENDPOINT_VARIABLES[signal] if env.get(n)), None)
            if name is not None:
                try:
                    exporter_url(env[name], scheme_required=key.startswith("otlphttp"))
                except ValueError as exc:
                    raise ConfigError(f"{name} (for exporters.{key}): {exc}") from None


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read, expand, override and validate; raises ConfigError with the key path
    (and the variable, where one set the value).

    Every value, from the file or a variable, is typed by the models above: the
    document's shape first (sections are mappings), then each component's body.
    """
    env = dict(os.environ) if env is None else env
    doc = default_document(env) if path is None else _read(path, env)
    overlay = _env_overlay(env)
    extensions = doc.get("extensions")
    if not isinstance(extensions, dict) or "health_check" not in extensions:
        overlay.doc.pop("extensions", None)  # the variable moves a health check, adds none
    _merge(doc, overlay.doc)
    try:
        return _load(doc, env)
    except ConfigError as exc:
        message = str(exc)
        for where, name in overlay.sources.items():
            if message.startswith(where):
                raise ConfigError(f"{name}={env[name]!r}: {message}") from None
        raise


def _load(doc: dict[str, Any], env: dict[str, str]) -> Config:
    try:
        config = Config.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from None
    receivers = {
        name: _validated(RECEIVER_TYPES[name], body, f"receivers.{name}")
        for name, body in config.receivers.items()
    }
    processors = {
        name: _validated(PROCESSOR_TYPES[name], body, f"processors.{name}")
        for name, body in config.processors.items()
    }
    exporters: dict[str, Any] = {}
    for key, body in config.exporters.items():
        kind = key.split("/", 1)[0]
        model = EXPORTER_TYPES.get(kind)
        if model is None:
            known = ", ".join(EXPORTER_TYPES)
            raise ConfigError(f"exporters.{key}: unknown exporter type {kind!r} (known: {known})")
        exporters[key] = _validated(model, body, f"exporters.{key}")
    config = config.model_copy(
        update={"receivers": receivers, "processors": processors, "exporters": exporters}
    )
    _check_endpoint_variables(config, env)
    span_batching(config, env)  # its variables too fail now, not once spans flow
    return config
