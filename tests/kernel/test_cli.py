"""The command line as users meet it: doctor, version, health, and clear failures."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from harness import OTEL_EBPF, CollectorProcess, free_port, health, wait_until
from otel_ebpf.scheduling import format_cpu_list


def test_doctor_reports_every_capability() -> None:
    result = subprocess.run([OTEL_EBPF, "doctor"], capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for line in (
        "OK    privileges",
        "OK    bpf() syscall",
        "OK    BPF ring buffer",
        "OK    may_goto loops",
        "OK    task storage",
        "OK    tracefs",
        "OK    tracepoint sock/sock_send_length",
        "OK    tracepoint sock/inet_sock_set_state",
        "OK    tracepoint syscalls/sys_enter_recvmsg",
        "OK    perf events",
        "OK    bcc",
        "OK    socket receiver",
        "OK    counted in the kernel",
        "OK    asyncio task context",  # Debian's python3.11, with python3.11-dbg
        "OK    program cache",
    ):
        assert any(row.startswith(line) for row in out.splitlines()), f"missing {line!r} in:\n{out}"
    (counted,) = [row for row in out.splitlines() if row.startswith("OK    counted in the kernel")]
    assert "HTTP/1 requests, Redis commands" in counted  # every counting program loaded
    (tls,) = [row for row in out.splitlines() if row.startswith("OK    TLS: OpenSSL")]
    assert "libssl.so.3 (reads and writes probed on instructions the kernel emulates)" in tls
    for name in (
        "uprobes",
        "kprobes",
        "fentry/fexit",
        "kernel headers",
        "BTF",
        "lockdown",
        "kernel",
    ):
        assert any(name in row for row in out.splitlines()), name
    assert out.strip().splitlines()[-1].startswith("summary: 0 failed")


def test_version() -> None:
    out = subprocess.run([OTEL_EBPF, "version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("otel-ebpf ") and "semantic conventions 1.27.0" in out


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    nobody = pwd.getpwnam("nobody")
    setpriv = shutil.which("setpriv")
    assert setpriv, "util-linux setpriv is installed by scripts/setup.sh"
    return subprocess.run(
        [
            setpriv,
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            "--inh-caps=-all",
            OTEL_EBPF,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_doctor_as_non_root_reports_instead_of_raising() -> None:
    result = as_nobody("doctor")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr == ""
    out = result.stdout.splitlines()
    assert any(row.startswith("FAIL  privileges") for row in out), result.stdout
    assert any(row.startswith("FAIL  tracefs") and "run as root" in row for row in out)
    # libbpf's helper probe says yes where nothing may load: not taken for one
    assert any(row.startswith("INFO  task storage") and "no privilege" in row for row in out)
    assert out[-1].startswith("summary: ") and "cannot run" in out[-1]


def test_run_as_non_root_fails_in_one_sentence() -> None:
    result = as_nobody("run")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("otel-ebpf: ") and "needs root" in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "receivers: {ebpf: {capture_bytes: 1000}}\nexporters: {debug: {}}\n"
        "service: {pipelines: {traces: {receivers: [ebpf], exporters: [debug]}}}\n"
    )
    result = subprocess.run(
        [OTEL_EBPF, "run", "--config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "otel-ebpf: config error: receivers.ebpf.capture_bytes: must be a power of two from 64 to 4096"
    )


PIPELINE = "service: {pipelines: {traces: {receivers: [ebpf], exporters: [debug]}}}\n"


def test_every_bad_config_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    cases = {
        "receivers: [ebpf]\nexporters: {debug: {}}\n" + PIPELINE: "receivers: must be a mapping",
        "receivers:\nexporters: {debug: {}}\n" + PIPELINE: "receivers: must be a mapping",
        "receivers: {ebpf: {capture_bytes: [1024]}}\nexporters: {debug: {}}\n"
        + PIPELINE: "receivers.ebpf.capture_bytes: Input should be a valid integer",
        "receivers: {ebpf: {capture_bytes: null}}\nexporters: {debug: {}}\n"
        + PIPELINE: "receivers.ebpf.capture_bytes: Input should be a valid integer",
        "receivers: {ebpf: {}}\nexporters: {otlphttp: {endpoint: this is not a url}}\n"
        + PIPELINE.replace("[debug]", "[otlphttp]"): "exporters.otlphttp.endpoint: 'this is",
        "receivers: {ebpf: {}}\nexporters: {otlp: {endpoint: '::::x'}}\n"
        + PIPELINE.replace("[debug]", "[otlp]"): "exporters.otlp.endpoint: must be host:port",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        result = subprocess.run(
            [OTEL_EBPF, "run", "--config", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 2, (text, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("otel-ebpf: config error: "), result.stderr
        assert message in lines[0], (text, lines[0])
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"receivers: {ebpf: {}}\n\xff\xfe\n")
    result = subprocess.run(
        [OTEL_EBPF, "run", "--config", str(binary)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "not UTF-8 text (byte 0xff" in result.stderr
    result = subprocess.run(
        [OTEL_EBPF, "run"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": "this is not a url"},
    )
    assert result.returncode == 2, result.stderr
    assert (
        "OTEL_EXPORTER_OTLP_ENDPOINT (for exporters.otlphttp): 'this is not a url'" in result.stderr
    )


def test_health_is_200_with_counters_once_attached(collector: CollectorProcess) -> None:
    code, body = health(collector.health_port)
    assert code == 200 and body["status"] == "ready"
    assert {"events_received", "events_lost", "spans_built", "spans_dropped"} <= set(
        body["telemetry"]
    )


def thread_files(pid: int, name: str) -> dict[str, str]:
    """/proc/PID/task/TID/`name` of each of a process's threads, by TID; a
    short-lived thread that ended since the listing is left out."""
    texts = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            texts[task.name] = (task / name).read_text()
        except (FileNotFoundError, ProcessLookupError):  # ended since the listing
            continue
    return texts


def test_the_collector_runs_below_the_programs_it_traces(collector: CollectorProcess) -> None:
    """Every thread at nice 19 (OTEL_EBPF_NICE's default), the exporters' too;
    lowered only once the programs are attached (at nice 19 on a node whose
    CPUs were all busy, loading and attaching took minutes, not seconds)."""
    stats = thread_files(collector.proc.pid, "stat")
    for tid, stat in stats.items():
        fields = stat[stat.rindex(")") + 2 :].split()
        assert int(fields[16]) == 19, f"thread {tid}: nice {fields[16]}"
    assert len(stats) > 3  # the main thread and the export threads at least
    log = collector.log_path.read_text()
    attached, lowered = (
        log.find("socket receiver attached"),
        log.find("scheduling priority: nice 19"),
    )
    assert 0 <= attached < lowered, log


def test_the_collector_runs_on_the_cpus_it_is_given(tmp_path: Path) -> None:
    """OTEL_EBPF_CPUS: every thread on those CPUs, the exporters' too; a CPU the
    process may not use is a one-line config error before anything starts."""
    last = max(os.sched_getaffinity(0))
    collector = CollectorProcess(
        tmp_path / "pinned", {"debug": {}}, extra_env={"OTEL_EBPF_CPUS": str(last)}
    )
    try:
        statuses = thread_files(collector.proc.pid, "status")
        for tid, status in statuses.items():
            allowed = next(x for x in status.splitlines() if x.startswith("Cpus_allowed_list:"))
            assert allowed.split()[1] == str(last), f"thread {tid}: {allowed}"
        assert len(statuses) >= 2  # the main thread and those it started
        assert f"CPU affinity: the collector runs on CPUs {last}" in collector.log_path.read_text()
    finally:
        collector.stop()
    config = tmp_path / "config.yaml"
    config.write_text("exporters: {debug: {}}\n" + PIPELINE)
    result = subprocess.run(
        [OTEL_EBPF, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "OTEL_EBPF_CPUS": "4095"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "otel-ebpf: config error: receivers.ebpf.cpus (OTEL_EBPF_CPUS): 4095: not among the"
        f" CPUs this process may use ({format_cpu_list(sorted(os.sched_getaffinity(0)))})"
    )


def test_health_is_503_until_the_probes_are_attached(tmp_path: Path) -> None:
    """The endpoint answers while the program compiles (a second or more) and says 503."""
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"exporters: {{debug: {{}}}}\nextensions: {{health_check: {{endpoint: 127.0.0.1:{port}}}}}\n"
        "service: {extensions: [health_check], pipelines: {traces: {receivers: [ebpf], "
        "exporters: [debug]}}}\n"
    )
    proc = subprocess.Popen(
        [OTEL_EBPF, "run", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: list[int] = []
    try:

        def record() -> bool:
            code = health(port)[0]
            if code and (not seen or seen[-1] != code):
                seen.append(code)
            return code == 200

        wait_until(record, 60, "health 200")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    assert seen[-1] == 200
    assert set(seen) <= {503, 200} and seen == sorted(seen, reverse=True)
