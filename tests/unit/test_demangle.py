"""C++ and Rust names made readable by binutils' c++filt, in its own process;
what does not look mangled (or would break the line-by-line pipe) never goes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from otel_ebpf.model import Frame, StackCount
from otel_ebpf.processors.profiling.demangle import Demangler, looks_mangled
from otel_ebpf.processors.profiling.elf import read_symbols
from otel_ebpf.processors.profiling.symbolize import Symbolizer
from otel_ebpf.profiling import ProfileAssembler, top_functions

APP = "/usr/bin/app"
ALPHA = "_ZN6shares5alphaEi"  # shares::alpha(int)


def test_a_binarys_cpp_symbol_reads_as_its_source_named_it(tmp_path: Path) -> None:
    src = tmp_path / "f.c"
    src.write_text(  # a C function under the name a C++ compiler would give it
        f'__attribute__((noinline)) int alpha(int x) __asm__("{ALPHA}");\n'
        "int alpha(int x) { return x * 3; }\n"
        "int main(void) { return alpha(2); }\n"
    )
    binary = tmp_path / "f"
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(src)], check=True)
    nm = subprocess.run(["nm", str(binary)], capture_output=True, text=True).stdout
    at = next(int(line.split()[0], 16) for line in nm.splitlines() if line.endswith(ALPHA))
    with open(binary, "rb") as f:
        name = read_symbols(f).name(at)
    assert name == ALPHA
    assert Demangler().readable([name, "main"]) == {ALPHA: "shares::alpha(int)"}


def test_the_assembler_shows_readable_names_and_asks_once_per_name() -> None:
    class FakeSymbols(Symbolizer):
        def frames(
            self, pid: int, user: tuple[int, ...], kernel: tuple[int, ...]
        ) -> tuple[Frame, ...]:
            return (Frame(ALPHA, APP), Frame("main", APP))

    class Counting(Demangler):
        runs: list[list[str]] = []

        def _run(self, names: list[str]) -> list[str]:
            self.runs.append(names)
            return super()._run(names)

    demangler = Counting()
    a = ProfileAssembler(10, symbolizer=FakeSymbols(), demangler=demangler)
    for _ in range(2):
        a.add([StackCount(5, "app", (1,), (), 3)])
        w = a.flush()
        assert [f.function for f in w.stacks[0].frames] == ["shares::alpha(int)", "main"]
    assert top_functions(w.stacks, 1) == [("shares::alpha(int)", APP, 1.0)]
    assert demangler.runs == [[ALPHA]]


def test_names_that_could_break_the_pipe_or_are_not_mangled_stay_as_they_are() -> None:
    hostile = [f"{ALPHA}\n_ZN1x1yEv", "_Z" + "N" * 5000, "main", "_Z", "_Zé", ""]
    assert not any(looks_mangled(n) for n in hostile)
    assert Demangler().readable(hostile) == {}
    # Rust v0; and what c++filt cannot read comes back as it went
    shown = Demangler().readable(["_RNvCs1234_7mycrate3foo", "_Zgarbage"])
    assert shown == {"_RNvCs1234_7mycrate3foo": "mycrate[3c1c0]::foo", "_Zgarbage": "_Zgarbage"}


def test_without_a_working_cplusfilt_names_stay_mangled(tmp_path: Path) -> None:
    assert Demangler(tool=str(tmp_path / "missing")).readable([ALPHA]) == {ALPHA: ALPHA}
    assert Demangler(tool="/bin/false").readable([ALPHA]) == {ALPHA: ALPHA}
    crashing = tmp_path / "crash"
    crashing.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    assert Demangler(tool=str(crashing)).readable([ALPHA]) == {ALPHA: ALPHA}
