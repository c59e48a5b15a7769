"""Correlation rules on hand-made request heads (pure logic; the kernel tests run it for real)."""

from __future__ import annotations

from otel_ebpf.model import Endpoint, GoroutineLink, HttpHead, Role
from otel_ebpf.processors.correlate import Correlator, goroutine_key

CLIENT_END, SERVER_END = Endpoint("10.0.0.1", 40000), Endpoint("10.0.0.2", 80)
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def head(ts: int, offset: int = 0, **headers: str) -> HttpHead:
    return HttpHead(True, "GET", "/", 0, "1.1", headers, ts, False, offset)


def server(c: Correlator, ts: int, pid: int = 1, tid: int = 1, offset: int = 0, **h: str):  # type: ignore[no-untyped-def]
    return c.started(Role.SERVER, head(ts, offset, **h), pid, tid, SERVER_END, CLIENT_END, True)


def client(c: Correlator, ts: int, pid: int = 1, tid: int = 1, offset: int = 0, **h: str):  # type: ignore[no-untyped-def]
    return c.started(Role.CLIENT, head(ts, offset, **h), pid, tid, CLIENT_END, SERVER_END, True)


def test_wire_context_wins() -> None:
    c = Correlator()
    rc = server(c, 10, traceparent=TP)
    assert rc.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736 and rc.parent_id == 0x00F067AA0BA902B7


def test_socket_context_links_server_to_client_of_same_stream_offset() -> None:
    c = Correlator()
    a = client(c, 10, pid=7, tid=7, offset=120)
    b = server(c, 11, pid=8, tid=8, offset=120)
    c.finished(b)
    assert (b.trace_id, b.parent_id) == (a.trace_id, a.span_id)
    other = server(c, 12, pid=8, tid=8, offset=240)  # next request: no client seen for it
    c.finished(other)
    assert other.trace_id != a.trace_id and other.parent_id == 0


def test_server_seen_before_the_client_send_still_links() -> None:
    c = Correlator()
    b = server(c, 10, pid=8, tid=8)  # the read tracepoint won the race
    a = client(c, 11, pid=7, tid=7)
    c.finished(b)
    assert (b.trace_id, b.parent_id) == (a.trace_id, a.span_id)


def test_stale_stream_entry_is_not_matched() -> None:
    c = Correlator()
    client(c, 10)
    b = server(c, 10 + 120_000_000_000, pid=8, tid=8)  # two minutes later, same tuple reused
    c.finished(b)
    assert b.parent_id == 0


def test_thread_context_parents_outgoing_calls_and_ends_with_the_request() -> None:
    c = Correlator()
    incoming = server(c, 10, pid=5, tid=50, offset=0)
    out = c.started(
        Role.CLIENT, head(11), 5, 50, Endpoint("10.0.0.2", 5000), Endpoint("10.0.0.3", 6379), True
    )
    assert (out.trace_id, out.parent_id) == (incoming.trace_id, incoming.span_id)
    c.finished(out)
    c.finished(incoming)
    later = c.started(
        Role.CLIENT, head(20), 5, 50, Endpoint("10.0.0.2", 5001), Endpoint("10.0.0.3", 6379), True
    )
    assert later.trace_id != incoming.trace_id and later.parent_id == 0  # no leak


def test_event_loop_thread_is_ambiguous() -> None:
    c = Correlator()
    server(c, 10, pid=5, tid=50, offset=0)
    c.started(Role.SERVER, head(11), 5, 50, SERVER_END, Endpoint("10.0.0.9", 1), True)
    out = c.started(
        Role.CLIENT, head(12), 5, 50, Endpoint("10.0.0.2", 5000), Endpoint("10.0.0.3", 80), True
    )
    assert out.parent_id == 0  # two requests in flight on one thread: no guess


def call(c: Correlator, ts: int, pid: int, tid: int, port: int = 5000):  # type: ignore[no-untyped-def]
    """An outgoing call from pid/tid to a backend."""
    return c.started(
        Role.CLIENT, head(ts), pid, tid, Endpoint("10.0.0.2", port), Endpoint("10.0.0.3", 80), True
    )


def test_a_thread_serving_nothing_proves_nothing() -> None:
    """A worker or background thread calls out while one request is in flight in
    its process: it may be that request's work, or a health check of its own."""
    c = Correlator()
    server(c, 10, pid=5, tid=50)
    assert call(c, 11, pid=5, tid=51).parent_id == 0


