"""Configuration: defaults, env overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_ebpf import config
from otel_ebpf.config import ConfigError, load

VALID = """
receivers:
  ebpf: {capture_bytes: 2048, open_ports: "80,8000-8999"}
processors:
  batch: {timeout: 200ms, send_batch_size: 256}
exporters:
  otlp/jaeger: {endpoint: "${env:JAEGER}", insecure: true, timeout: 5s}
  debug: {verbosity: basic}
extensions:
  health_check: {endpoint: "127.0.0.1:9999"}
service:
  extensions: [health_check]
  pipelines:
    traces: {receivers: [ebpf], processors: [batch], exporters: [otlp/jaeger, debug]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_embedded_default_prints_to_console() -> None:
    cfg = load(env={})
    assert list(cfg.exporters) == ["debug"]
    assert cfg.health is not None and cfg.health.endpoint == "127.0.0.1:13133"
    assert cfg.ebpf.capture_bytes == 1024


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, ["otlphttp"]),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ["otlp"],
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"}, ["otlphttp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlphttp", "debug"]),
        ({"OTEL_TRACES_EXPORTER": "none"}, ["otlphttp"]),  # metrics only
    ],
)
def test_default_follows_standard_env(env: dict[str, str], exporters: list[str]) -> None:
    assert list(load(env=env).exporters) == exporters


