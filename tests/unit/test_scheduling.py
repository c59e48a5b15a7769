"""The collector's CPUs: the kernel's CPU list format, read strictly."""

from __future__ import annotations

import pytest

from otel_ebpf.config import ConfigError, load
from otel_ebpf.scheduling import format_cpu_list, parse_cpu_list


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
