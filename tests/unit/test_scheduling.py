"""The collector's CPUs: the kernel's CPU list format, read strictly; its
threads' names, where the kernel shows them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from otel_ebpf import scheduling
from otel_ebpf.config import ConfigError, load
from otel_ebpf.scheduling import format_cpu_list, name_threads, parse_cpu_list


def test_a_cpu_list_names_cpus_and_ranges() -> None:
    assert parse_cpu_list("1") == {1}
    assert parse_cpu_list("0-2, 5,7-7") == {0, 1, 2, 5, 7}
    assert format_cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


@pytest.mark.parametrize("bad", ["", ",", "a", "1-", "3-1", "-1", "4096", "0x1", "1 2"])
def test_a_bad_cpu_list_is_refused_with_what_was_wrong(bad: str) -> None:
    with pytest.raises(ValueError, match="bad CPU list"):
        parse_cpu_list(bad)


def test_cpus_from_the_variable_and_a_bad_one_named() -> None:
    assert load(env={}).ebpf.cpus == ""  # wherever the kernel puts it
    assert load(env={"OTEL_EBPF_CPUS": "1,3"}).ebpf.cpus == "1,3"
    with pytest.raises(ConfigError, match=r"OTEL_EBPF_CPUS='1-x'.*bad CPU list"):
        load(env={"OTEL_EBPF_CPUS": "1-x"})


def test_threads_take_their_names_where_the_kernel_shows_them() -> None:
    stop = threading.Event()
    started = [
        threading.Thread(target=stop.wait, name=name, daemon=True)
        for name in ("span-export", "a-name-longer-than-the-kernel-keeps")
    ]
    for thread in started:
        thread.start()
    try:
        name_threads()
        shown = [
            Path(f"/proc/self/task/{thread.native_id}/comm").read_text().rstrip("\n")
            for thread in started
        ]
        assert shown == ["span-export", "a-name-longer-t"]
        main = threading.main_thread().native_id
        assert Path(f"/proc/self/task/{main}/comm").read_text() != "MainThread\n"
    finally:
        stop.set()


def test_an_ended_thread_is_forgotten_so_the_record_stays_bounded() -> None:
    """Threads come and go (a request's thread in an HTTP server): only the
    live ones are remembered as named."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="short-lived")
    thread.start()
    name_threads()
    assert scheduling._named[thread.native_id] is thread
    release.set()
    thread.join()
    name_threads()
    assert scheduling._named.get(thread.native_id) is not thread


def test_a_thread_on_an_ended_threads_id_is_named_too() -> None:
    """Thread ids come round again (pid_max may be 32,768)."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="second-owner")
    thread.start()
    try:
        scheduling._named[thread.native_id] = threading.Thread()  # the id's first owner
        name_threads()
        comm = Path(f"/proc/self/task/{thread.native_id}/comm").read_text()
        assert comm == "second-owner\n"
    finally:
        release.set()
        thread.join()
