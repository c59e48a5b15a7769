"""CPU profiles, pure logic: the parsers of what names addresses (hostile input
all), symbols, the encoders (pprof, OTLP, SVG), aggregation and the span tie-in."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import xml.dom.minidom
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_ebpf import config
from otel_ebpf.model import (
    Endpoint,
    Frame,
    HttpHead,
    ProfiledStack,
    ProfileWindow,
    Role,
    StackCount,
)
from otel_ebpf.processors.correlate import Correlator
from otel_ebpf.processors.profiling import flamegraph, pprof
from otel_ebpf.processors.profiling.elf import read_info, read_symbols
from otel_ebpf.processors.profiling.otlp import build_request
from otel_ebpf.processors.profiling.sources import parse_kallsyms, parse_maps, parse_perf_map
from otel_ebpf.processors.profiling.symbolize import (
    JIT,
    KERNEL,
    UNKNOWN,
    UNNAMED_JIT,
    Symbolizer,
    jit_name,
)
from otel_ebpf.profile_exporters import PprofDirectoryExporter, pyroscope_name
from otel_ebpf.profiling import ProfileAssembler, SpanTies, top_functions
from otel_ebpf.receivers.otlp_body import Rejected
from otel_ebpf.receivers.profiler import CpuProfiler, stack_slots

MAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 fe:00 123 /usr/bin/app
55d0c0001000-55d0c0005000 r-xp 00001000 fe:00 123 /usr/bin/app
7f0000000000-7f0000100000 rwxp 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
garbage line
"""


def test_maps_perf_maps_and_kallsyms_parse() -> None:
    maps = parse_maps(MAPS)
    assert [(m.path, m.executable) for m in maps] == [
        ("/usr/bin/app", False),
        ("/usr/bin/app", True),
        ("", True),
        ("[stack]", False),
    ]
    jit = parse_perf_map(
        b"7f0000001000 40 JS:*handler /app.js:3:1\nzz 1 bad\n7f0000001000 20 newer\n"
    )
    assert jit.name(0x7F0000001010) == "newer" and jit.name(0x7F0000001030) is None
    kernel = parse_kallsyms("ffffffff81000000 T _stext\nffffffff81000100 t do_thing [mod]\n0 D x\n")
    assert kernel.name(0xFFFFFFFF81000050) == "_stext"
    assert kernel.name(0xFFFFFFFF81000180) == "do_thing [mod]"


def test_kallsyms_hidden_addresses_name_nothing() -> None:
    assert len(parse_kallsyms("0000000000000000 T _stext\n0000000000000000 T x\n")) == 0


def test_v8_tiers_are_one_function() -> None:
    for tier in "~^+*":
        assert jit_name(f"JS:{tier}burn /a.js:1:2") == "burn /a.js:1:2"
    assert jit_name("LazyCompile:*old /b.js:3") == "old /b.js:3"
    assert jit_name("Builtin:ArrayMap") == "Builtin:ArrayMap"


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_hostile_perf_maps_and_maps_never_raise(data: bytes) -> None:
    names = parse_perf_map(data)
    names.name(0x1000)
    parse_maps(data.decode(errors="replace"))
    parse_kallsyms(data.decode(errors="replace"))


@settings(max_examples=100)
@given(st.binary(max_size=4096))
def test_hostile_elf_files_give_no_symbols_and_no_exception(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("elf") / "x"
    path.write_bytes(b"\x7fELF\x02\x01\x01" + data)
    with open(path, "rb") as f:
        read_info(f)
        read_symbols(f).name(0x1000)


def test_a_real_binary_names_its_functions(tmp_path: Path) -> None:
    src = tmp_path / "f.c"
    src.write_text(
        "__attribute__((noinline)) int alpha(int x) { return x * 3; }\n"
        "int main(void) { return alpha(2); }\n"
    )
    binary = tmp_path / "f"
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(src)], check=True)
    nm = subprocess.run(["nm", str(binary)], capture_output=True, text=True).stdout
    alpha = next(int(line.split()[0], 16) for line in nm.splitlines() if line.endswith(" alpha"))
    with open(binary, "rb") as f:
        info, symbols = read_info(f), read_symbols(f)
    assert info is not None and info.loads and len(info.build_id) == 40
    assert symbols.name(alpha) == "alpha" and symbols.name(alpha + 2) == "alpha"