def test_go_requests_move_between_threads_so_the_thread_is_no_context() -> None:
    """The interleaving that filed B's /c/c006 under /b/c000: goroutine g0 read
    request 0 on thread 50 and waits; goroutine g6 read request 6 on thread 60,
    then ran on thread 50 when it called C. Thread 50 serves exactly request 0."""
    go_pids = {5}
    c = Correlator(moves_requests=go_pids.__contains__)
    server(c, 10, pid=5, tid=50, offset=0)
    c.started(Role.SERVER, head(11), 5, 60, SERVER_END, Endpoint("10.0.0.9", 1), True)
    assert call(c, 12, pid=5, tid=50).parent_id == 0
    # the same interleaving in a thread-per-request process keeps its link
    kept = server(c, 13, pid=7, tid=70)
    assert call(c, 14, pid=7, tid=70).parent_id == kept.span_id


G0, G6, WRITER = 0xC000001000, 0xC000006000, 0xC000009000  # g addresses


def go_call(c: Correlator, ts: int, goroutine: int, link: GoroutineLink):  # type: ignore[no-untyped-def]
    """An outgoing call a probed Go process (pid 5) sent for `link.owner`, written
    by `goroutine`."""
    return c.started(
        Role.CLIENT,
        head(ts),
        5,
        goroutine_key(5, link.owner),
        Endpoint("10.0.0.2", 5000),
        Endpoint("10.0.0.3", 80),
        True,
        goroutine=link,
    )


def test_go_calls_follow_their_goroutine_across_threads() -> None:
    """The same interleaving with goroutine context: each request is its
    goroutine's, whatever thread ran it, and net/http's writer goroutine writes a
    call for the goroutine that handed it over."""
    c = Correlator(moves_requests={5}.__contains__)
    r0 = server(c, 10, pid=5, tid=goroutine_key(5, G0), offset=0)
    r6 = c.started(
        Role.SERVER, head(11), 5, goroutine_key(5, G6), SERVER_END, Endpoint("10.0.0.9", 1), True
    )
    assert go_call(c, 12, G6, GoroutineLink(G6, 0)).parent_id == r6.span_id  # its own write
    assert go_call(c, 13, WRITER, GoroutineLink(G0, 12)).parent_id == r0.span_id  # handed over
    assert call(c, 14, pid=5, tid=50).parent_id == 0  # a call naming no goroutine: no guess


def test_a_go_call_handed_over_before_its_owners_request_began_is_not_that_requests() -> None:
    """The writer goroutine was handed request 0's call; the owner went on to its
    next request before the call was written (a timeout): not that request's."""
    c = Correlator(moves_requests={5}.__contains__)
    first = server(c, 10, pid=5, tid=goroutine_key(5, G0))
    c.finished(first)
    server(c, 20, pid=5, tid=goroutine_key(5, G0), offset=100)
    assert go_call(c, 21, WRITER, GoroutineLink(G0, 15)).parent_id == 0


def test_thread_answers_before_a_go_process_was_probed_do_not_turn_goroutines_off() -> None:
    """Its first requests were answered from other threads (no goroutine yet):
    that says nothing about goroutines. A goroutine answering another's request
    does (a hand-off the probes do not follow)."""
    c = Correlator(moves_requests={5}.__contains__)
    early = server(c, 10, pid=5, tid=50)
    c.answered(early, 51)
    c.finished(early)
    r0 = server(c, 20, pid=5, tid=goroutine_key(5, G0), offset=100)
    assert go_call(c, 21, G0, GoroutineLink(G0, 0)).parent_id == r0.span_id
    c.answered(r0, goroutine_key(5, G6))
    c.finished(r0)
    server(c, 30, pid=5, tid=goroutine_key(5, G0), offset=200)
    assert go_call(c, 31, G0, GoroutineLink(G0, 0)).parent_id == 0