@pytest.mark.parametrize(
    ("env", "traces", "metrics"),
    [
        # no spans exported, metrics to OTLP (the specification's default)
        ({"OTEL_TRACES_EXPORTER": "none"}, [], ["otlphttp"]),
        (
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            [],
            ["otlp"],
        ),
        # metrics over the protocol asked for, without sending spans there too
        (
            {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ["debug"],
            ["otlp"],
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
            },
            ["otlp"],
            ["otlphttp"],
        ),
        ({"OTEL_METRICS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "none"}, [], []),
    ],
)
def test_default_pipelines_per_signal(
    env: dict[str, str], traces: list[str], metrics: list[str]
) -> None:
    pipelines = load(env=env).service.pipelines
    assert pipelines["traces"].exporters == traces
    assert (pipelines["metrics"].exporters if "metrics" in pipelines else []) == metrics


@pytest.mark.parametrize(
    ("host", "endpoint"),
    [("127.0.0.1", "127.0.0.1:9464"), ("::1", "[::1]:9464"), ("[::]", "[::]:9464")],
)
def test_the_prometheus_endpoint_from_its_variables(host: str, endpoint: str) -> None:
    env = {"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_HOST": host}
    assert load(env=env).exporters["prometheus"].endpoint == endpoint


def test_unsupported_metrics_protocol_names_its_variable() -> None:
    env = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"}
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/json'"):
        load(env=env)


def test_file_with_env_expansion(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, VALID), env={"JAEGER": "jaeger:4317"})
    assert cfg.exporters["otlp/jaeger"].endpoint == "jaeger:4317"
    assert cfg.exporters["otlp/jaeger"].timeout == 5.0
    assert cfg.processors["batch"].timeout == pytest.approx(0.2)
    assert cfg.ebpf.capture_bytes == 2048


def test_ebpf_env_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "OTEL_EBPF_OPEN_PORT": "443",
        "OTEL_EBPF_AUTO_TARGET_EXE": "nginx*, python*",
        "OTEL_EBPF_EXCLUDE_PIDS": "1,2",
        "OTEL_EBPF_CAPTURE_BYTES": "512",
        "OTEL_EBPF_RING_BUFFER_PAGES": "64",
        "OTEL_EBPF_HEALTH_ENDPOINT": "0.0.0.0:1234",
    }
    cfg = load(write(tmp_path, VALID), env=env)
    assert cfg.ebpf.open_ports == "443"
    assert cfg.ebpf.include.executables == ["nginx*", "python*"]
    assert cfg.ebpf.exclude.pids == [1, 2]
    assert cfg.ebpf.capture_bytes == 512
    assert cfg.ebpf.ring_buffer_pages == 64
    assert cfg.health is not None and cfg.health.endpoint == "0.0.0.0:1234"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            VALID.replace("capture_bytes: 2048", "capture_byte: 2048"),
            "receivers.ebpf.capture_byte: unknown key",
        ),
        (
            VALID.replace("capture_bytes: 2048", "capture_bytes: 1000"),
            "receivers.ebpf.capture_bytes: must be a power of two from 64 to 4096",
        ),
        (
            VALID.replace('"80,8000-8999"', '"80,9000-8000"'),
            "receivers.ebpf.open_ports: bad port range '9000-8000'",
        ),
        (
            VALID.replace("timeout: 5s", "timeout: soon"),
            "exporters.otlp/jaeger.timeout: not a duration: 'soon' (use e.g. 200ms, 5s, 1m)",
        ),
        (
            VALID.replace("verbosity: basic", "verbosity: loud"),
            "exporters.debug.verbosity: Input should be 'basic', 'normal' or 'detailed'",
        ),
        (
            VALID.replace("exporters: [otlp/jaeger, debug]", "exporters: [zipkin]"),
            "service.pipelines.traces.exporters: 'zipkin' is not defined under exporters",
        ),
        (
            VALID.replace("otlp/jaeger: {", "zipkin: {").replace(
                "[otlp/jaeger, debug]", "[zipkin]"
            ),
            "exporters.zipkin: unknown exporter type 'zipkin' (known: otlp, otlphttp, debug, file, prometheus, pprof, pyroscope)",
        ),
        (
            VALID.replace('"127.0.0.1:9999"', '"nowhere"'),
            "extensions.health_check.endpoint: must be host:port",
        ),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("receivers: [\n", "not valid YAML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text), env={"JAEGER": "j:4317"})
    assert message in str(err.value)


def test_metrics_only_needs_no_traces_pipeline(tmp_path: Path) -> None:
    text = VALID.replace(
        "traces: {receivers: [ebpf], processors: [batch], exporters: [otlp/jaeger, debug]}",
        "metrics: {receivers: [ebpf], exporters: [otlp/jaeger]}",
    )
    cfg = load(write(tmp_path, text), env={"JAEGER": "j:4317"})
    assert cfg.traces.exporters == [] and cfg.correlate is None
    none = VALID.replace(
        "traces: {receivers: [ebpf], processors: [batch], exporters: [otlp/jaeger, debug]}", "{}"
    )
    with pytest.raises(ConfigError, match="define a traces, metrics or profiles pipeline"):
        load(write(tmp_path, none), env={"JAEGER": "j:4317"})


def test_bad_env_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="OTEL_EBPF_EXCLUDE_PIDS"):
        load(env={"OTEL_EBPF_EXCLUDE_PIDS": "one"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        load(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load("/nonexistent/config.yaml", env={})


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "deploy" / "examples" / "config.yaml"
    cfg = load(example, env={"OTLP_GRPC_ENDPOINT": "collector:4317"})
    assert cfg.exporters["otlp"].endpoint == "collector:4317"
    profiling = example.with_name("profiling.yaml")
    env = {"OTLP_GRPC_ENDPOINT": "collector:4317", "PYROSCOPE_URL": "http://pyroscope:4040"}
    cfg = load(profiling, env=env)
    assert cfg.profiling is not None and cfg.profiling.frequency == 49
    assert cfg.service.pipelines["profiles"].exporters == ["otlp", "pprof", "pyroscope"]


def test_hardening_options_from_the_file_and_the_variables(tmp_path: Path) -> None:
    text = VALID.replace(
        "receivers:\n",
        "receivers:\n  otlp: {protocols: {http: {endpoint: '127.0.0.1:4318',"
        " max_request_body_size: 4096}, grpc: {endpoint: '127.0.0.1:4317',"
        " max_recv_msg_size_mib: 2}}}\n",
        1,
    )
    cfg = load(write(tmp_path, text), env={"JAEGER": "j:4317"})
    otlp = cfg.receivers["otlp"]
    assert otlp.protocols.http.max_request_body_size == 4096
    assert otlp.protocols.grpc.max_recv_msg_size_mib == 2
    assert not cfg.ebpf.resource_attributes.command_line.enabled  # opt-in
    assert "password" in cfg.ebpf.redaction.query_keys
    cfg = load(
        env={
            "OTEL_EBPF_PROCESS_COMMAND_LINE": "true",
            "OTEL_EBPF_REDACT_QUERY_KEYS": "ticket, otp",
        }
    )
    assert cfg.ebpf.resource_attributes.command_line.enabled
    assert cfg.ebpf.redaction.query_keys == ["ticket", "otp"]


def test_a_bad_variable_is_named_in_the_error() -> None:
    with pytest.raises(ConfigError, match=r"^OTEL_EBPF_CAPTURE_BYTES='100': receivers\.ebpf"):
        load(env={"OTEL_EBPF_CAPTURE_BYTES": "100"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        load(env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://[::1"})


def test_the_span_budget_from_variables_and_its_bad_values() -> None:
    default = load(env={}).ebpf.span_budget
    assert (default.cpu_per_1k_requests, default.min_cpu, default.probability) == (0.05, 0.1, None)
    assert default.max_cpu is None  # the node's share (span_budget.default_max_cpu)
    assert load(env={}).ebpf.nice == 19 and load(env={"OTEL_EBPF_NICE": "0"}).ebpf.nice == 0
    with pytest.raises(ConfigError, match="OTEL_EBPF_NICE"):
        load(env={"OTEL_EBPF_NICE": "20"})
    assert load(env={"OTEL_EBPF_SPAN_BUDGET_MAX_CPU": "2"}).ebpf.span_budget.max_cpu == 2.0
    env = {"OTEL_EBPF_SPAN_BUDGET": "0", "OTEL_EBPF_SPAN_PROBABILITY": "0.25"}
    budget = load(env=env).ebpf.span_budget
    assert (budget.cpu_per_1k_requests, budget.probability) == (0.0, 0.25)
    for name, bad in (
        ("OTEL_EBPF_SPAN_BUDGET", "-1"),
        ("OTEL_EBPF_SPAN_BUDGET", "lots"),
        ("OTEL_EBPF_SPAN_PROBABILITY", "0"),
        ("OTEL_EBPF_SPAN_PROBABILITY", "1.5"),
        ("OTEL_EBPF_SPAN_BUDGET_MIN_CPU", "0"),
        ("OTEL_EBPF_SPAN_BUDGET_MAX_CPU", "0"),
    ):
        with pytest.raises(ConfigError, match=name):
            load(env={name: bad})
    with pytest.raises(ConfigError, match=r"min_cpu 1\.0 is above max_cpu 0\.5"):
        load(env={"OTEL_EBPF_SPAN_BUDGET_MIN_CPU": "1", "OTEL_EBPF_SPAN_BUDGET_MAX_CPU": "0.5"})


def test_span_batching_from_the_yaml_then_otel_bsp_then_the_defaults(tmp_path: Path) -> None:
    bsp = {
        "OTEL_BSP_SCHEDULE_DELAY": "250",
        "OTEL_BSP_MAX_QUEUE_SIZE": "300",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100",
    }
    assert config.span_batching(load(env={}), {}) == config.BatchSettings(2048, 5.0, 512)
    assert config.span_batching(load(env=bsp), bsp) == config.BatchSettings(300, 0.25, 100)
    env = {**bsp, "JAEGER": "http://j:4317"}
    # the file's batch processor: its timeout and batch size; the queue from the variable
    assert config.span_batching(load(write(tmp_path, VALID), env), env) == config.BatchSettings(
        300, 0.2, 256
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "lots"}, "OTEL_BSP_MAX_QUEUE_SIZE: expected a positive"),
        ({"OTEL_BSP_SCHEDULE_DELAY": "0"}, "OTEL_BSP_SCHEDULE_DELAY: expected a positive"),
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "-5"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: expected"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "100"}, "the export batch size (512) is larger than the"),
    ],
)
def test_bad_span_batching_fails_at_load_naming_its_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(env=env)
    assert str(err.value).startswith(message)
