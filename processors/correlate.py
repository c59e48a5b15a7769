"""Trace context for eBPF spans: from the wire, the thread, and the other end of the socket.

Every request gets a `RequestContext` when its head is parsed. Its trace and
parent come from, in order of trust:

1. the wire: a valid `traceparent` or B3 context on the request (a SERVER span
   joins that trace as a child of the caller's span; a CLIENT span that
   carries one is a child of the span the sending app created);
2. the socket (SERVER spans): when this node also saw the client end of the
   connection, the server span is the child of the client span of the same
   request (matched by 4-tuple and byte offset in the stream);
3. the thread (CLIENT spans): a request sent by a thread while it handles
   exactly one server request is that server span's child. That holds only
   where a request stays on the thread that read it, so the rule is off for
   processes whose requests move between threads: Go (goroutines run on any
   thread; known from the binary) and any process seen answering a request
   from another thread than the one that read it (work-stealing runtimes,
   hand-offs to pools). In a Go program whose runtime is probed
   (bpf/go.bpf.c), the goroutine takes the thread's place: a request sent for
   a goroutine that serves exactly one server request (by it, or handed by it
   to net/http's writer after that request began) is its child. A thread
   with several server requests in flight (an event loop) is ambiguous, and a
   thread with none (a worker, or a background job) proves nothing: no
   parent. Anything else starts a new trace rather than guess: a missing
   parent splits a trace, a wrong one files a request under a stranger's.
4. the task (CLIENT spans of an asyncio program whose `_asyncio` module is
   probed, bpf/asyncio.bpf.c): the event loop reads every request outside any
   task, so a call names only the task that made it, and its parent is decided
   later: the server request whose answer that task writes next, if it began
   before the call. A task seen answering on two connections (a dispatcher, not
   a handler) proves nothing from then on.
5. the callback (CLIENT spans of a Node program, bpf/node.bpf.c): a call
   written in the callback that a server request's read began (that request
   alone in flight on its connection) is that request's child if, and only
   if, the request's answer is written in the callback that the call's own
   response began: cause and effect both ways, so a call made for another
   request in the same callback (a promise it settled) is never filed there.

Contexts end with their request: nothing leaks to the next request on the
same thread or keep-alive connection, and no trace grows without bound.

The kernel reports a send once its bytes are delivered, so a server on this node
can read a request, and even call its own backends, before its client's send is
reported. Span ids are therefore given at once, but a trace id can wait: a server
request whose client is on this node and not yet seen holds an empty `TraceCell`
that its own outgoing calls (and their servers) share; when the client's send is
reported, the cell is linked to the client's and every request sharing it joins
that trace. A cell still empty when its first span is built starts a new trace.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol, TypeVar

from otel_ebpf.model import Endpoint, GoroutineLink, Role
from otel_ebpf.processors.propagation import WireContext, extract

StreamKey = tuple[Endpoint, Endpoint, int]
_K = TypeVar("_K")
# Thread keys from here up name a goroutine of a probed Go process, not a thread.
GOROUTINE_KEYS: Final = 1 << 96


def goroutine_key(pid: int, owner: int) -> int:
    """The thread key of goroutine `owner` (a g address: unique within its process)."""
    return GOROUTINE_KEYS | pid << 64 | owner


class RequestStart(Protocol):
    """What any protocol's request record offers: HttpHead has it, Redis builds one."""

    @property
    def start_ts(self) -> int: ...
    @property
    def stream_offset(self) -> int: ...
    @property
    def headers(self) -> dict[str, str]: ...  # client (local, remote) and stream offset


# A client's send tracepoint fires after the data is queued to the peer, so the
# server may record its read a little earlier than the client records its send.
MATCH_SLACK_NS: Final = 50_000_000
MATCH_WINDOW_NS: Final = 60_000_000_000
MAX_AGE_NS: Final = 300_000_000_000  # server requests never finished (dropped) expire
MAX_UNSETTLED_NS: Final = 1_000_000_000  # a span waits this long at most for its trace
MAX_TASK_CALLS: Final = 64  # calls one task made that wait for its answer; past it, the oldest go


