// SPDX-License-Identifier: Apache-2.0
// Callback context for Node.js; loaded with sockets.bpf.c (put before it: its
// data events carry the callback, and its reads note themselves here).
//
// Node runs every request on one thread, in callbacks: libuv reads a socket,
// then Node calls into JavaScript (node::InternalMakeCallback, exported by the
// node executable) with what was read, and the promises and ticks that
// callback settles run before it returns. A socket call made inside one names
// that callback, and the socket whose read began it (its cause): the handler
// of a request runs in the callback its request's read began, and its answer
// is written in the callback its backend's response began. A new connection's
// first request is written in the callback its connect's completion began: its
// cause is that of the callback that called connect() (sockets.bpf.c keeps it). User space joins a
// call to a request only when both hold (see processors/correlate.py).
//
//   InternalMakeCallback (entry)    a callback begins: a new id, and its cause
//                                   is the thread's last read before it
//   InternalMakeCallback (return)   and ends (callbacks nest: the outermost counts)
//
// Only registered processes (node_processes, set by user space) note their reads.

#include <uapi/linux/ptrace.h>

#define NODE_CALLBACK (1ULL << 63) // marks a callback id among asyncio task ids

struct node_callback {
    u64 id;    // NODE_CALLBACK | a number of its own
    u64 cause; // the socket whose read began it (0: none, e.g. a timer)
    u64 since; // when the outermost callback began
    u32 depth;
    u32 pad;
};

BPF_HASH(node_processes, u32, u8, 16384);                   // tgid, set by user space
BPF_HASH(node_callbacks, u32, struct node_callback, 16384); // by thread
BPF_HASH(node_last_read, u32, u64, 16384);                  // tid -> socket read last
BPF_ARRAY(node_callback_count, u64, 1);
// 1 once user space registered a process: until then a read looks nothing up (a
// hash lookup on every read of the node, about 60 ns measured, for no Node).
BPF_ARRAY(node_registered, u32, 1);

// A callback open this long is one whose return was never seen (its thread
// ended inside it): a new one replaces it.
#define NODE_CALLBACK_STALE_NS 1000000000ULL

int node_callback_enter(struct pt_regs *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 now = bpf_ktime_get_ns();
    struct node_callback *open = node_callbacks.lookup(&tid);
    if (open && now - open->since < NODE_CALLBACK_STALE_NS) {
        open->depth++;
        return 0;
    }
    int zero = 0;
    u64 *count = node_callback_count.lookup(&zero);
    if (!count)
        return 0;
    struct node_callback cb = {.id = NODE_CALLBACK | (__sync_fetch_and_add(count, 1) + 1),
                               .since = now,
                               .depth = 1};
    u64 *read = node_last_read.lookup(&tid);
    if (read) {
        cb.cause = *read;
        node_last_read.delete(&tid);
    }
    node_callbacks.update(&tid, &cb);
    return 0;
}

int node_callback_return(struct pt_regs *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct node_callback *open = node_callbacks.lookup(&tid);
    if (!open)
        return 0; // entered before its entry probe was attached
    if (open->depth > 1)
        open->depth--;
    else
        node_callbacks.delete(&tid);
    return 0;
}

// sockets.bpf.c: the callback a Node thread runs now (0: none), and its cause.
static __always_inline u64 node_callback_of(u32 tid, u64 *cause) {
    struct node_callback *open = node_callbacks.lookup(&tid);
    if (!open)
        return 0;
    *cause = open->cause;
    return open->id;
}

// sockets.bpf.c: a registered process's thread read `skey` outside any
// callback: the next callback it begins is that read's.
static __always_inline void node_read(u32 tgid, u32 tid, u64 skey) {
    int zero = 0;
    u32 *registered = node_registered.lookup(&zero);
    if (!registered || !*registered)
        return;
    if (!node_processes.lookup(&tgid) || node_callbacks.lookup(&tid))
        return;
    node_last_read.update(&tid, &skey);
}

// sockets.bpf.c: the process exited (or runs a new program); a pid it had may
// come back as another.
static __always_inline void node_forget(u32 tgid) {
    node_processes.delete(&tgid);
}

// sockets.bpf.c: the thread exited (its id may come back as another's).
static __always_inline void node_forget_thread(u32 tid) {
    node_callbacks.delete(&tid);
    node_last_read.delete(&tid);
}
