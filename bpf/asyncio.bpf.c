// SPDX-License-Identifier: Apache-2.0
// asyncio task context for CPython (the C `_asyncio` module, 3.8 and later);
// loaded with sockets.bpf.c (put before it: its data events carry the task).
//
// An asyncio server serves many requests on one thread, so the thread names no
// request. The task does: every step of a task runs through `task_step_impl`,
// so a socket call made inside one names that task. A request's head is read in
// the event loop's callback, outside any task; the task that writes its answer
// is the one that served it, and user space joins the calls that task made
// meanwhile to that request.
//
//   task_step_impl (entry)   the thread runs this task now (its id, below)
//   task_step_impl (return)  and no longer (a uretprobe: CPython's C stack is
//                            plain, unlike Go's)
//   TaskObj_dealloc          the task is gone: its address may be reused by the
//                            next task, which gets a new id
//
// `task_step_impl`, not `task_step`: builds inline `task_step` into some of its
// callers (Debian's into both), never the step itself. A step that starts
// inside another (3.12's eager tasks start in their creator's step) is part of
// the outer one: its calls are the creator's, as if it were a plain call.
// Tasks are named by an id of their own, not their address: a task freed and its
// memory given to a new task would otherwise inherit the old one's calls.
// The task is the step's first argument up to 3.11, its second from 3.12 on (the
// module state comes first): one entry program per layout.

#include <uapi/linux/ptrace.h>

struct py_task_key {
    u32 tgid;
    u32 pad;
    u64 task; // the TaskObj's address
};

// The step a thread is in: the outermost task's id, and how deep steps nest.
struct py_step {
    u64 task;
    u64 since; // when the outermost step began
    u32 depth;
    u32 pad;
};

BPF_TABLE("lru_hash", struct py_task_key, u64, py_task_ids, 65536); // -> its id
BPF_HASH(py_steps, u32, struct py_step, 16384);                     // by thread
BPF_ARRAY(py_task_count, u64, 1);                                    // ids given so far

// A step still open this long is one whose return was never seen (probes
// detached mid-step): a new step replaces it. A real step this long (a loop
// blocked for a second) only gives a nested step its own task: never a wrong one.
#define PY_STEP_STALE_NS 1000000000ULL

static __always_inline int py_task_enters(u64 task) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = (u32)pid_tgid;
    u64 now = bpf_ktime_get_ns();
    struct py_step *open = py_steps.lookup(&tid);
    if (open && now - open->since < PY_STEP_STALE_NS) {
        open->depth++;
        return 0;
    }
    struct py_task_key key = {.tgid = pid_tgid >> 32, .task = task};
    u64 *known = py_task_ids.lookup(&key);
    u64 id;
    if (known) {
        id = *known;
    } else {
        int zero = 0;
        u64 *count = py_task_count.lookup(&zero);
        if (!count)
            return 0;
        id = __sync_fetch_and_add(count, 1) + 1;
        py_task_ids.update(&key, &id);
    }
    struct py_step step = {.task = id, .since = now, .depth = 1};
    py_steps.update(&tid, &step);
    return 0;
}

int py_task_step(struct pt_regs *ctx) { // task_step_impl(TaskObj *task, PyObject *exc)
    return py_task_enters(PT_REGS_PARM1(ctx));
}

int py_task_step_state(struct pt_regs *ctx) { // task_step_impl(asyncio_state *, TaskObj *, ...)
    return py_task_enters(PT_REGS_PARM2(ctx));
}

int py_task_step_return(struct pt_regs *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct py_step *open = py_steps.lookup(&tid);
    if (!open)
        return 0; // entered before its entry probe was attached
    if (open->depth > 1)
        open->depth--;
    else
        py_steps.delete(&tid);
    return 0;
}

int py_task_dealloc(struct pt_regs *ctx) { // TaskObj_dealloc(PyObject *self)
    struct py_task_key key = {.tgid = bpf_get_current_pid_tgid() >> 32,
                              .task = PT_REGS_PARM1(ctx)};
    py_task_ids.delete(&key);
    return 0;
}

// sockets.bpf.c: the thread exited (its id may come back as another's).
static __always_inline void py_forget_thread(u32 tid) {
    py_steps.delete(&tid);
}

// sockets.bpf.c: the asyncio task this thread runs now (0: none).
static __always_inline u64 py_running_task(u32 tid) {
    struct py_step *open = py_steps.lookup(&tid);
    return open ? open->task : 0;
}