def test_a_stripped_binary_is_named_from_its_debug_file(tmp_path: Path) -> None:
    """As Debian ships them: the binary stripped, its symbols in a separate file
    found through the debug link (here beside it, in .debug/), in the process's root."""
    root = tmp_path / "proc" / "42" / "root"
    (root / "app" / ".debug").mkdir(parents=True)
    src = tmp_path / "f.c"
    src.write_text(
        "__attribute__((noinline)) int alpha(int x) { return x * 3; }\n"
        "int main(void) { return alpha(2); }\n"
    )
    binary, debug = root / "app" / "f", root / "app" / ".debug" / "f.debug"
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(src)], check=True)
    nm = subprocess.run(["nm", str(binary)], capture_output=True, text=True).stdout
    alpha = next(int(line.split()[0], 16) for line in nm.splitlines() if line.endswith(" alpha"))
    subprocess.run(["objcopy", "--only-keep-debug", str(binary), str(debug)], check=True)
    subprocess.run(["strip", "--strip-all", str(binary)], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", str(binary)], check=True)
    with open(binary, "rb") as f:
        info = read_info(f)
        assert info is not None and not info.has_symtab and info.debuglink == "f.debug"
        assert read_symbols(f).name(alpha) is None  # stripped
    # mapped at 0x400000 from file offset 0: the address is the link-time one
    # plus 0x400000 minus the first segment's address (0 for a PIE)
    base = 0x400000
    maps = f"{base:x}-{base + 0x100000:x} r-xp 00000000 fe:00 7 /app/f\n"
    proc = fake_proc(tmp_path / "proc", 42, maps)
    frames = Symbolizer(proc=str(proc)).frames(42, (base + alpha,), ())
    assert frames == (Frame("alpha", "/app/f"),)


def fake_proc(root: Path, pid: int, maps: str, perf_map: bytes = b"", kallsyms: str = "") -> Path:
    (root / str(pid) / "root" / "tmp").mkdir(parents=True, exist_ok=True)
    (root / str(pid) / "maps").write_text(maps)
    (root / str(pid) / "status").write_text(f"Name:\tapp\nNSpid:\t{pid}\t7\n")
    if perf_map:
        (root / str(pid) / "root" / "tmp" / "perf-7.map").write_bytes(perf_map)
    (root / "kallsyms").write_text(kallsyms)
    return root


def test_symbolizer_names_kernel_jit_and_unknown_frames(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        42,
        MAPS,
        b"7f0000001000 40 JS:*handler /app.js:3:1\n",
        "ffffffff81000000 T entry_SYSCALL_64\nffffffff81000400 T vfs_write\n",
    )
    s = Symbolizer(proc=str(proc))
    frames = s.frames(42, (0x7F0000001004, 0x7F0000900000, 0x7F0000050000), (0xFFFFFFFF81000410,))
    assert frames == (
        Frame("vfs_write", KERNEL),
        Frame("handler /app.js:3:1", JIT),  # the leaf's own address
        Frame(UNKNOWN, UNKNOWN),  # outside every mapping
        Frame(UNNAMED_JIT, JIT),  # code in anonymous memory the perf map does not name
    )
    # a process gone before the read: unnamed frames, no exception
    assert s.frames(43, (0x1234,), ()) == (Frame(UNKNOWN, UNKNOWN),)


def test_the_vdso_is_named_from_its_image_in_memory() -> None:
    """clock_gettime in the vDSO (no file on disk): read from a process's memory."""
    maps = parse_maps(Path("/proc/self/maps").read_text())
    vdso = next(m for m in maps if m.path == "[vdso]")
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(vdso.start)
        image = io.BytesIO(mem.read(vdso.end - vdso.start))
    info, symbols = read_info(image), read_symbols(image)
    assert info is not None
    at = next(s for s, _, n in symbols._entries() if n.endswith("clock_gettime"))
    load = next(ld for ld in info.loads if ld.vaddr <= at < ld.vaddr + ld.size)
    ip = vdso.start + (at - load.vaddr + load.offset) + 1
    (frame,) = Symbolizer().frames(os.getpid(), (ip,), ())
    assert frame.module == "[vdso]" and frame.function in ("clock_gettime", "__vdso_clock_gettime")
    # a process whose memory cannot be read: an unnamed vDSO frame
    assert Symbolizer(proc="/nonexistent").frames(1, (ip,), ()) == (Frame(UNKNOWN, UNKNOWN),)


@settings(max_examples=100)
@given(
    maps=st.text(max_size=600),
    perf=st.binary(max_size=600),
    user=st.lists(st.integers(0, 2**64 - 1), max_size=8),
    kernel=st.lists(st.integers(0, 2**64 - 1), max_size=4),
)
def test_symbolizer_survives_any_proc_content(
    tmp_path_factory: pytest.TempPathFactory,
    maps: str,
    perf: bytes,
    user: list[int],
    kernel: list[int],
) -> None:
    proc = fake_proc(tmp_path_factory.mktemp("proc"), 9, maps, perf, maps)
    frames = Symbolizer(proc=str(proc)).frames(9, tuple(user), tuple(kernel))
    assert len(frames) == len(user) + len(kernel)


def window(
    stacks: list[ProfiledStack], resources: dict[int, dict[str, object]] | None = None
) -> ProfileWindow:
    return ProfileWindow(1_000, 2_001_000, 10_101_010, stacks, resources or {}, 0)


APP = Frame("main", "/usr/bin/app")
WORK = Frame("work", "/usr/bin/app")
WRITE = Frame("vfs_write", KERNEL)


def test_pprof_round_trip_keeps_stacks_values_and_labels() -> None:
    w = window(
        [
            ProfiledStack(7, "app", (WORK, APP), 5),
            ProfiledStack(7, "app", (WRITE, APP), 2, 0xAB, 0xCD),
        ],
        {7: {"service.name": "shop", "container.id": "c1", "process.pid": 7}},
    )
    data = pprof.encode(w)
    assert data[:2] == b"\x1f\x8b"
    p = pprof.decode(data)
    st_ = p.string_table
    assert st_[p.mapping[0].filename] == "/usr/bin/app"  # the program first, as pprof reads it
    functions = {f.id: st_[f.name] for f in p.function}
    locations = {loc.id: functions[loc.line[0].function_id] for loc in p.location}
    got = [([locations[i] for i in s.location_id], list(s.value)) for s in p.sample]
    assert got == [
        (["work", "main"], [5, 5 * w.period_ns]),
        (["vfs_write", "main"], [2, 2 * w.period_ns]),
    ]
    labels = {st_[lb.key]: (st_[lb.str] if lb.str else lb.num) for lb in p.sample[1].label}
    assert labels["service.name"] == "shop" and labels["container.id"] == "c1"
    assert labels["process.pid"] == 7 and labels["thread.name"] == "app"
    assert labels["trace_id"] == f"{0xAB:032x}" and labels["span_id"] == f"{0xCD:016x}"
    assert p.period == w.period_ns and p.duration_nanos == 2_000_000


def test_pprof_decode_caps_what_it_inflates() -> None:
    bomb = gzip.compress(b"\0" * (2 << 20))
    with pytest.raises(Rejected):
        pprof.decode(bomb, max_bytes=1 << 20)


def test_otlp_profiles_share_one_dictionary_with_zero_entries_first() -> None:
    w = window(
        [ProfiledStack(7, "app", (WORK, APP), 5, 0xAB, 0xCD), ProfiledStack(8, "db", (APP,), 1)],
        {7: {"service.name": "shop"}, 8: {"service.name": "db"}},
    )
    r = build_request(w)
    d = r.dictionary
    assert d.string_table[0] == "" and not d.stack_table[0].location_indices
    assert not d.link_table[0].trace_id
    services = [rp.resource.attributes[0].value.string_value for rp in r.resource_profiles]
    assert services == ["shop", "db"]
    sample = r.resource_profiles[0].scope_profiles[0].profiles[0].samples[0]
    assert d.link_table[sample.link_index].trace_id == (0xAB).to_bytes(16, "big")
    names = [
        d.string_table[d.function_table[d.location_table[i].lines[0].function_index].name_strindex]
        for i in d.stack_table[sample.stack_index].location_indices
    ]
    assert names == ["work", "main"] and list(sample.values) == [5 * w.period_ns]


def test_flame_graph_escapes_hostile_names() -> None:
    evil = Frame('<script>alert("x")</script>&', JIT)
    svg = flamegraph.render(
        [ProfiledStack(1, "a<b", (evil, APP), 10), ProfiledStack(1, "a<b", (APP,), 5)], "t&"
    )
    doc = xml.dom.minidom.parseString(svg)  # well-formed: nothing got out of its element
    assert not doc.getElementsByTagName("script")
    assert "&lt;script&gt;" in svg and "(15 samples)" in svg


def test_assembler_sums_and_ties_samples_to_spans_registered_later() -> None:
    ties = SpanTies()
    frames = {(1,): (WORK, APP), (2,): (APP,)}

    class FakeSymbols(Symbolizer):
        def frames(
            self, pid: int, user: tuple[int, ...], kernel: tuple[int, ...]
        ) -> tuple[Frame, ...]:
            return frames.get(user, ())

    a = ProfileAssembler(
        10,
        symbolizer=FakeSymbols(),
        resource_of=lambda pid, comm: {"service.name": comm},
        ties=ties,
        include=lambda pid, comm: comm != "skip",
    )
    a.add(
        [
            StackCount(5, "web", (1,), (), 3),
            StackCount(5, "web", (1,), (), 2),
            StackCount(5, "web", (2,), (), 4, tid=50, request=777),
            StackCount(6, "skip", (1,), (), 9),
            StackCount(5, "web", (3,), (), 1),
        ],
        lost=2,
    )
    ties.add(50, 777, 0xAAA, 0xBBB)  # the request's span is built after the read
    w = a.flush(end_ns=123)
    got = sorted((s.frames, s.samples, s.trace_id, s.span_id) for s in w.stacks)
    assert got == sorted(
        [
            ((WORK, APP), 5, 0, 0),
            ((APP,), 4, 0xAAA, 0xBBB),
            ((Frame("[no stack]", UNKNOWN),), 1, 0, 0),
        ]
    )
    assert set(w.resources) == {5} and w.samples_lost == 2
    assert top_functions(w.stacks, 1) == [("work", "/usr/bin/app", 0.5)]
    assert a.flush().stacks == []  # the next window starts empty


def test_span_ties_are_bounded() -> None:
    ties = SpanTies(capacity=2)
    for i in range(3):
        ties.add(1, i, i + 10, i + 20)
    assert ties.get(1, 0) is None and ties.get(1, 2) == (12, 22)


def _head(ts: int) -> HttpHead:
    return HttpHead(True, "GET", "/", 0, "1.1", {}, ts, False, 0)


def test_only_a_request_alone_on_its_thread_is_tied() -> None:
    ties: list[tuple[int, int]] = []
    c = Correlator(moves_requests={9}.__contains__)
    c.tie_span = lambda tid, start, trace, span: ties.append((tid, start))
    ends = (Endpoint("10.0.0.2", 80), Endpoint("10.0.0.1", 1))
    alone = c.started(Role.SERVER, _head(10), 5, 50, *ends, False)
    c.finished(alone)
    loop_a = c.started(Role.SERVER, _head(20), 5, 51, *ends, False)
    loop_b = c.started(Role.SERVER, _head(21), 5, 51, *ends, False)  # an event loop
    c.finished(loop_a)
    c.finished(loop_b)
    go = c.started(Role.SERVER, _head(30), 9, 90, *ends, False)  # requests move threads
    c.finished(go)
    assert ties == [(50, 10)]


def test_pprof_directory_keeps_the_newest_files(tmp_path: Path) -> None:
    e = PprofDirectoryExporter("pprof", str(tmp_path / "p"), max_files=2)
    for start in (1, 2, 3):
        w = ProfileWindow(
            start * 10**9, start * 10**9 + 1, 1, [ProfiledStack(1, "a", (APP,), 1)], {}, 0
        )
        assert e.export(w)
    files = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert len(files) == 2 and files[0].startswith("cpu-19700101T000002Z")
    assert oct(os.stat(tmp_path / "p").st_mode & 0o777) == "0o700"


def test_pyroscope_names_cannot_break_the_label_syntax() -> None:
    assert pyroscope_name("shop web", {"hostname": "n1", "container_id": "a,b}{=c", "x": ""}) == (
        "shop_web{container_id=a_b___c,hostname=n1}"
    )


def test_profiles_pipeline_config_and_variables(tmp_path: Path) -> None:
    cfg = config.load(
        env={
            "OTEL_EBPF_PROFILE_EXPORTER": "pprof,console",
            "OTEL_EBPF_PROFILE_PPROF_DIR": str(tmp_path),
            "OTEL_EBPF_PROFILE_FREQUENCY": "99",
            "OTEL_EBPF_PROFILE_INTERVAL": "30s",
        }
    )
    assert cfg.profiling is not None and (cfg.profiling.frequency, cfg.profiling.interval) == (
        99,
        30,
    )
    assert cfg.service.pipelines["profiles"].exporters == ["pprof", "debug"]
    assert "pprof" not in cfg.traces.exporters
    assert config.load(env={}).profiling is None  # opt-in
    with pytest.raises(config.ConfigError, match="OTEL_EBPF_PROFILE_PYROSCOPE_ENDPOINT"):
        config.load(env={"OTEL_EBPF_PROFILE_EXPORTER": "pyroscope"})
    with pytest.raises(config.ConfigError, match="OTEL_EBPF_PROFILE_FREQUENCY='5000'"):
        config.load(
            env={"OTEL_EBPF_PROFILE_EXPORTER": "console", "OTEL_EBPF_PROFILE_FREQUENCY": "5000"}
        )


@pytest.mark.parametrize(
    ("pipelines", "error"),
    [
        ("traces: {receivers: [ebpf], exporters: [pprof]}", "'pprof' cannot export traces"),
        ("profiles: {receivers: [profiling], exporters: [file]}", "'file' cannot export profiles"),
        ("profiles: {receivers: [ebpf], exporters: [pprof]}", "'ebpf' does not receive profiles"),
        (
            "traces: {receivers: [profiling], exporters: [file]}",
            "'profiling' does not receive traces",
        ),
    ],
)
def test_profiles_pipeline_errors_name_the_key(tmp_path: Path, pipelines: str, error: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "receivers: {ebpf: {}, profiling: {}}\n"
        f"exporters: {{pprof: {{directory: {tmp_path}}}, file: {{path: {tmp_path}/s}}}}\n"
        f"service:\n  pipelines:\n    {pipelines}\n"
    )
    with pytest.raises(config.ConfigError, match=error):
        config.load(path, env={})


SLEEP = Frame("do_nanosleep", KERNEL)
NAP = Frame("nap", "/usr/bin/app")


def test_off_cpu_time_is_a_third_value_and_a_second_otlp_profile() -> None:
    w = window(
        [
            ProfiledStack(7, "app", (WORK, APP), 5),
            ProfiledStack(7, "app", (SLEEP, NAP, APP), 0, off_cpu_ns=3_000_000),
        ],
        {7: {"service.name": "shop"}},
    )._replace(off_cpu=True)
    p = pprof.decode(pprof.encode(w))
    assert [p.string_table[t.type] for t in p.sample_type] == ["samples", "cpu", "off_cpu"]
    assert p.string_table[p.default_sample_type] == "cpu"
    assert [list(s.value) for s in p.sample] == [[5, 5 * w.period_ns, 0], [0, 0, 3_000_000]]
    profiles = build_request(w).resource_profiles[0].scope_profiles[0].profiles
    d = build_request(w).dictionary
    kinds = [d.string_table[pr.sample_type.type_strindex] for pr in profiles]
    assert kinds == ["cpu", "off_cpu"]
    assert [list(s.values) for s in profiles[1].samples] == [[3_000_000]]
    # where it blocked: the first frame above the kernel's scheduler
    assert top_functions(w.stacks, 3, off_cpu=True) == [("nap", "/usr/bin/app", 1.0)]
    svg = flamegraph.render(w.stacks, "off", off_cpu=True)
    assert "nap" in svg and "work" not in svg and "(3 ms blocked)" in svg


def test_assembler_sums_blocked_time_beside_samples() -> None:
    class FakeSymbols(Symbolizer):
        def frames(
            self, pid: int, user: tuple[int, ...], kernel: tuple[int, ...]
        ) -> tuple[Frame, ...]:
            return (NAP, APP)

    a = ProfileAssembler(10, symbolizer=FakeSymbols(), off_cpu=True)
    a.add([StackCount(5, "w", (1,), (), 2), StackCount(5, "w", (1,), (), 0, off_cpu_ns=7)])
    a.add([StackCount(5, "w", (1,), (), 0, off_cpu_ns=8)])
    w = a.flush()
    assert w.off_cpu and [(s.samples, s.off_cpu_ns) for s in w.stacks] == [(2, 15)]


def test_off_cpu_is_opt_in() -> None:
    env = {"OTEL_EBPF_PROFILE_EXPORTER": "console"}
    assert config.load(env=env).profiling.off_cpu is False  # type: ignore[union-attr]
    on = config.load(env={**env, "OTEL_EBPF_PROFILE_OFF_CPU": "true"})
    assert on.profiling is not None and on.profiling.off_cpu


def test_console_line_names_the_busiest_and_the_blocking(caplog: pytest.LogCaptureFixture) -> None:
    from otel_ebpf.profile_exporters import LogProfileExporter

    blocked_only = window(
        [ProfiledStack(1, "a", (SLEEP, NAP), 0, off_cpu_ns=2_000_000_000)], {1: {}}
    )
    with caplog.at_level("INFO"):
        assert LogProfileExporter("debug").export(blocked_only._replace(off_cpu=True))
    assert "0 samples in 1 processes; top: -; 2.0 s blocked, in: nap 100.0%" in caplog.text


def test_stack_map_room_is_a_power_of_two() -> None:
    """The kernel rounds a stack map up to one: an id past the room asked for
    would read as a spilled stack's."""
    assert stack_slots(499, 0.5, 2) == 2048  # the floor
    assert stack_slots(99, 10.0, 64) == 32768  # the ceiling
    CpuProfiler(stacks=8)
    with pytest.raises(ValueError, match="power of two"):
        CpuProfiler(stacks=100)