# Plain classes, not NamedTuples: made per request, and compiled a class is made
# in a fraction of a NamedTuple's (interpreted) constructor's time.


class RequestNet:
    """TCP facts of one request's connection while the request was in flight."""

    def __init__(
        self,
        retransmits: int,
        bytes_sent: int,
        bytes_received: int,
        srtt_us: int,  # 0: not known
        new_connection: bool,  # the first request of a connection the collector saw open
        reset: bool,  # the connection was reset before the request finished
        send_wait_ns: int = 0,  # its sends waited this long for room in the send buffer
        window_small: int = 0,  # segments seen while a receive window was nearly shut
    ) -> None:
        self.retransmits = retransmits
        self.bytes_sent = bytes_sent
        self.bytes_received = bytes_received
        self.srtt_us = srtt_us
        self.new_connection = new_connection
        self.reset = reset
        self.send_wait_ns = send_wait_ns
        self.window_small = window_small

    def with_retransmits(self, retransmits: int) -> RequestNet:
        return RequestNet(
            retransmits,
            self.bytes_sent,
            self.bytes_received,
            self.srtt_us,
            self.new_connection,
            self.reset,
            self.send_wait_ns,
            self.window_small,
        )


class NetCounters:
    """A connection's counters when a request began."""

    def __init__(
        self,
        retransmits: int,
        sent: int,
        received: int,
        new_connection: bool,
        send_wait_ns: int,
        window_small: int,
    ) -> None:
        self.retransmits = retransmits
        self.sent = sent
        self.received = received
        self.new_connection = new_connection
        self.send_wait_ns = send_wait_ns
        self.window_small = window_small


class TraceCell:
    """A trace id that may not be known yet, shared by the requests of one trace."""

    __slots__ = ("awaited", "forward", "rand", "sampled", "trace_id")

    def __init__(self, trace_id: int = 0, sampled: bool = True, rand: int = 0) -> None:
        self.trace_id = trace_id  # 0: not known yet
        self.sampled = sampled
        self.rand = rand  # the kernel's random value for the request that began it (budget)
        self.forward: TraceCell | None = None  # linked into another trace
        self.awaited = 0  # when a server request began waiting for its client's send

    def root(self) -> TraceCell:
        cell = self
        while cell.forward is not None:
            cell = cell.forward
        if cell is not self:
            self.forward = cell  # short paths for the next lookup
        return cell


class ClientEnd:
    """What a client request leaves for its server's read to join: its span, its trace."""

    def __init__(self, span_id: int, cell: TraceCell, start_ts: int, held: bool) -> None:
        self.span_id = span_id
        self.cell = cell
        self.start_ts = start_ts
        self.held = held


class RequestContext:
    """Correlation state of one request, from its head to its span."""

    __slots__ = (
        "cell",
        "duplicates_sdk",
        "held",
        "key",
        "net",
        "net_start",
        "parent_id",
        "pid",
        "rand",
        "red_in_kernel",
        "resolved",
        "role",
        "shared_thread",
        "span_id",
        "start_ts",
        "threshold",
        "tid",
        "wire",
    )

    def __init__(self, role: Role, pid: int, tid: int, start_ts: int, wire: WireContext | None):
        self.role = role
        self.pid = pid
        self.tid = tid
        self.start_ts = start_ts
        self.wire = wire
        self.key: StreamKey | None = None
        self.cell = TraceCell()
        self.span_id = 0
        self.parent_id = 0
        self.resolved = False  # settled: its span is being built with these ids
        self.held = False  # its trace may be rooted in a request the app's SDK also traced
        self.duplicates_sdk = False  # a call whose context the sending app created itself
        # What TCP did on the connection during the request (set by the tracker):
        # counters at its start, then the facts at its end.
        self.net_start: NetCounters | None = None
        self.net: RequestNet | None = None
        self.red_in_kernel = False  # its RED measurement is the kernel's (RedCount)
        self.shared_thread = False  # a server request whose thread read another meanwhile
        # The span budget's decision (processors.budget): kept as rand >= threshold.
        self.rand = 0
        self.threshold = 0

    @property
    def trace_id(self) -> int:
        return self.cell.root().trace_id

    @property
    def sampled(self) -> bool:
        return self.cell.root().sampled


