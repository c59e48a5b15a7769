"""OTLP profiles (the development signal, `opentelemetry.proto.profiles.v1development`
as opentelemetry-proto 1.45 ships it): one `ResourceProfiles` per process, with
the resource its spans carry, and one dictionary (strings, functions,
locations, stacks, links) shared by the whole request.
"""

from __future__ import annotations

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otel_ebpf import __version__
from otel_ebpf.model import Frame, ProfiledStack, ProfileWindow

PROTO_VERSION = "v1development"
_SCOPE = InstrumentationScope(name="otel-ebpf", version=__version__)


def _any(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list | tuple):
        out = AnyValue()
        out.array_value.values.extend(_any(v) for v in value)
        return out
    return AnyValue(string_value=str(value))


class _Tables:
    """The request's dictionary; every table starts with its zero value."""

    def __init__(self) -> None:
        self.d = pb.ProfilesDictionary()
        self.d.string_table.append("")
        self.d.mapping_table.add()
        self.d.location_table.add()
        self.d.function_table.add()
        self.d.link_table.add()
        self.d.attribute_table.add()
        self.d.stack_table.add()
        self._strings: dict[str, int] = {"": 0}
        self._mappings: dict[str, int] = {}
        self._locations: dict[Frame, int] = {}
        self._stacks: dict[tuple[Frame, ...], int] = {}
        self._links: dict[tuple[int, int], int] = {}
        self._attributes: dict[tuple[str, str], int] = {}

    def string(self, s: str) -> int:
        i = self._strings.get(s)
        if i is None:
            i = self._strings[s] = len(self.d.string_table)
            self.d.string_table.append(s)
        return i

    def location(self, frame: Frame) -> int:
        i = self._locations.get(frame)
        if i is None:
            mapping = self._mappings.get(frame.module)
            if mapping is None:
                mapping = self._mappings[frame.module] = len(self.d.mapping_table)
                self.d.mapping_table.add(filename_strindex=self.string(frame.module))
            function = len(self.d.function_table)
            self.d.function_table.add(
                name_strindex=self.string(frame.function),
                filename_strindex=self.string(frame.module),
            )
            i = self._locations[frame] = len(self.d.location_table)
            self.d.location_table.add(mapping_index=mapping).lines.add(function_index=function)
        return i

    def stack(self, frames: tuple[Frame, ...]) -> int:
        i = self._stacks.get(frames)
        if i is None:
            i = self._stacks[frames] = len(self.d.stack_table)
            self.d.stack_table.add(location_indices=[self.location(f) for f in frames])
        return i

    def link(self, trace_id: int, span_id: int) -> int:
        i = self._links.get((trace_id, span_id))
        if i is None:
            i = self._links[(trace_id, span_id)] = len(self.d.link_table)
            self.d.link_table.add(
                trace_id=trace_id.to_bytes(16, "big"), span_id=span_id.to_bytes(8, "big")
            )
        return i

    def attribute(self, key: str, value: str) -> int:
        i = self._attributes.get((key, value))
        if i is None:
            i = self._attributes[(key, value)] = len(self.d.attribute_table)
            self.d.attribute_table.add(
                key_strindex=self.string(key), value=AnyValue(string_value=value)
            )
        return i


def build_request(window: ProfileWindow) -> ExportProfilesServiceRequest:
    tables = _Tables()
    by_pid: dict[int, list[ProfiledStack]] = {}
    for s in window.stacks:
        by_pid.setdefault(s.pid, []).append(s)
    request = ExportProfilesServiceRequest()
    for pid, stacks in by_pid.items():
        attributes = window.resources.get(pid, {})
        resource = Resource(
            attributes=[KeyValue(key=k, value=_any(v)) for k, v in attributes.items()]
        )
        scope = request.resource_profiles.add(resource=resource).scope_profiles.add(scope=_SCOPE)
        kinds = ("cpu", "off_cpu") if window.off_cpu else ("cpu",)
        for kind in kinds:  # one value per profile in this version: one profile per kind
            profile = scope.profiles.add(
                time_unix_nano=window.start_ns,
                duration_nano=max(0, window.end_ns - window.start_ns),
                period=window.period_ns if kind == "cpu" else 0,
            )
            profile.sample_type.type_strindex = tables.string(kind)
            profile.sample_type.unit_strindex = tables.string("nanoseconds")
            profile.period_type.type_strindex = tables.string("cpu")
            profile.period_type.unit_strindex = tables.string("nanoseconds")
            for s in stacks:
                value = s.samples * window.period_ns if kind == "cpu" else s.off_cpu_ns
                if not value:
                    continue
                sample = profile.samples.add(
                    stack_index=tables.stack(s.frames),
                    values=[value],
                    attribute_indices=[tables.attribute("thread.name", s.comm)],
                )
                if s.trace_id:
                    sample.link_index = tables.link(s.trace_id, s.span_id)
    request.dictionary.CopyFrom(tables.d)
    return request