def test_an_answer_from_another_thread_turns_the_thread_rule_off_for_the_process() -> None:
    """A work-stealing runtime the binary does not reveal: learned from the first
    request answered by another thread than its reader."""
    c = Correlator()
    first = server(c, 10, pid=5, tid=50)
    assert call(c, 11, pid=5, tid=50).parent_id == first.span_id  # nothing known yet
    c.answered(first, 51)
    c.finished(first)
    second = server(c, 12, pid=5, tid=50, offset=100)
    assert call(c, 13, pid=5, tid=50).parent_id == 0
    c.answered(second, 50)
    c.finished(second)
    c.forget_process(5)  # exited; its pid is another program's now
    third = server(c, 14, pid=5, tid=50, offset=200)
    assert call(c, 15, pid=5, tid=50).parent_id == third.span_id


def test_unfinished_requests_expire() -> None:
    c = Correlator()
    server(c, 10, pid=5, tid=50)
    c.expire(10 + 400_000_000_000)
    out = c.started(Role.CLIENT, head(10 + 400_000_000_001), 5, 50, CLIENT_END, SERVER_END, False)
    assert out.parent_id == 0


def test_a_servers_own_calls_join_the_trace_when_its_clients_send_shows_late() -> None:
    """The server read the request and called its backend before the kernel
    reported its client's send: all of them still make one trace."""
    c = Correlator()
    b = server(c, 10, pid=8, tid=8)
    backend_end, own_end = Endpoint("10.0.0.3", 5432), Endpoint("10.0.0.2", 50000)
    call = c.started(Role.CLIENT, head(11), 8, 8, own_end, backend_end, True)
    backend = c.started(Role.SERVER, head(12), 9, 9, backend_end, own_end, True)
    a = client(c, 13, pid=7, tid=7)  # the first send, reported last
    for rc in (backend, call, b, a):
        c.finished(rc)
    assert (b.trace_id, b.parent_id) == (a.trace_id, a.span_id)
    assert (call.trace_id, call.parent_id) == (a.trace_id, b.span_id)
    assert (backend.trace_id, backend.parent_id) == (a.trace_id, call.span_id)


def test_a_span_built_before_its_clients_send_shows_keeps_its_new_trace() -> None:
    c = Correlator()
    b = server(c, 10, pid=8, tid=8)
    c.finished(b)  # built: nothing waits any more
    a = client(c, 11, pid=7, tid=7)
    c.finished(a)
    assert b.trace_id and b.trace_id != a.trace_id and b.parent_id == 0


K1, K2 = 101, 102  # asyncio task ids (bpf/asyncio.bpf.c)


def task_call(c: Correlator, ts: int, task: int, port: int = 5000):  # type: ignore[no-untyped-def]
    """An outgoing call asyncio process 5's loop thread 50 made in `task`."""
    return c.started(
        Role.CLIENT,
        head(ts),
        5,
        50,
        Endpoint("10.0.0.2", port),
        Endpoint("10.0.0.3", 80),
        True,
        task=task,
    )


def loop_read(c: Correlator, ts: int, peer_port: int):  # type: ignore[no-untyped-def]
    """Process 5's event loop (thread 50) reads a request, outside any task."""
    return c.started(
        Role.SERVER, head(ts), 5, 50, SERVER_END, Endpoint("10.0.0.9", peer_port), True, False
    )


def test_asyncio_calls_join_the_request_their_task_answers_next() -> None:
    """Eight clients' requests on one loop: r1 and r2 read in the loop's callback;
    task K2 calls out, then K1, then K2 again; K1 answers r1, K2 answers r2. Each
    call joins the request its own task answered, whatever the interleaving."""
    c = Correlator()
    r1, r2 = loop_read(c, 10, 1), loop_read(c, 11, 2)
    a, b, d = task_call(c, 12, K2), task_call(c, 13, K1, 5001), task_call(c, 14, K2, 5002)
    assert all(c.awaits_client(x) for x in (a, b, d))  # decided at the answers
    c.answered(r1, 50, K1, connection=1)
    assert (b.trace_id, b.parent_id) == (r1.trace_id, r1.span_id) and not c.awaits_client(b)
    assert c.awaits_client(a)
    c.answered(r2, 50, K2, connection=2)
    for x in (a, d):
        assert (x.trace_id, x.parent_id) == (r2.trace_id, r2.span_id)


