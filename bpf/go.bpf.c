// SPDX-License-Identifier: Apache-2.0
// Goroutine context for Go programs (amd64, Go 1.18 and later: the register ABI);
// loaded with sockets.bpf.c (put before it: its data events carry a go_context).
//
// A Go request moves between OS threads and goroutines: a connection's goroutine
// reads it and runs its handler, and net/http's client writes the handler's
// request from the connection's own writeLoop goroutine. So the data events of a
// Go process (one user space put in `go_processes`, with a cookie of its own that
// keys its links, so a reused pid never meets an earlier process's) carry the
// goroutine their bytes are moved for, their "owner", and user space keys
// in-process context by (pid, owner) where other processes use the thread:
//
//   socket tracepoints      the running goroutine: R14 at the syscall (Go's g
//                           register), trusted only if the user stack pointer
//                           lies inside that g's stack; a goroutine that reads
//                           a server's request serves it itself
//   net/http.(*Transport).roundTrip   the request is sent for its caller
//   net/http.(*Request).write         the goroutine writing it works for that
//                                     caller, until its next request
//   runtime.goexit1         a goroutine ended: its link goes (g structs are reused)
//
// A link says when it was made (`until`): user space lets it name only a server
// request that began before, so a late write never joins the owner's next request.
// Goroutines a handler starts are not linked to it: a goroutine can outlive the
// request it was started in and write for others (gRPC-Go's connection writer,
// pools), and a link by birth would then name the wrong request.
// No uretprobe: returning through one breaks the Go runtime's stack unwinding.
// The uprobes sit on the JBE of each function's stack check, not its entry (the
// kernel emulates a branch; the entry's CMPQ would be stepped out of line, a
// debug trap that cost ~24 us a hit here): arguments, SP and R14 are the entry's
// there. A stack about to grow (the JBE taken) runs the function again from its
// start, so that pass is skipped.

#include <uapi/linux/ptrace.h>

#if defined(__x86_64__) && !defined(NO_TASK_REGS) // the loader's: bpf_task_pt_regs, BTF
#define GOROUTINES 1
#endif

struct go_key {
    u64 cookie; // the process's, from go_processes
    u64 ptr;    // a g *, or an *http.Request
};

// What a data event says of the goroutine it moves bytes for (owner 0: not Go).
// Also what the maps hold.
struct go_context {
    u64 owner; // the goroutine (g *) whose request the bytes are moved for
    u64 until; // when the link to it was made (0: the goroutine is its own owner)
};

BPF_HASH(go_processes, u32, u64, 16384); // tgid -> cookie, set by user space
BPF_TABLE("lru_hash", struct go_key, struct go_context, go_links, 65536);   // by goroutine
BPF_TABLE("lru_hash", struct go_key, struct go_context, go_requests, 16384); // by *Request

// g.stack (lo, hi), Go's first field in every version, holds `sp`: `g` is a live g.
static __always_inline int g_owns_stack(u64 g, u64 sp) {
    u64 stack[2] = {};
    if (!g || bpf_probe_read_user(stack, sizeof(stack), (void *)g))
        return 0;
    return stack[0] < sp && sp <= stack[1];
}

#define EFLAGS_CF 0x01
#define EFLAGS_ZF 0x40

// At the stack check's JBE: taken (CF or ZF), the stack grows and the function
// starts over; the probe fires again then.
static __always_inline int go_stack_grows(struct pt_regs *ctx) {
    return (ctx->flags & (EFLAGS_CF | EFLAGS_ZF)) != 0;
}

// The cookie keying a probed Go process's links; 0 when it is not one.
static __always_inline u64 go_cookie(u32 tgid) {
    u64 *cookie = go_processes.lookup(&tgid);
    return cookie ? *cookie : 0;
}

// sockets.bpf.c: the goroutine a Go process's data event moves bytes for.
static __always_inline void go_context(struct go_context *out, u32 tgid, u8 server_read) {
    out->owner = 0;
    out->until = 0;
#ifdef GOROUTINES
    u64 cookie = go_cookie(tgid);
    if (!cookie)
        return;
    struct task_struct *task = bpf_get_current_task_btf();
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
    u64 g = 0, sp = 0;
    bpf_probe_read_kernel(&g, sizeof(g), &regs->r14);
    bpf_probe_read_kernel(&sp, sizeof(sp), &regs->sp);
    if (!g_owns_stack(g, sp))
        return; // not Go code making this syscall (cgo): no goroutine is named
    struct go_key key = {.cookie = cookie, .ptr = g};
    struct go_context *link = go_links.lookup(&key);
    if (!link) {
        out->owner = g;
        return;
    }
    if (server_read) { // reading a server's request: from here on it works for itself
        go_links.delete(&key);
        out->owner = g;
        return;
    }
    out->owner = link->owner;
    out->until = link->until;
#endif
}

// sockets.bpf.c: the process exited; a pid it had may come back as another.
static __always_inline void go_forget(u32 tgid) {
    go_processes.delete(&tgid);
}

#ifdef GOROUTINES
int go_goexit1(struct pt_regs *ctx) {
    u64 cookie = go_cookie(bpf_get_current_pid_tgid() >> 32);
    if (!cookie || go_stack_grows(ctx) || !g_owns_stack(ctx->r14, ctx->sp))
        return 0;
    struct go_key key = {.cookie = cookie, .ptr = ctx->r14};
    go_links.delete(&key);
    return 0;
}

// (*Transport).roundTrip(req *Request): the request goes out for its caller.
int go_round_trip(struct pt_regs *ctx) {
    u64 cookie = go_cookie(bpf_get_current_pid_tgid() >> 32);
    if (!cookie || go_stack_grows(ctx) || !g_owns_stack(ctx->r14, ctx->sp))
        return 0;
    struct go_context link = {.owner = ctx->r14, .until = bpf_ktime_get_ns()};
    struct go_key req = {.cookie = cookie, .ptr = ctx->bx};
    go_requests.update(&req, &link);
    return 0;
}

// (*Request).write(w, ...): the writing goroutine (a connection's writeLoop) works
// for the request's sender until its next request; a request not seen entering
// roundTrip (or written a second time: a retry) is nobody's.
int go_request_write(struct pt_regs *ctx) {
    u64 cookie = go_cookie(bpf_get_current_pid_tgid() >> 32);
    if (!cookie || go_stack_grows(ctx) || !g_owns_stack(ctx->r14, ctx->sp))
        return 0;
    struct go_key writer = {.cookie = cookie, .ptr = ctx->r14};
    struct go_key req = {.cookie = cookie, .ptr = ctx->ax};
    struct go_context *sent = go_requests.lookup(&req);
    if (!sent) {
        go_links.delete(&writer);
        return 0;
    }
    struct go_context link = *sent;
    go_requests.delete(&req);
    go_links.update(&writer, &link);
    return 0;
}
#endif
