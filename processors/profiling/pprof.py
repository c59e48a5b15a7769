"""pprof's `profile.proto`, gzipped: what `go tool pprof`, Pyroscope and Parca read.

No Python package publishes pprof's generated classes, so the message types are
declared here as a descriptor (field numbers as in google/pprof's profile.proto)
and protobuf builds the classes and does the encoding.
"""

from __future__ import annotations

import gzip
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from otel_ebpf.model import Frame, ProfiledStack, ProfileWindow
from otel_ebpf.receivers.otlp_body import Rejected, decompress

_I64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
_U64 = descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
_STR = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_BOOL = descriptor_pb2.FieldDescriptorProto.TYPE_BOOL
_MSG = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL

# message -> (field, number, type, repeated, message type)
_SCHEMA: dict[str, list[tuple[str, int, int, bool, str]]] = {
    "Profile": [
        ("sample_type", 1, _MSG, True, "ValueType"),
        ("sample", 2, _MSG, True, "Sample"),
        ("mapping", 3, _MSG, True, "Mapping"),
        ("location", 4, _MSG, True, "Location"),
        ("function", 5, _MSG, True, "Function"),
        ("string_table", 6, _STR, True, ""),
        ("drop_frames", 7, _I64, False, ""),
        ("keep_frames", 8, _I64, False, ""),
        ("time_nanos", 9, _I64, False, ""),
        ("duration_nanos", 10, _I64, False, ""),
        ("period_type", 11, _MSG, False, "ValueType"),
        ("period", 12, _I64, False, ""),
        ("comment", 13, _I64, True, ""),
        ("default_sample_type", 14, _I64, False, ""),
    ],
    "ValueType": [("type", 1, _I64, False, ""), ("unit", 2, _I64, False, "")],
    "Sample": [
        ("location_id", 1, _U64, True, ""),
        ("value", 2, _I64, True, ""),
        ("label", 3, _MSG, True, "Label"),
    ],
    "Label": [
        ("key", 1, _I64, False, ""),
        ("str", 2, _I64, False, ""),
        ("num", 3, _I64, False, ""),
        ("num_unit", 4, _I64, False, ""),
    ],
    "Mapping": [
        ("id", 1, _U64, False, ""),
        ("memory_start", 2, _U64, False, ""),
        ("memory_limit", 3, _U64, False, ""),
        ("file_offset", 4, _U64, False, ""),
        ("filename", 5, _I64, False, ""),
        ("build_id", 6, _I64, False, ""),
        ("has_functions", 7, _BOOL, False, ""),
        ("has_filenames", 8, _BOOL, False, ""),
        ("has_line_numbers", 9, _BOOL, False, ""),
        ("has_inline_frames", 10, _BOOL, False, ""),
    ],
    "Location": [
        ("id", 1, _U64, False, ""),
        ("mapping_id", 2, _U64, False, ""),
        ("address", 3, _U64, False, ""),
        ("line", 4, _MSG, True, "Line"),
        ("is_folded", 5, _BOOL, False, ""),
    ],
    "Line": [("function_id", 1, _U64, False, ""), ("line", 2, _I64, False, "")],
    "Function": [
        ("id", 1, _U64, False, ""),
        ("name", 2, _I64, False, ""),
        ("system_name", 3, _I64, False, ""),
        ("filename", 4, _I64, False, ""),
        ("start_line", 5, _I64, False, ""),
    ],
}
_PACKAGE = "otel_ebpf.pprof"  # not pprof's own name: no clash with a generated copy


def _classes() -> dict[str, Any]:
    fd = descriptor_pb2.FileDescriptorProto(
        name="otel_ebpf_pprof_profile.proto", package=_PACKAGE, syntax="proto3"
    )
    for message, fields in _SCHEMA.items():
        m = fd.message_type.add(name=message)
        for name, number, kind, repeated, type_name in fields:
            f = m.field.add(
                name=name,
                number=number,
                type=kind,  # type: ignore[arg-type]
                label=_REPEATED if repeated else _OPTIONAL,  # type: ignore[arg-type]
            )
            if type_name:
                f.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
        for name in _SCHEMA
    }


