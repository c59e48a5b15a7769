"""OTLP trace encoding written straight to protobuf bytes.

The SDK's encoder builds a protobuf object per span, attribute and value, and
hashes every span's resource (a JSON dump) to group them: 45-60 µs a span on
these machines, the largest single cost of the collector. Here each resource
and scope is encoded once and kept; every attribute a span carries is encoded
once per distinct (key, value) and reused (method, status, peer, route repeat
from request to request), a float as its key's encoding and eight bytes; the
attributes spans share (a connection's repeated request head: BuiltSpan's
`shared_attributes`) are one block, encoded once; a span is then mostly a join
of cached bytes.
The output parses to the same `ExportTraceServiceRequest` as the SDK's
(tests compare the two).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, Status

from otel_ebpf.model import BuiltSpan, FinishedSpan

log = logging.getLogger(__name__)

_MAX_CACHED_ATTRIBUTES: Final = 16384  # distinct (key, value) pairs kept; cleared when full
_MAX_CACHED_KEYS: Final = 1024  # distinct attribute keys kept; all forgotten when full
_MAX_CACHED_RESOURCES: Final = 4096
_MAX_SHARED_BLOCKS: Final = 1024  # BuiltSpan.shared_attributes encoded; cleared when full
_UINT64: Final = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_FLAGS_HAS_IS_REMOTE: Final = 0x100  # SpanFlags: the parent's remoteness is known ...
_FLAGS_IS_REMOTE: Final = 0x200  # ... and it is remote

_pack_fixed64: Final = struct.Struct("<Q").pack
_pack_fixed32: Final = struct.Struct("<I").pack
_pack_double: Final = struct.Struct("<d").pack
# Span.start_time_unix_nano (7) and end_time_unix_nano (8), both fixed64: one call
_pack_times: Final = struct.Struct("<BQBQ").pack
_SMALL_VARINTS: Final = [bytes([n]) for n in range(128)]
# Span.kind's field by the member's identity: an enum's `.value` and hash are
# interpreted calls on this Python, two a span.
_KIND_FIELDS: Final = {id(kind): b"\x30" + _SMALL_VARINTS[kind.value + 1] for kind in SpanKind}


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + _varint(len(payload)) + payload


def _string(tag: bytes, text: str) -> bytes:
    return _field(tag, text.encode("utf-8", "surrogatepass"))


# Tags: (field number << 3) | wire type, as bytes.
_ANY_STRING, _ANY_BOOL, _ANY_INT, _ANY_DOUBLE = b"\x0a", b"\x10", b"\x18", b"\x21"
_ANY_ARRAY, _ANY_KVLIST, _ANY_BYTES = b"\x2a", b"\x32", b"\x3a"
_KV_KEY, _KV_VALUE = b"\x0a", b"\x12"
_LIST_VALUES: Final = b"\x0a"  # ArrayValue.values and KeyValueList.values
_SPAN_ATTRIBUTE: Final = b"\x4a"  # Span.attributes (9)


def _any_value(value: Any) -> bytes:
    """An AnyValue message; the same type rules as the SDK (bool before int)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _ANY_BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _string(_ANY_STRING, value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"integer {value} out of the int64 range")
        return _ANY_INT + _varint(value & _UINT64)
    if isinstance(value, float):
        return _ANY_DOUBLE + _pack_double(value)
    if isinstance(value, bytes):
        return _field(_ANY_BYTES, value)
    if isinstance(value, Sequence):
        return _field(_ANY_ARRAY, b"".join(_field(_LIST_VALUES, _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        entries = b"".join(_field(_LIST_VALUES, _key_value(str(k), v)) for k, v in value.items())
        return _field(_ANY_KVLIST, entries)
    raise TypeError(f"invalid attribute type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return _string(_KV_KEY, key) + _field(_KV_VALUE, _any_value(value))


def _attribute_field(tag: bytes, key: str, value: Any) -> bytes:
    """One KeyValue field; an attribute that cannot be encoded is left out and
    said (b""), as the SDK does, rather than failing the batch."""
    try:
        return _field(tag, _key_value(key, value))
    except (TypeError, ValueError) as exc:
        log.warning("attribute %s not exported: %s", key, exc)
        return b""


def _attribute_fields(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    return b"".join(_attribute_field(tag, key, value) for key, value in attributes.items())


def _resource_fields(resource: Resource) -> bytes:
    """ResourceSpans' resource and schema_url fields."""
    encoded = _field(b"\x0a", _attribute_fields(b"\x0a", resource.attributes))
    if resource.schema_url:
        encoded += _string(b"\x1a", resource.schema_url)
    return encoded


def _status_field(status: Status) -> bytes:
    """Span.status (always present, as the SDK writes it)."""
    body = _string(b"\x12", status.description) if status.description else b""
    if status.status_code.value:
        body += b"\x18" + _SMALL_VARINTS[status.status_code.value]
    return _field(b"\x7a", body)


def _scope_fields(scope: InstrumentationScope | None) -> bytes:
    """ScopeSpans' scope and schema_url fields (an empty scope where there is none)."""
    if scope is None:
        return _field(b"\x0a", b"")
    body = _string(b"\x0a", scope.name) if scope.name else b""
    if scope.version:
        body += _string(b"\x12", scope.version)
    body += _attribute_fields(b"\x1a", scope.attributes)
    schema_url = _string(b"\x1a", scope.schema_url) if scope.schema_url else b""
    return _field(b"\x0a", body) + schema_url


_T = TypeVar("_T")


def _by_identity(
    table: dict[int, tuple[Any, bytes]],
    obj: _T,
    encode: Callable[[_T], bytes],
    limit: int = _MAX_CACHED_RESOURCES,
) -> bytes:
    """`encode(obj)`, kept per object. Keyed by id() (Resource's own hash is a JSON
    dump); the object is kept beside its bytes, so its id cannot be reused while
    the entry lives."""
    cached = table.get(id(obj))
    if cached is not None and cached[0] is obj:
        return cached[1]
    if len(table) >= limit:
        table.clear()
    encoded = encode(obj)
    table[id(obj)] = (obj, encoded)
    return encoded


class _KeyCache:
    """One attribute key's encodings: whole fields per string, integer and
    boolean value seen (they repeat: method, status, peer, port), and the
    field's start for a float (a duration), which the value's eight bytes end."""

    __slots__ = ("bools", "float_prefix", "ints", "strings")

    def __init__(self, key: str) -> None:
        key_field = _string(_KV_KEY, key)
        # KeyValue{key, value: AnyValue{double_value}}: the value field is 11 bytes.
        self.float_prefix = (
            _SPAN_ATTRIBUTE + _varint(len(key_field) + 11) + key_field + b"\x12\x09" + _ANY_DOUBLE
        )
        self.strings: dict[str, bytes] = {}
        self.ints: dict[int, bytes] = {}
        self.bools: dict[bool, bytes] = {}  # apart: True == 1


class TraceEncoder:
    """Spans to the bytes of an `ExportTraceServiceRequest`. Thread-safe: the
    caches only ever gain complete entries, and a lost race encodes twice."""

    def __init__(self) -> None:
        self._keys: dict[str, _KeyCache] = {}
        self._cached_values = 0
        self._resources: dict[int, tuple[Any, bytes]] = {}
        self._scopes: dict[int, tuple[Any, bytes]] = {}
        # most spans share a few Status objects (unset, error): encoded once each
        self._statuses: dict[int, tuple[Any, bytes]] = {}
        self._shared: dict[int, tuple[Any, bytes]] = {}

    def encode(self, spans: Sequence[FinishedSpan]) -> bytes:
        """One request with every span."""
        return next(self.requests(spans, 0))[0]

    def requests(
        self, spans: Sequence[FinishedSpan], max_bytes: int
    ) -> Iterator[tuple[bytes, int]]:
        """The spans, in order, as requests of at most `max_bytes` (0: one
        request), each with how many spans it holds; a span larger than that
        alone is a request of its own. Each is encoded when asked for, so only
        one is held at a time."""
        # Grouped by the encoded resource and scope: equal resources held by
        # different objects (an SDK batch's, ours) share one group, as in the SDK.
        groups: dict[bytes, dict[bytes, list[bytes]]] = {}
        size = count = 0  # size: at most what the request's encoding will be
        for span in spans:
            resource = _by_identity(self._resources, span.resource, _resource_fields)
            scope = _by_identity(self._scopes, span.instrumentation_scope, _scope_fields)
            body = self._span(span)
            scopes = groups.get(resource)
            encoded = scopes.get(scope) if scopes is not None else None
            # the span's field, and its groups' when new: a tag and a length of at
            # most 5 bytes each (a request over 4 GiB is not one)
            added = len(body) + 6
            if encoded is None:
                added += len(scope) + 6 if scopes is not None else len(resource) + len(scope) + 12
            if max_bytes and count and size + added > max_bytes:
                yield _request(groups), count
                groups, size, count = {}, 0, 0
                scopes = encoded = None
                added = len(body) + len(resource) + len(scope) + 18
            if encoded is None:
                if scopes is None:
                    scopes = groups[resource] = {}
                encoded = scopes[scope] = []
            encoded.append(body)
            size += added
            count += 1
        yield _request(groups), count

    def _new_key(self, key: str) -> _KeyCache:
        if len(self._keys) >= _MAX_CACHED_KEYS:
            self._forget()
        entry = self._keys[key] = _KeyCache(key)
        return entry

    def _forget(self) -> None:
        """Everything at once when the bound is reached: cheaper than an LRU per
        attribute, and a node's working set refills it within a batch."""
        self._keys = {}
        self._cached_values = 0

    def _remember(self, table: dict[Any, bytes], value: Any, encoded: bytes) -> None:
        if self._cached_values >= _MAX_CACHED_ATTRIBUTES:
            self._forget()
            return
        table[value] = encoded
        self._cached_values += 1

    def _shared_block(self, shared: dict[str, Any]) -> bytes:
        return b"".join(self._span_attributes(shared))

    def _span_attributes(self, attributes: Mapping[str, Any] | None, skip: int = 0) -> list[bytes]:
        """Each attribute's KeyValue field, but the first `skip`."""
        if not attributes:
            return []
        # A dict (ours) is walked without a call per item; an SDK span's
        # BoundedAttributes is copied into one first.
        given: dict[str, Any] = attributes if isinstance(attributes, dict) else dict(attributes)
        keys = self._keys
        out = []
        for key, value in given.items():
            if skip:
                skip -= 1
                continue
            cls = type(value)
            if not (cls is str or cls is int or cls is float or cls is bool):
                out.append(_attribute_field(_SPAN_ATTRIBUTE, key, value))
                continue
            entry = keys.get(key)
            if entry is None:
                entry = self._new_key(key)
                keys = self._keys  # a new table if that one was full
            if cls is float:
                out.append(entry.float_prefix + _pack_double(value))
                continue
            table: dict[Any, bytes] = (
                entry.strings if cls is str else entry.ints if cls is int else entry.bools
            )
            encoded = table.get(value)
            if encoded is None:
                encoded = _attribute_field(_SPAN_ATTRIBUTE, key, value)
                self._remember(table, value, encoded)
            out.append(encoded)
        return out

    def _span(self, span: FinishedSpan) -> bytes:
        """ScopeSpans.spans' body (encode() writes its tag and length)."""
        if isinstance(span, BuiltSpan):  # ours: its fields read as compiled, not by name
            context, parent = span.context, span.parent
            parts = _span_head(
                context.trace_id,
                context.span_id,
                context.trace_state,
                None if parent is None else parent.span_id,
                span.name,
                span.kind,
                span.start_time,
                span.end_time,
            )
            shared = span.shared_attributes
            if shared:  # the leading attributes, shared by spans: encoded once
                parts.append(
                    _by_identity(self._shared, shared, self._shared_block, _MAX_SHARED_BLOCKS)
                )
                parts += self._span_attributes(span.attributes, len(shared))
            else:
                parts += self._span_attributes(span.attributes)
            remote = parent is not None and parent.is_remote  # no events, links or drops
        else:
            sdk_context, sdk_parent = span.context, span.parent
            assert sdk_context is not None
            parts = _span_head(
                sdk_context.trace_id,
                sdk_context.span_id,
                sdk_context.trace_state,
                None if sdk_parent is None else sdk_parent.span_id,
                span.name,
                span.kind,
                span.start_time,
                span.end_time,
            )
            parts += self._span_attributes(span.attributes)
            _span_extras(span, parts)
            remote = sdk_parent is not None and sdk_parent.is_remote
        parts.append(_by_identity(self._statuses, span.status, _status_field))
        parts.append(_REMOTE_PARENT if remote else _LOCAL_PARENT)
        return b"".join(parts)


def _request(groups: dict[bytes, dict[bytes, list[bytes]]]) -> bytes:
    """An ExportTraceServiceRequest of encoded spans grouped by resource and scope.
    Each message's length is summed, not measured on a joined copy: the request
    is joined once (a batch is hundreds of KiB; each copy of it was a fresh
    allocation and its page faults)."""
    out: list[bytes] = []
    for resource, scopes in groups.items():
        resource_at = len(out)
        out += (b"\x0a", b"", resource)  # ResourceSpans: tag, length, resource
        resource_size = len(resource)
        for scope, encoded in scopes.items():
            scope_at = len(out)
            out += (b"\x12", b"", scope)  # ScopeSpans: tag, length, scope, spans
            scope_size = len(scope)
            for body in encoded:  # each span's tag and length apart: no copy of it
                span_length = _varint(len(body))
                out += (b"\x12", span_length, body)
                scope_size += 1 + len(span_length) + len(body)
            length = out[scope_at + 1] = _varint(scope_size)
            resource_size += 1 + len(length) + scope_size
        out[resource_at + 1] = _varint(resource_size)
    return b"".join(out)


def _span_head(
    trace_id: int,
    span_id: int,
    trace_state: Mapping[str, str] | None,
    parent_span_id: int | None,
    name: str,
    kind: SpanKind,
    start: int | None,
    end: int | None,
) -> list[bytes]:
    """A span's ids, name, kind and times."""
    parts = [b"\x0a\x10", trace_id.to_bytes(16, "big"), b"\x12\x08", span_id.to_bytes(8, "big")]
    if trace_state:
        parts.append(_string(b"\x1a", ",".join(f"{k}={v}" for k, v in trace_state.items())))
    if parent_span_id is not None:
        parts += (b"\x22\x08", parent_span_id.to_bytes(8, "big"))
    if name:
        parts.append(_string(b"\x2a", name))
    parts.append(_KIND_FIELDS[id(kind)])  # the proto's enum is the API's + 1
    if start and end:
        parts.append(_pack_times(0x39, start, 0x41, end))
    elif start:
        parts += (b"\x39", _pack_fixed64(start))
    elif end:
        parts += (b"\x41", _pack_fixed64(end))
    return parts


def _span_extras(span: ReadableSpan, parts: list[bytes]) -> None:
    """What only an SDK's span may have: dropped counts, events, links."""
    if span.dropped_attributes:
        parts += (b"\x50", _varint(span.dropped_attributes))
    for event in span.events:
        body = b"\x09" + _pack_fixed64(event.timestamp) if event.timestamp else b""
        if event.name:
            body += _string(b"\x12", event.name)
        body += _attribute_fields(b"\x1a", event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_field(b"\x5a", body))
    if span.dropped_events:
        parts += (b"\x60", _varint(span.dropped_events))
    for link in span.links:
        body = (
            b"\x0a\x10"
            + link.context.trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + link.context.span_id.to_bytes(8, "big")
            + _attribute_fields(b"\x22", link.attributes)
        )
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        body += b"\x35" + _pack_fixed32(_flags(link.context))
        parts.append(_field(b"\x6a", body))
    if span.dropped_links:
        parts += (b"\x70", _varint(span.dropped_links))


# Span.flags (16, fixed32) as a span ends them: whether its parent is remote
_LOCAL_PARENT: Final = b"\x85\x01" + _pack_fixed32(_FLAGS_HAS_IS_REMOTE)
_REMOTE_PARENT: Final = b"\x85\x01" + _pack_fixed32(_FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE)


def _flags(parent: Any) -> int:
    if parent is not None and parent.is_remote:
        return _FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE
    return _FLAGS_HAS_IS_REMOTE
