"""Finding CPython's asyncio task functions (pure file reading; the kernel tests
run the probes): symbols from the module itself, or from its debug file."""

from __future__ import annotations

import _asyncio
import shutil
import subprocess
import sys
from pathlib import Path

from otel_ebpf.receivers.asyncio_tasks import (
    AsyncioProbes,
    Uprobe,
    is_python,
    probes_of,
    python_minor,
)

MODULE = str(Path(_asyncio.__file__).resolve())


def test_the_python_version_comes_from_the_module_file_name() -> None:
    assert (
        python_minor("/usr/lib/python3.11/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so")
        == 11
    )
    assert python_minor("/opt/py/lib/_asyncio.cpython-313t-x86_64-linux-gnu.so") == 13
    assert python_minor("/usr/lib/python3/dist-packages/_asyncio.so") is None
    assert python_minor("/srv/app/_asyncio_helpers.cpython-311-x86_64-linux-gnu.so") is None


def test_a_python_process_is_known_by_its_interpreter_or_libpython() -> None:
    assert is_python(["/usr/bin/python3.11", "/usr/lib/x86_64-linux-gnu/libc.so.6"])
    assert is_python(["/usr/sbin/uwsgi", "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"])
    assert not is_python(["/usr/sbin/nginx", "/usr/lib/x86_64-linux-gnu/libssl.so.3"])


def test_this_interpreters_asyncio_is_probed_at_its_task_functions() -> None:
    """Debian's module is stripped: the addresses come from python3.11-dbg's
    debug file, found by build-id. The return probe goes on first."""
    probes, why = probes_of(MODULE)
    assert why == ""
    step_return, step, dealloc = probes
    assert step_return == Uprobe(step.address, "py_task_step_return", on_return=True)
    expected = "py_task_step_state" if sys.version_info >= (3, 12) else "py_task_step"
    assert step.program == expected and not step.on_return
    assert dealloc.program == "py_task_dealloc" and dealloc.address != step.address


def test_a_stripped_module_without_its_debug_file_says_what_to_install(tmp_path: Path) -> None:
    """Seen from a container root that has the module but no /usr/lib/debug."""
    copy = tmp_path / MODULE.lstrip("/")
    copy.parent.mkdir(parents=True)
    subprocess.run(["strip", "-o", str(copy), MODULE], check=True)
    probes, why = probes_of(MODULE, root=str(tmp_path))
    assert probes == [] and "debug symbols" in why


def test_an_old_python_is_not_probed(tmp_path: Path) -> None:
    old = tmp_path / "_asyncio.cpython-37m-x86_64-linux-gnu.so"
    shutil.copy(MODULE, old)
    assert probes_of(str(old)) == ([], "not a CPython 3.8+ _asyncio module")


def test_a_process_that_imports_asyncio_late_is_probed_at_the_next_sweep() -> None:
    """Seen first before its import (watched), then probed; its module is
    detached once no probed process maps it."""
    attached: dict[str, list[Uprobe]] = {}
    probes = AsyncioProbes(
        lambda path, p: attached.setdefault(path, p),
        lambda path, p: attached.pop(path),
    )
    script = (
        "import sys, time; print(0, flush=True); sys.stdin.readline(); "
        "import asyncio; print(1, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"0\n"  # running, asyncio not imported
        probes.check(proc.pid)
        assert attached == {} and probes.processes == 0
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"1\n"
        probes.sweep()
        assert probes.processes == 1 and len(attached) == 1
        (held,) = attached
        assert Path(held).resolve() == Path(MODULE)
    finally:
        proc.kill()
        proc.wait()
    probes.sweep()
    assert probes.processes == 0 and attached == {}