_MESSAGES = _classes()
Profile: Any = _MESSAGES["Profile"]


class _Strings:
    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, s: str) -> int:
        i = self._index.get(s)
        if i is None:
            i = self._index[s] = len(self.table)
            self.table.append(s)
        return i


# Resource attributes carried as labels on every sample of a process.
LABELED_ATTRIBUTES = (
    "service.name",
    "service.namespace",
    "process.executable.name",
    "container.id",
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.container.name",
    "host.name",
)


def build(window: ProfileWindow, stacks: list[ProfiledStack] | None = None) -> Any:
    """A CPU profile (samples, CPU nanoseconds and, when measured, off-CPU
    nanoseconds) of `stacks` (default: the whole window)."""
    strings = _Strings()
    p = Profile()
    p.sample_type.add(type=strings("samples"), unit=strings("count"))
    p.sample_type.add(type=strings("cpu"), unit=strings("nanoseconds"))
    if window.off_cpu:  # blocked time, the third value (`pprof -sample_index=off_cpu`)
        p.sample_type.add(type=strings("off_cpu"), unit=strings("nanoseconds"))
    p.default_sample_type = strings("cpu")
    p.period_type.type = strings("cpu")
    p.period_type.unit = strings("nanoseconds")
    p.period = window.period_ns
    p.time_nanos = window.start_ns
    p.duration_nanos = max(0, window.end_ns - window.start_ns)
    mappings: dict[str, int] = {}
    locations: dict[Frame, int] = {}
    chosen = window.stacks if stacks is None else stacks
    # pprof takes the first mapping for the profiled program: the busiest binary
    weights: dict[str, int] = {}
    for s in chosen:
        for f in s.frames:
            if not f.module.startswith("["):
                weights[f.module] = weights.get(f.module, 0) + s.samples
                break
    for module in sorted(weights, key=lambda m: -weights[m]):
        mappings[module] = len(mappings) + 1
        p.mapping.add(id=mappings[module], filename=strings(module), has_functions=True)

    def location(frame: Frame) -> int:
        found = locations.get(frame)
        if found is None:
            mapping_id = mappings.get(frame.module)
            if mapping_id is None:
                mapping_id = mappings[frame.module] = len(mappings) + 1
                p.mapping.add(id=mapping_id, filename=strings(frame.module), has_functions=True)
            found = locations[frame] = len(locations) + 1
            p.function.add(id=found, name=strings(frame.function), filename=strings(frame.module))
            p.location.add(id=found, mapping_id=mapping_id).line.add(function_id=found)
        return found

    for s in chosen:
        sample = p.sample.add()
        sample.location_id.extend(location(f) for f in s.frames)
        sample.value.extend((s.samples, s.samples * window.period_ns))
        if window.off_cpu:
            sample.value.append(s.off_cpu_ns)
        attributes = window.resources.get(s.pid, {})
        for key in LABELED_ATTRIBUTES:
            value = attributes.get(key)
            if isinstance(value, str) and value:
                sample.label.add(key=strings(key), str=strings(value))
        sample.label.add(key=strings("process.pid"), num=s.pid)
        sample.label.add(key=strings("thread.name"), str=strings(s.comm))
        if s.trace_id:
            sample.label.add(key=strings("trace_id"), str=strings(f"{s.trace_id:032x}"))
            sample.label.add(key=strings("span_id"), str=strings(f"{s.span_id:016x}"))
    p.string_table.extend(strings.table)
    return p


def encode(window: ProfileWindow, stacks: list[ProfiledStack] | None = None) -> bytes:
    """Gzipped profile.proto bytes, as pprof files and Pyroscope's ingest take them."""
    return gzip.compress(build(window, stacks).SerializeToString(), compresslevel=6)


def decode(data: bytes, max_bytes: int = 64 << 20) -> Any:
    """A profile from (gzipped) bytes, never inflating past `max_bytes`: for tests
    and tools. Raises `Rejected` or protobuf's DecodeError on bad input."""
    if data[:2] == b"\x1f\x8b":
        data = decompress(data, "gzip", max_bytes)
    elif len(data) > max_bytes:
        raise Rejected(413, "profile larger than allowed")
    return Profile.FromString(data)
