// On-CPU profiling: a perf_event program that every CPU runs SAMPLE_HZ times a
// second of CPU time, counting (process, thread name, user stack, kernel stack)
// in a hash map. Nothing is sent per sample: user space reads the counts once
// per interval, from one pair of maps while the kernel counts into the other
// (`active` says which), so a read never races the counting.
//
// Built with -DOFF_CPU, it also measures blocked time: a thread that leaves the
// CPU not runnable is noted with its stacks, and when it runs again the time it
// was away is added to those stacks (the sched_switch probe below).
//
// Built with -DTIE_IN next to the socket program, a sample taken on a thread
// that is reading an HTTP/1 request it has not answered carries that request's
// start (`serving`, kept by the socket program), and user space ties the sample
// to the request's span.
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>

struct sample_key {
    u32 pid;          // the process (tgid)
    u32 tid;          // the thread, for a sample tied to a request (else 0)
    s32 user_stack;   // ids in the stacks map; negative: none (a kernel thread,
    s32 kernel_stack; //   a stack the map had no room for)
    u64 request;      // the tied request's start (ns), 0: none
    char comm[16];    // the thread's name: a process gone before the read keeps one
};

BPF_HASH(counts_a, struct sample_key, u64, MAX_SAMPLE_KEYS);
BPF_HASH(counts_b, struct sample_key, u64, MAX_SAMPLE_KEYS);
BPF_STACK_TRACE(stacks_a, MAX_STACKS);
BPF_STACK_TRACE(stacks_b, MAX_STACKS);
// A stack map hashes a stack to one bucket and does not chain: a stack whose
// bucket another one holds is refused (-EEXIST), and a hot stack would lose all
// its samples to a cold one for the whole interval. It goes to its side's spill
// map instead, and its id is then MAX_STACKS + its id there.
BPF_STACK_TRACE(spill_a, SPILL_STACKS);
BPF_STACK_TRACE(spill_b, SPILL_STACKS);
BPF_ARRAY(active, u32, 1);
// [0] samples taken, [1] samples with no room to count, [2] stacks not stored
BPF_PERCPU_ARRAY(tallies, u64, 3);

#ifdef TIE_IN
struct serving {
    u64 sk;
    u64 start;
};
BPF_TABLE("extern", u32, struct serving, serving, 16384);
#endif

static __always_inline void tally(int index) {
    u64 *n = tallies.lookup(&index);
    if (n)
        *n += 1; // per CPU: no other writer
}

static __always_inline int stack_id(void *ctx, u32 which, u64 flags) {
    int id = which ? stacks_b.get_stackid(ctx, flags) : stacks_a.get_stackid(ctx, flags);
    if (id != -EEXIST)
        return id;
    id = which ? spill_b.get_stackid(ctx, flags) : spill_a.get_stackid(ctx, flags);
    return id < 0 ? id : MAX_STACKS + id;
}

static __always_inline void count(u32 which, struct sample_key *key) {
    u64 *n = which ? counts_b.lookup(key) : counts_a.lookup(key);
    if (n) {
        __sync_fetch_and_add(n, 1);
        return;
    }
    u64 one = 1;
    int err = which ? counts_b.update(key, &one) : counts_a.update(key, &one);
    if (err)
        tally(1);
}

#ifdef OFF_CPU
struct blocked {
    u64 ts;
    u32 pid;          // the process (tgid)
    s32 user_stack;   // in the stack map of `side`
    s32 kernel_stack;
    u32 side;         // the map pair active when it blocked: its time goes there
    char comm[16];
};
// Threads off the CPU now (an LRU: one that exits while blocked is forgotten).
// User space keeps the stacks these entries name when it clears a stack map.
BPF_TABLE("lru_hash", u32, struct blocked, off_since, 65536);
BPF_HASH(off_ns_a, struct sample_key, u64, MAX_SAMPLE_KEYS);
BPF_HASH(off_ns_b, struct sample_key, u64, MAX_SAMPLE_KEYS);

static __always_inline void add_off_ns(u32 side, struct sample_key *key, u64 ns) {
    u64 *n = side ? off_ns_b.lookup(key) : off_ns_a.lookup(key);
    if (n) {
        __sync_fetch_and_add(n, ns);
        return;
    }
    int err = side ? off_ns_b.insert(key, &ns) : off_ns_a.insert(key, &ns);
    if (!err)
        return;
    n = side ? off_ns_b.lookup(key) : off_ns_a.lookup(key); // another CPU added it first
    if (n)
        __sync_fetch_and_add(n, ns);
    else
        tally(1);
}

// Runs in the thread leaving the CPU (prev): its stacks are the current ones.
TRACEPOINT_PROBE(sched, sched_switch) {
    u64 now = bpf_ktime_get_ns();
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    u32 prev = args->prev_pid;
    int zero = 0;
    // blocked: a task state below TASK_REPORT_MAX (0x100, "R+": preempted, runnable)
    if (prev && (args->prev_state & 0xff) && pid != SELF_TGID
#ifdef TARGET_PID
        && pid == TARGET_PID
#endif
    ) {
        u32 *active_map = active.lookup(&zero);
        u32 which = active_map ? *active_map : 0;
        struct blocked s = {.ts = now, .pid = pid, .side = which};
        s.user_stack = stack_id(args, which, BPF_F_USER_STACK);
        s.kernel_stack = stack_id(args, which, 0);
        if ((s.user_stack < 0 && s.user_stack != -EFAULT)
            || (s.kernel_stack < 0 && s.kernel_stack != -EFAULT))
            tally(2); // counted as a sample's would be: its time will show no stack
        bpf_get_current_comm(&s.comm, sizeof(s.comm));
        off_since.update(&prev, &s);
    }
    u32 next = args->next_pid;
    struct blocked *s = off_since.lookup(&next);
    if (s) {
        struct sample_key key = {.pid = s->pid, .user_stack = s->user_stack,
                                 .kernel_stack = s->kernel_stack};
        __builtin_memcpy(key.comm, s->comm, sizeof(key.comm));
        add_off_ns(s->side, &key, now > s->ts ? now - s->ts : 0);
        off_since.delete(&next);
    }
    return 0;
}
#endif

int on_cpu_sample(struct bpf_perf_event_data *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    u32 tid = id;
    if (tid == 0 || pid == SELF_TGID)
        return 0; // the idle task; the collector itself
#ifdef TARGET_PID
    if (pid != TARGET_PID)
        return 0;
#endif
    tally(0);
    struct sample_key key = {.pid = pid};
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
#ifdef TIE_IN
    struct serving *s = serving.lookup(&tid);
    if (s) {
        key.tid = tid;
        key.request = s->start;
    }
#endif
    int zero = 0;
    u32 *active_map = active.lookup(&zero);
    u32 which = active_map ? *active_map : 0;
    key.user_stack = stack_id(ctx, which, BPF_F_USER_STACK);
    key.kernel_stack = stack_id(ctx, which, 0);
    // -EFAULT: no such stack (a kernel thread's user one, a user-mode sample's
    // kernel one); anything else: the map had no room
    if ((key.user_stack < 0 && key.user_stack != -EFAULT)
        || (key.kernel_stack < 0 && key.kernel_stack != -EFAULT))
        tally(2);
    count(which, &key);
    return 0;
}