class Correlator:
    def __init__(
        self,
        max_streams: int = 65536,
        is_sdk_process: Callable[[int], bool] | None = None,
        moves_requests: Callable[[int], bool] | None = None,
    ) -> None:
        self._is_sdk_process = is_sdk_process or (lambda _pid: False)
        # Processes whose requests move between threads: known up front (Go) ...
        self._moves_requests = moves_requests or (lambda _pid: False)
        # ... or seen answering a request from another thread than its reader
        # (or, for goroutine keys, another goroutine: pids in the second set).
        self._seen_moving: set[int] = set()
        self._goroutines_moving: set[int] = set()
        self._rand = random.Random()
        # Server requests in progress by thread (ordered sets: a request ends in
        # O(1) however many a thread serves at once).
        self._by_thread: dict[int, dict[RequestContext, None]] = {}
        # Client requests whose server end may still be read on this node (most
        # never are: their servers are elsewhere), kept slim as the table is full.
        self._clients: OrderedDict[StreamKey, ClientEnd] = OrderedDict()
        # Server requests whose client's send (on this node) is not reported yet.
        self._waiting: OrderedDict[StreamKey, RequestContext] = OrderedDict()
        # asyncio: calls each (pid, task) made, waiting for the answer it writes next,
        # and the connection each task answered on (tasks that answered on two: -1).
        self._task_calls: OrderedDict[tuple[int, int], list[RequestContext]] = OrderedDict()
        self._task_answers: OrderedDict[tuple[int, int], int] = OrderedDict()
        # Node: calls written in the callback each server request's read began.
        self._caused: OrderedDict[RequestContext, list[RequestContext]] = OrderedDict()
        self._max_streams = max_streams
        self.joins = 0  # server requests joined to a client seen late, so far
        # Told (thread, request start, trace id, span id) of each server request
        # that had its thread to itself: the CPU profiler's span tie-in.
        self.tie_span: Callable[[int, int, int, int], None] | None = None

    # -- lifecycle ------------------------------------------------------------

    def started(
        self,
        role: Role,
        head: RequestStart,
        pid: int,
        tid: int,
        local: Endpoint | None,
        remote: Endpoint | None,
        from_start: bool,
        client_on_node: bool = True,
        rand: int = 0,
        threshold: int = 0,
        goroutine: GoroutineLink | None = None,
        task: int = 0,
        caused_by: RequestContext | None = None,
    ) -> RequestContext:
        """A request head was parsed on a connection of `role` owned by pid/tid
        (a thread, or a `goroutine_key`). `client_on_node`: a server's client end
        is a connection this node traces (only then is its send worth waiting
        for). `rand`, `threshold`: the kernel kept it by the span budget; a trace
        it begins takes `rand` as its randomness (the trace id's low 56 bits), so
        its `th` holds downstream. `goroutine`: a client request's goroutine link
        (`tid` is its key): its server request began before the link was made.
        `task`: the asyncio task that sent a client request (0: none known).
        `caused_by`: the server request whose read began the Node callback that
        sent it."""
        wire = extract(head.headers) if _may_carry_context(head) else None
        rc = RequestContext(role, pid, tid, head.start_ts, wire)
        rc.span_id = self._rand.getrandbits(64) or 1
        rc.rand, rc.threshold = rand, threshold
        rc.cell.rand = rand
        stream_known = from_start and local is not None and remote is not None
        if role == Role.SERVER:
            if stream_known:
                rc.key = (remote, local, head.stream_offset)  # type: ignore[assignment]
            # No context on the wire, in a process whose SDK reports to us: the SDK
            # probably traced this request too; its trace waits to be merged.
            rc.held = wire is None and self._is_sdk_process(pid)
            self._resolve_server(rc, client_on_node)
            serving = self._by_thread.setdefault(tid, {})
            if serving:  # an event loop: a CPU sample cannot tell whose work it is
                rc.shared_thread = True
                # the others were marked when they met a second one, but for a
                # request alone until now: O(1), however many are in flight
                if len(serving) == 1:
                    next(iter(serving)).shared_thread = True
            serving[rc] = None
        else:
            self._resolve_client(rc, goroutine, task, caused_by)
            if stream_known:
                key = (local, remote, head.stream_offset)
                waiting = self._waiting.pop(key, None)  # type: ignore[arg-type]
                if waiting is not None and _plausible(rc, waiting):
                    self._join(waiting, rc)  # its server read it before we saw it sent
                else:
                    self._clients[key] = ClientEnd(rc.span_id, rc.cell, rc.start_ts, rc.held)  # type: ignore[index]
                    if len(self._clients) > self._max_streams:
                        self._clients.popitem(last=False)
        return rc

    def finished(self, rc: RequestContext) -> None:
        """The request's span is about to be built: end its context, settle its ids."""
        self.ended(rc)
        self.settle(rc)

    def ended(self, rc: RequestContext) -> None:
        """The request is over: its thread no longer serves it, and no answer of
        its will claim the calls its read caused."""
        if rc.role == Role.SERVER:
            _discard(self._by_thread, rc.tid, rc)
            calls = self._caused.pop(rc, None)
            if calls:
                self._give_up(calls)

    def answered(
        self,
        rc: RequestContext,
        tid: int,
        task: int = 0,
        connection: int = 0,
        after: RequestContext | None = None,
    ) -> None:
        """A server request's answer was written by thread `tid` (in asyncio task
        `task`, on `connection`; or in the Node callback that the response of
        client request `after` began): another thread than its reader means this
        process's requests move between threads (or goroutines, keys of each kind
        compared with their own kind: a Go process's calls name their goroutine
        from its registration on). The calls the task made since the request
        began are its children; so is `after`, if the request's read caused it."""
        if rc.role != Role.SERVER:
            return
        if task:
            self._claim(rc, task, connection)
        if rc in self._caused:
            self._claim_caused(rc, after)
        if tid == rc.tid:
            return
        goroutines = tid >= GOROUTINE_KEYS
        if goroutines != (rc.tid >= GOROUTINE_KEYS):
            return
        moving = self._goroutines_moving if goroutines else self._seen_moving
        if rc.pid not in moving:
            if len(moving) >= self._max_streams:
                moving.clear()  # bounded; relearned at the next answer
            moving.add(rc.pid)

    def forget_process(self, pid: int) -> None:
        """The process exited: its pid may come back as another program."""
        self._seen_moving.discard(pid)
        self._goroutines_moving.discard(pid)
        for table in (self._task_calls, self._task_answers):
            for key in [k for k in table if k[0] == pid]:
                del table[key]

    def _claim(self, server: RequestContext, task: int, connection: int) -> None:
        """Task `task` answered `server` on `connection`: the calls it made since
        that request began join its trace; earlier ones were for something else."""
        key = (server.pid, task)
        answered_on = self._task_answers.get(key)
        if answered_on is None:
            self._task_answers[key] = connection
            if len(self._task_answers) > self._max_streams:
                self._task_answers.popitem(last=False)
        elif answered_on != connection:
            self._task_answers[key] = -1  # a dispatcher: its calls are nobody's
        calls = self._task_calls.pop(key, None)
        if not calls:
            return
        self.joins += 1  # exchanges waiting on these calls can go now
        trusted = self._task_answers[key] == connection
        for call in calls:
            call.cell.root().awaited = 0
            if trusted and call.start_ts >= server.start_ts:
                _adopt(server, call)

    def awaits_client(self, rc: RequestContext) -> bool:
        """Its trace waits on a server request whose client's send is not reported
        yet (the client's thread can be preempted between delivering its bytes and
        the kernel reporting them): its span should wait a little, or it would
        start a trace of its own."""
        if rc.resolved:
            return False
        root = rc.cell.root()
        return not root.trace_id and root.awaited != 0

    def settle(self, rc: RequestContext) -> None:
        """Its span is being built: a trace still unknown is a new one from here."""
        if rc.resolved:
            return
        if rc.key is not None and self._waiting.get(rc.key) is rc:
            del self._waiting[rc.key]
        root = rc.cell.root()
        if not root.trace_id:
            root.trace_id = self._new_trace_id(root.rand)
        rc.resolved = True
        if (
            self.tie_span is not None
            and rc.role == Role.SERVER
            and not rc.shared_thread
            and rc.tid < GOROUTINE_KEYS  # a CPU sample names a thread
            and not self._moves_requests(rc.pid)
            and rc.pid not in self._seen_moving
        ):
            self.tie_span(rc.tid, rc.start_ts, rc.trace_id, rc.span_id)

    def _new_trace_id(self, rand: int) -> int:
        """Random, or with the kernel's random value as its low 56 bits (the bits
        consistent probability sampling reads)."""
        if rand:
            return (self._rand.getrandbits(72) << 56) | rand
        return self._rand.getrandbits(128) or 1

    def expire(self, now_ts: int) -> None:
        """Forget server requests that never finished (their pending entry was dropped),
        and calls of tasks that never answered (their spans have gone on already)."""
        for task, calls in list(self._task_calls.items()):
            if all(c.resolved or now_ts - c.start_ts > MAX_AGE_NS for c in calls):
                del self._task_calls[task]
        table = self._by_thread
        for key in list(table):
            alive = {rc: None for rc in table[key] if now_ts - rc.start_ts < MAX_AGE_NS}
            if alive:
                table[key] = alive
            else:
                del table[key]

    # -- resolution -------------------------------------------------------------

    def _resolve_server(self, rc: RequestContext, client_on_node: bool) -> None:
        if rc.wire is not None:
            rc.cell = TraceCell(rc.wire.trace_id, rc.wire.sampled)
            rc.parent_id = rc.wire.span_id
            return
        client = self._clients.get(rc.key) if rc.key is not None else None
        if client is not None and _plausible(client, rc):
            del self._clients[rc.key]  # type: ignore[arg-type]
            self._join(rc, client)
            return
        if rc.key is not None and client_on_node:
            # The client's send may not be reported yet: its trace is joined then.
            rc.cell.awaited = rc.start_ts
            self._waiting[rc.key] = rc
            if len(self._waiting) > self._max_streams:
                self._waiting.popitem(last=False)
            return
        rc.cell = TraceCell(self._new_trace_id(rc.rand), rand=rc.rand)

    def _join(self, server: RequestContext, client: RequestContext | ClientEnd) -> None:
        """The server request is the client request's other end: one trace."""
        self.joins += 1
        server.parent_id = client.span_id
        server.held = server.held or client.held
        mine, theirs = server.cell.root(), client.cell.root()
        if mine is not theirs:
            mine.forward = theirs

    def _resolve_client(
        self,
        rc: RequestContext,
        goroutine: GoroutineLink | None,
        task: int,
        caused_by: RequestContext | None,
    ) -> None:
        known = task or caused_by is not None
        parent = None if known else self._enclosing_server(rc, goroutine)
        if rc.wire is not None:
            rc.cell = TraceCell(rc.wire.trace_id, rc.wire.sampled)
            rc.parent_id = rc.wire.span_id
            # A context the process forwarded unchanged is not its own span; one
            # it created is its SDK's client span, which this one duplicates.
            forwarded = (
                parent is not None
                and parent.wire is not None
                and (parent.wire.span_id == rc.wire.span_id)
            )
            rc.duplicates_sdk = not forwarded
            return
        if parent is None and task:
            self._await_answer(rc, task)
            return
        if parent is None and caused_by is not None:
            self._await_caused_answer(rc, caused_by)
            return
        if parent is None:
            rc.cell = TraceCell(self._new_trace_id(rc.rand), rand=rc.rand)
            return
        rc.cell = parent.cell  # shared: known now, or when the parent's client shows
        rc.parent_id = parent.span_id
        rc.held = parent.held

    def _await_answer(self, rc: RequestContext, task: int) -> None:
        """A call an asyncio task made: its trace is the one of the request that task
        answers next (or, if none comes in time, a trace of its own)."""
        key = (rc.pid, task)
        if self._task_answers.get(key) == -1:
            rc.cell = TraceCell(self._new_trace_id(rc.rand), rand=rc.rand)
            return
        self._wait(self._task_calls, key, rc)

    def _claim_caused(self, server: RequestContext, after: RequestContext | None) -> None:
        """Node: of the calls `server`'s read caused, the one whose response
        caused its answer is its child; the others were not shown to be."""
        calls = self._caused.pop(server)
        self.joins += 1
        for call in calls:
            call.cell.root().awaited = 0
            if call is after:
                _adopt(server, call)

    def _await_caused_answer(self, rc: RequestContext, server: RequestContext) -> None:
        """A call a Node callback made, begun by `server`'s read: its trace is
        that request's if its answer comes in the callback the call's response
        begins (or, if not within a second, a trace of its own)."""
        self._wait(self._caused, server, rc)

    def _wait(
        self, table: OrderedDict[_K, list[RequestContext]], key: _K, rc: RequestContext
    ) -> None:
        """`rc` waits under `key` for an answer to claim it (bounded per key and
        in keys; what falls out stops waiting)."""
        rc.cell.awaited = rc.start_ts
        calls = table.get(key)
        if calls is None:
            calls = table[key] = []
            if len(table) > self._max_streams:
                _, dropped = table.popitem(last=False)
                self._give_up(dropped)
        calls.append(rc)
        if len(calls) > MAX_TASK_CALLS:
            self._give_up([calls.pop(0)])

    def _give_up(self, calls: list[RequestContext]) -> None:
        """Calls no answer will claim: their spans need not wait."""
        for call in calls:
            call.cell.root().awaited = 0
        self.joins += 1

    def _enclosing_server(
        self, rc: RequestContext, goroutine: GoroutineLink | None
    ) -> RequestContext | None:
        """The one server request the sending thread (or goroutine) is serving,
        where that is sound."""
        on_thread = self._by_thread.get(rc.tid)
        if not on_thread or len(on_thread) != 1:
            return None
        server = next(iter(on_thread))
        if goroutine is not None and rc.tid >= GOROUTINE_KEYS:
            # a request the owner handed on is for its request of that time only
            if rc.pid in self._goroutines_moving:
                return None
            if goroutine.until and server.start_ts > goroutine.until:
                return None
            return server
        if rc.pid in self._seen_moving or self._moves_requests(rc.pid):
            return None
        return server


def _adopt(server: RequestContext, call: RequestContext) -> None:
    """A call whose parent was decided late becomes `server`'s child, unless it
    waited too long (a trace of its own already) or it is that request's own
    client end (a process calling itself)."""
    own, cell = server.cell.root(), call.cell.root()
    if call.resolved or cell is own:
        return
    call.parent_id = server.span_id
    call.held = server.held
    cell.forward = own


def _may_carry_context(head: RequestStart) -> bool:
    h = head.headers
    return "traceparent" in h or "b3" in h or "x-b3-traceid" in h


def _plausible(client: RequestContext | ClientEnd, server: RequestContext) -> bool:
    """Same stream and offset: also close in time (the tuple may have been reused)."""
    gap = server.start_ts - client.start_ts
    return -MATCH_SLACK_NS <= gap <= MATCH_WINDOW_NS


def _discard(table: dict[int, dict[RequestContext, None]], key: int, rc: RequestContext) -> None:
    items = table.get(key)
    if items is None or rc not in items:
        return
    del items[rc]
    if not items:
        del table[key]