def test_an_asyncio_call_made_before_the_request_began_is_not_its_child() -> None:
    """A connection's task called out (a health check of its own) before its next
    request arrived: that request's answer does not claim it."""
    c = Correlator()
    early = task_call(c, 9, K1)
    r = loop_read(c, 10, 1)
    c.answered(r, 50, K1, connection=1)
    assert early.parent_id == 0 and not c.awaits_client(early)
    c.settle(early)
    assert early.trace_id != r.trace_id


def test_an_asyncio_task_answering_on_two_connections_is_no_context() -> None:
    """A dispatcher task answers for many connections: its calls could be for any
    of their requests, so from its second connection on they are nobody's."""
    c = Correlator()
    r1 = loop_read(c, 10, 1)
    c.answered(r1, 50, K1, connection=1)
    r2 = loop_read(c, 20, 2)
    out = task_call(c, 21, K1)
    c.answered(r2, 50, K1, connection=2)
    assert out.parent_id == 0 and not c.awaits_client(out)
    later = task_call(c, 30, K1)
    assert later.parent_id == 0 and not c.awaits_client(later)


def test_an_asyncio_call_that_waited_too_long_keeps_its_own_trace() -> None:
    """Its span went on with a trace of its own: a late answer changes nothing."""
    c = Correlator()
    r = loop_read(c, 10, 1)
    out = task_call(c, 11, K1)
    c.settle(out)
    own = out.trace_id
    c.answered(r, 50, K1, connection=1)
    assert (out.trace_id, out.parent_id) == (own, 0)


def test_an_asyncio_call_in_a_task_ignores_the_thread_rule() -> None:
    """One request in flight on the loop thread, but the call's task answers
    another request later (the first one's task had answered already and goes
    on with work of its own): the thread rule would have guessed wrong."""
    c = Correlator()
    only = loop_read(c, 10, 1)
    out = task_call(c, 11, K2)
    assert out.parent_id == 0 and c.awaits_client(out)
    c.finished(only)
    later = loop_read(c, 20, 2)
    c.answered(later, 50, K2, connection=2)
    assert out.parent_id == 0  # began before `later`: nobody's


def node_call(c: Correlator, ts: int, caused_by, port: int = 5000):  # type: ignore[no-untyped-def]
    """A call Node process 5's thread 50 wrote in a callback `caused_by`'s read began."""
    return c.started(
        Role.CLIENT,
        head(ts),
        5,
        50,
        Endpoint("10.0.0.2", port),
        Endpoint("10.0.0.3", 80),
        True,
        caused_by=caused_by,
    )


def test_a_node_call_is_the_child_of_the_request_that_caused_it_and_its_answer() -> None:
    """r1 and r2 in flight on the loop: r1's read began the callback that wrote
    call a, r2's the one that wrote b; r2's answer is written in the callback
    b's response began, r1's in a's. Each call joins its own request."""
    c = Correlator()
    r1, r2 = loop_read(c, 10, 1), loop_read(c, 11, 2)
    a, b = node_call(c, 12, r1), node_call(c, 13, r2, 5001)
    assert c.awaits_client(a) and c.awaits_client(b)
    c.answered(r2, 50, after=b)
    assert (b.trace_id, b.parent_id) == (r2.trace_id, r2.span_id)
    c.answered(r1, 50, after=a)
    assert (a.trace_id, a.parent_id) == (r1.trace_id, r1.span_id)


def test_a_node_call_made_in_a_requests_callback_for_another_is_not_its_child() -> None:
    """r1's read began a callback whose promise jobs wrote a call for r2 (c2);
    r1 answers after its own call (c1) returns: c2 is nobody's. And r2, answered
    in c2's callback, did not cause c2: nobody's either."""
    c = Correlator()
    r1, r2 = loop_read(c, 10, 1), loop_read(c, 11, 2)
    c1, c2 = node_call(c, 12, r1), node_call(c, 13, r1, 5001)
    c.answered(r1, 50, after=c1)
    c.answered(r2, 50, after=c2)
    assert c1.parent_id == r1.span_id
    assert c2.parent_id == 0 and not c.awaits_client(c2)
    c.settle(c2)
    assert c2.trace_id not in (r1.trace_id, r2.trace_id)


def test_node_calls_of_a_request_that_ends_unanswered_stop_waiting() -> None:
    c = Correlator()
    r = loop_read(c, 10, 1)
    out = node_call(c, 11, r)
    c.ended(r)
    assert out.parent_id == 0 and not c.awaits_client(out)
