// SPDX-License-Identifier: Apache-2.0
// Socket receiver: TCP connection lifecycle and payload capture, tracepoints only.
//
// How it maps fd -> sock -> 4-tuple without reading kernel structs:
//   sys_enter_{read,write,...}   remember the user buffer of the thread's syscall
//   sock:sock_{send,recv}_length fire inside that syscall with the struct sock *
//                                and the byte count: capture the first bytes here
//   sys_exit_{...}               forget the buffer
//   sock:inet_sock_set_state     gives sock -> 4-tuple, role and the close
// Only tracepoint fields are read (a stable ABI); no kernel struct layout is used.
//
// A request costs a fixed number of events, not one per syscall: user space
// writes into `quiet` the stream offset up to which it does not need bytes
// (the rest of a body it has already sized), and syscalls that end before that
// offset only advance the connection's counters. Entries carry the
// connection's generation, so a late write for a closed connection can never
// silence a new one that reuses the same sock address.
//
// UDP: only DNS. A datagram's peer comes from the syscall (sendto's address,
// sendmsg's msg_name) or from the socket's connect() (kept per pid+fd, as
// resolvers connect their UDP sockets); datagrams whose peer port is not a
// DNS port (53, and those the operator pins to dns) are not sent. Receives on unconnected sockets have no peer yet
// when the tracepoint fires and are not sent either (server-side DNS).

#include <uapi/linux/ptrace.h>

#ifndef CAPTURE_BYTES
#define CAPTURE_BYTES 1024 // power of two, set by the loader
#endif
#ifndef MAX_CONNS
#define MAX_CONNS 65536
#endif
#ifndef CLOSED_CONNS
#define CLOSED_CONNS 8192
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048
#endif
#define SERVICE_NAME_BYTES 64
#define MAX_ENV_SCANNED 128 // environment entries looked at for OTEL_SERVICE_NAME
#ifndef WINDOW_SMALL
// A receive window under this many bytes throttles any sender: Linux advertises
// 64 KiB or more on a healthy connection (tcp_rmem's default), so a window this
// small is a receiver that reads slowly or has a shrunk buffer.
#define WINDOW_SMALL 32768
#endif
#ifndef IS_DNS_PORT // the loader defines it from the configured ports
#define IS_DNS_PORT(port) ((port) == 53)
#endif
#define MMSGHDR_SIZE 64 // struct mmsghdr: struct user_msghdr (56) + msg_len + padding
#define MAX_IOV 64 // gRPC writes a frame as many small slices (one iovec each)

#define AF_INET 2
#define AF_INET6 10
#define PROTO_TCP 6
#define PROTO_UDP 17
#define MSG_PEEK 2

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7

enum event_kind {
    EV_DATA = 1, EV_OPEN = 2, EV_CLOSE = 3, EV_SELF = 4, EV_DGRAM = 5, EV_RESET = 6, EV_SOCKOPT = 7,
    EV_OUTLIER = 8, EV_EXEC = 9
};
enum direction { DIR_EGRESS = 0, DIR_INGRESS = 1 };
enum role { ROLE_UNKNOWN = 0, ROLE_CLIENT = 1, ROLE_SERVER = 2 };
enum buf_kind { BUF_NONE = 0, BUF_PLAIN = 1, BUF_IOVEC = 2, BUF_MSGHDR = 3, BUF_MMSG = 4 };

// The syscall's registers are readable (receive_io, current_io): the loader's
// NO_TASK_REGS says where they are not (bpf_task_pt_regs, BTF).
#if defined(__x86_64__) && !defined(NO_TASK_REGS)
#define RECEIVES_FROM_REGS 1
#endif

// The syscall a thread is in, between sys_enter and sys_exit.
struct active_io {
    u64 buf;    // buffer, iovec array, msghdr or mmsghdr array, as `kind` says
    u64 iovcnt; // iovecs, or messages of a sendmmsg/recvmmsg
    u64 ts;     // syscall entry: when the process handed over what it sends
    u64 addr;   // sendto's destination address (user pointer), 0 if none
    u64 want;   // bytes a write/sendto/sendfile asked to send (0: not known)
    u64 sk;     // the TCP socket a send moved bytes on (set by the transfer)
    u64 waited; // until when this call's time is in the socket's send_wait_ns
    u32 fd;
    u32 kind;
    u32 index;  // the message of a sendmmsg/recvmmsg the next transfer is
    u32 live;   // inside the syscall: its number + 1 (0 after it; the entry stays: active_io)
};

// A UDP peer as connect() or sendto() named it.
struct peer {
    u16 family;
    u16 port; // host order
    u8 addr[16];
};

struct conn_state {
    u64 gen;      // creation time: tells a reused sock address from its predecessor
    u64 bytes[2]; // stream offset per direction
    u32 pid;
    u8 role;
    u8 self;
    u8 resets_in;  // RSTs received (saturating)
    u8 resets_out; // RSTs sent (saturating)
    u32 retrans;   // segments retransmitted (tcp:tcp_retransmit_skb)
    u32 srtt_us;   // smoothed RTT at the last segment received (tcp:tcp_probe)
    u32 tls;       // used inside OpenSSL calls: its bytes are ciphertext, never sent
    u32 window_small; // segments seen while a receive window was under WINDOW_SMALL
    u64 send_wait_ns; // time the owner's sends waited for room in the send buffer
    u64 full_at;      // a send came back short then: the buffer was full
    u16 port;         // its local port, when its handshake was seen
    u16 peer_port;    // and the other end's
    u8 family;
    u8 uncounted;     // talks to the collector (own_ports): its requests are not counted
    u8 shed;          // its current exchange is shed (span budget): nothing of it is sent
    u8 shed_gap;      // per direction (1 << dir): calls were shed since the last one sent
    u8 peer[16];
    u64 connect_cause; // a Node client's: the socket whose read began the callback
                       // that connected it (node.bpf.c; 0: none)
    u32 pg_database;   // PostgreSQL: FNV-1a of its database's name (0: start-up not seen)
    u8 pg_unnamed;     // PostgreSQL: its start-up was read, its database's name was not
    u8 parser;         // the counting program its calls go to (PARSE_*, count_and_send),
    u8 pad_pg[2];      // once one recognised a command (PARSE_HTTP: by their first bytes)
    u32 quiet_seen[2]; // per direction: quiet_writes when its `quiet` entry was last missing
};

// A thread inside an OpenSSL call (tls.bpf.c's uprobes): the socket the call
// moves bytes on is learnt here, from the socket tracepoints that fire inside it.
struct ssl_call {
    u64 ssl;      // the SSL *
    u64 buf;      // plaintext buffer
    u64 num;      // its length (what a write hands over)
    u64 out_len;  // SSL_read_ex/SSL_write_ex: where the byte count goes
    u64 ts;       // entry
    u64 sk;       // the socket, once a transfer inside the call names it
    u32 fd;
    u16 depth;    // nested SSL_* calls of the same thread
    u8 dir;       // DIR_EGRESS (write), DIR_INGRESS (read), 2 (handshake)
    u8 emitted;   // a write's plaintext was sent at its first socket transfer
};

// tls.bpf.c: a write's plaintext, sent when its first ciphertext reaches the socket.
// 1: its event is ready in `scratch`, for the caller to send.
static __always_inline int tls_write_seen(struct ssl_call *call, u64 sk, u32 tgid, u32 tid);

struct quiet_key {
    u64 sk;
    u64 gen;
    u32 dir;
    u32 pad;
};

// Every event starts with `kind`; user space dispatches on it.
struct data_event {
    u8 kind;
    u8 dir;
    u8 role;
    u8 has_payload;
    u32 pid;
    u32 tid;
    u32 fd;
    u64 sk;
    u64 gen;
    u64 ts;
    u64 offset;     // stream offset of the syscall's first byte
    u64 cap_offset; // stream offset of the first captured byte
    u32 len;        // bytes the syscall moved
    u32 captured;   // bytes in data[]
    char comm[16];  // names the process even if it exits before user space looks
    struct peer peer; // EV_DGRAM only: the datagram's peer
    u32 retrans;      // the connection's TCP counters when the call ended
    u32 srtt_us;
    u8 tls;           // plaintext from OpenSSL (tls.bpf.c); offsets are the plaintext stream's
    u8 red_counted;   // the HTTP/1 request starting at its first byte is counted here (red_*)
    u8 after_shed;    // calls before this one in its direction were shed (span budget)
    u8 pad2;
    u32 send_wait_us; // the connection's send_wait_ns before this call began
    u32 window_small;
    u32 retrans_stamp; // retransmits_total + 1 when `retrans` was read (0: not read)
    u32 pad3;          // keeps data[] 8-byte aligned (user space decodes the same header)
    u64 rand;         // red_counted: the request's 56-bit random value (span budget)
    u64 threshold;    // and the threshold it was kept against (0: no budget)
    struct go_context go; // a Go process's: the goroutine it moves bytes for (go.bpf.c)
    u64 task;             // the asyncio task (asyncio.bpf.c) or Node callback (node.bpf.c)
                          // running the call (0: none)
    u64 task_cause;       // a Node callback's: the socket whose read began it (0: none)
    u8 data[4 * CAPTURE_BYTES]; // only `captured` bytes are sent
};

// EV_EXEC: a process runs a new program (only where goroutines can be followed).
struct exec_event {
    u8 kind;
    u8 pad[3];
    u32 pid;
};

struct conn_event {
    u8 kind;
    u8 role;
    u16 family;
    u32 pid;
    u64 sk;
    u64 ts;
    u64 bytes_egress;
    u64 bytes_ingress;
    u16 sport;
    u16 dport;
    u8 saddr[16];
    u8 daddr[16];
    u64 opened;     // EV_CLOSE: the connection's creation time (0 if it predates us)
    u32 retrans;    // EV_CLOSE: TCP counters over the connection's life
    u32 srtt_us;
    u8 resets_in;
    u8 resets_out;
    u8 oldstate;    // EV_CLOSE: the state it left (SYN_SENT: the connect failed)
    u8 pad[5];
};

// A socket buffer size set on a socket past its handshake (the window scale is
// fixed then: a smaller receive buffer throttles the peer instead).
struct sockopt_event {
    u8 kind;
    u8 pad[3];
    u32 pid;
    u32 fd;
    s32 optname;
    s64 value;
    u64 ts;
    char comm[16];
};

// A thread's entry stays between its syscalls (`live` says whether it is in
// one) and is written in place: an update takes a fresh element from the free
// list and a delete gives it back, twice per send on the node (measured: the
// syscall probes' largest cost). Where the kernel has task storage (the
// loader's TASK_STORAGE: BTF, Linux 5.11) it hangs off the thread itself: no
// key hashed, three times a send, and gone with the thread. Else an LRU hash:
// when full, an idle thread's is taken.
#ifdef TASK_STORAGE
BPF_TASK_STORAGE(active_io, struct active_io);

// The current thread's entry; with `create`, made if it has none.
static __always_inline struct active_io *thread_io(u8 create) {
    return active_io.task_storage_get(bpf_get_current_task_btf(), 0,
                                      create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}
#else
BPF_TABLE("lru_hash", u32, struct active_io, active_io, 16384);

static __always_inline struct active_io *thread_io(u8 create) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct active_io *io = active_io.lookup(&tid);
    if (io || !create)
        return io;
    struct active_io fresh = {};
    active_io.update(&tid, &fresh);
    return active_io.lookup(&tid);
}
#endif

#ifdef RECEIVES_FROM_REGS
// The registers the current thread's syscall saved. struct pt_regs is the
// syscall ABI's layout, the same in every kernel, and the helper's pointer is
// typed (BTF): its fields are read with plain loads, no bpf_probe_read_kernel.
static __always_inline struct pt_regs *syscall_regs(void) {
    return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

// The number of the syscall the current thread is in.
static __always_inline u64 syscall_in_progress(void) {
    return syscall_regs()->orig_ax;
}
#endif

// The syscall the current thread is in, 0 outside one. Where its registers are
// readable, no exit probe marks the end of a send (SYSCALL_EXIT): the entry is
// this call's only if it was made for the syscall in progress. Every call of a
// probed syscall passes its entry probe, so a number that matches is this call's;
// one that does not is an earlier call's (a send from io_uring_enter, splice).
static __always_inline struct active_io *current_io(void) {
    struct active_io *io = thread_io(0);
    if (!io || !io->live)
        return 0;
#ifdef RECEIVES_FROM_REGS
    if (io->live != syscall_in_progress() + 1)
        return 0;
#endif
    return io;
}

// The collector's own pid, set by user space once loaded: its own sockets are
// not traced. A map, not a compiled-in constant, so one compiled program serves
// every run (receivers/program_cache.py). Unset, it matches no process.
BPF_ARRAY(self_tgid, u32, 1);
static __always_inline u32 collector_tgid(void) {
    int zero = 0;
    u32 *pid = self_tgid.lookup(&zero);
    return pid && *pid ? *pid : (u32)-1;
}
#define SELF_TGID collector_tgid()
// What a socket's own calls said of it, by (tgid << 32 | fd): FACT_* bits.
#define FACT_HANDSHAKEN 1 // accepted, or connect()ed: its window scale is fixed
#define FACT_NODELAY_SET 2 // setsockopt(TCP_NODELAY) seen, its value in FACT_NODELAY_ON
#define FACT_NODELAY_ON 4
#define FACT_FRESH 8 // created since we started: no FACT_NODELAY_SET means Nagle is on
BPF_TABLE("lru_hash", u64, u8, socket_facts, 65536);

static __always_inline void add_fact(u64 key, u8 fact) {
    u8 *facts = socket_facts.lookup(&key);
    u8 now = (facts ? *facts : 0) | fact;
    socket_facts.update(&key, &now);
}

// (tgid << 32 | fd) -> the address the socket connect()ed to, for UDP peers.
BPF_TABLE("lru_hash", u64, struct peer, connected, 16384);
// LRU: a close we never saw (socket opened before us, lost event) cannot leak entries.
BPF_TABLE("lru_hash", u64, struct conn_state, conns, MAX_CONNS);
// Retransmits counted on every tracked connection since the programs loaded.
// User space maps it: while it still reads what an event's retrans_stamp says,
// that event's `retrans` is its connection's count now, and no syscall is needed
// to learn it (one a request otherwise: a server's answer is held for it).
BPF_F_TABLE("array", u32, u64, retransmits_total, 1, BPF_F_MMAPABLE);
// Connections the kernel has closed, until their address is reused: the owner can
// still read what arrived before the close (an answer after a FIN or a RST), and
// those bytes belong to the closed connection, not to a new one at that address.
// Apart from `conns`, so a burst of closes never evicts a live connection.
BPF_TABLE("lru_hash", u64, struct conn_state, closed_conns, CLOSED_CONNS);
BPF_TABLE("lru_hash", struct quiet_key, u64, quiet, MAX_CONNS);
// How many times user space has written `quiet` (it counts each write after making
// it). A connection direction whose entry was missing is looked up again only once
// this has moved: a miss cost a hash lookup a transfer (about 80 ns, measured),
// and most connections never get an entry.
BPF_ARRAY(quiet_writes, u32, 1);
BPF_HASH(ssl_calls, u32, struct ssl_call, 16384);
// Entries in ssl_calls (OpenSSL calls in progress on the node): while none is, a
// transfer looks nothing up there (a hash lookup that missed on nearly every
// call, about 25 ns measured).
BPF_ARRAY(ssl_calls_open, u64, 1);

// ssl_calls gained (1) or lost (-1) an entry.
static __always_inline void ssl_call_counted(s64 change) {
    int zero = 0;
    u64 *open = ssl_calls_open.lookup(&zero);
    if (open)
        __sync_fetch_and_add(open, change);
}

// The OpenSSL call thread `tid` is in, if any.
static __always_inline struct ssl_call *ssl_call_of(u32 tid) {
    int zero = 0;
    u64 *open = ssl_calls_open.lookup(&zero);
    return open && *(volatile u64 *)open ? ssl_calls.lookup(&tid) : 0;
}

// A process's name as exec set it, by tgid. A thread's own name ("isc-net-0000"
// in dig) would name a short-lived client that exits before user space reads /proc.
struct task_name { char comm[16]; };
BPF_TABLE("lru_hash", u32, struct task_name, process_names, 32768);
// OTEL_SERVICE_NAME at exec: by the exec'ing thread until the exec succeeds, then
// by tgid until the id is reused (user space reads it when /proc has gone).
struct service_name { char name[SERVICE_NAME_BYTES]; };
BPF_TABLE("lru_hash", u32, struct service_name, exec_services, 1024);
BPF_TABLE("lru_hash", u32, struct service_name, service_names, 32768);
BPF_PERCPU_ARRAY(scratch, struct data_event, 1);
BPF_PERCPU_ARRAY(lost, u64, 2); // [0] records lost, [1] written at a second try
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
// Where a record goes when `events` refuses it with room to spare: its lock is
// another ring's, so a writer whose CPU the hypervisor paused while it held the
// first one's lock (this kernel's ring lock gives up after 250 ms) stops no one.
BPF_RINGBUF_OUTPUT(spare_events, 64);

// The state of a live connection, or of one closed so recently that its owner
// is still reading what came before the close.
static __always_inline struct conn_state *conn_of(u64 skey) {
    struct conn_state *cs = conns.lookup(&skey);
    return cs ? cs : closed_conns.lookup(&skey);
}

static __always_inline void count_lost(void) {
    int zero = 0;
    u64 *n = lost.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline void count_retried(void) {
    int one = 1;
    u64 *n = lost.lookup(&one);
    if (n)
        __sync_fetch_and_add(n, 1);
}

// A write into the ring buffer, or the spare one: a reservation can fail with
// room to spare (one record in a run of hundreds of thousands, 32 MiB nearly
// empty, and a second try at once failed too); counted as retried. Both full:
// counted as lost.
// What the programs wrote to `events` [0], as its producer position counts it (a
// record's 8-byte header, the whole rounded up to 8), and its consumer position,
// which user space writes after each read [1]; its size [2], written by user
// space when the span budget is adaptive (0: not watched). bcc's programs cannot
// ask the ring itself (bpf_ringbuf_query wants a map its rewriter does not give).
BPF_ARRAY(ring_fill, u64, 3);

static __always_inline void count_written(u32 size) {
    int zero = 0;
    u64 *written = ring_fill.lookup(&zero);
    if (written)
        __sync_fetch_and_add(written, (size + 8 + 7) & ~7);
}

static __always_inline void ring_output(void *data, u32 size) {
    if (events.ringbuf_output(data, size, BPF_RB_NO_WAKEUP) == 0) {
        count_written(size);
        return;
    }
    if (spare_events.ringbuf_output(data, size, BPF_RB_NO_WAKEUP) == 0)
        count_retried();
    else
        count_lost();
}

static __always_inline struct conn_event *reserve_conn_event(void) {
    struct conn_event *ce = events.ringbuf_reserve(sizeof(struct conn_event));
    if (ce) {
        count_written(sizeof(struct conn_event));
    } else {
        ce = spare_events.ringbuf_reserve(sizeof(struct conn_event));
        if (ce)
            count_retried();
    }
    return ce;
}

// The name events carry: the process's, when it exec'd since we started; else the
// calling thread's (processes that old are still there for user space to read).
static __always_inline void process_comm(char *comm, u32 tgid) {
    struct task_name *name = process_names.lookup(&tgid);
    if (name)
        __builtin_memcpy(comm, name->comm, sizeof(name->comm));
    else
        bpf_get_current_comm(comm, sizeof(name->comm));
}

static __always_inline void remember_io_to(int nr, u64 buf, u64 iovcnt, u32 fd, u32 kind,
                                           u64 addr, u64 want) {
    if ((bpf_get_current_pid_tgid() >> 32) == SELF_TGID)
        return;
    struct active_io io = {.buf = buf,
                           .iovcnt = iovcnt,
                           .ts = bpf_ktime_get_ns(),
                           .addr = addr,
                           .want = want,
                           .fd = fd,
                           .kind = kind,
                           .live = (u32)nr + 1};
    struct active_io *kept = thread_io(1);
    if (kept)
        __builtin_memcpy(kept, &io, sizeof(io));
}

static __always_inline void remember_io(int nr, u64 buf, u64 iovcnt, u32 fd, u32 kind) {
    remember_io_to(nr, buf, iovcnt, fd, kind, 0, 0);
}

// Read a user sockaddr_in / sockaddr_in6; 0 when it is neither.
static __always_inline int read_sockaddr(struct peer *p, u64 addr) {
    struct { u16 family; u16 port; u32 v4; u32 flow; u8 v6[16]; } sa = {};
    if (!addr || bpf_probe_read_user(&sa, sizeof(sa), (void *)addr))
        return 0;
    p->family = sa.family;
    p->port = __builtin_bswap16(sa.port); // network order on the wire; x86_64 and arm64 are little-endian
    if (sa.family == AF_INET)
        __builtin_memcpy(p->addr, &sa.v4, 4);
    else if (sa.family == AF_INET6)
        __builtin_memcpy(p->addr, sa.v6, 16);
    else
        return 0;
    return 1;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id & 0xffffffff00000000ULL) | (u32)args->fd;
    add_fact(key, FACT_HANDSHAKEN); // its SYN carries the window scale from now on
    struct peer p = {};
    if (read_sockaddr(&p, (u64)args->uservaddr) && IS_DNS_PORT(p.port))
        connected.update(&key, &p);
    else
        connected.delete(&key); // reconnected elsewhere, or dissolved (AF_UNSPEC)
    return 0;
}

#define SOL_SOCKET 1
#define SO_SNDBUF 7
#define SO_RCVBUF 8
#define SO_SNDBUFFORCE 32
#define SO_RCVBUFFORCE 33

#define IPPROTO_TCP 6
#define TCP_NODELAY 1

static __always_inline u64 fd_key(u32 fd) {
    return (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | fd;
}

// A new socket at this fd: whatever was said of the fd's earlier socket is void.
TRACEPOINT_PROBE(syscalls, sys_exit_socket) {
    if (args->ret >= 0) {
        u64 key = fd_key((u32)args->ret);
        u8 fresh = FACT_FRESH;
        socket_facts.update(&key, &fresh);
    }
    return 0;
}

static __always_inline void accepted(long ret) {
    if (ret >= 0) {
        u64 key = fd_key((u32)ret);
        u8 facts = FACT_HANDSHAKEN; // Nagle's setting comes from its listener: not known
        socket_facts.update(&key, &facts);
    }
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) {
    accepted(args->ret);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_accept) {
    accepted(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_setsockopt) {
    int optname = args->optname;
    int nodelay = args->level == IPPROTO_TCP && optname == TCP_NODELAY;
    if (!nodelay && (args->level != SOL_SOCKET ||
                     (optname != SO_RCVBUF && optname != SO_SNDBUF &&
                      optname != SO_RCVBUFFORCE && optname != SO_SNDBUFFORCE)))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) == SELF_TGID)
        return 0;
    int value = 0;
    if (args->optlen < sizeof(value) || bpf_probe_read_user(&value, sizeof(value), args->optval))
        return 0;
    u64 key = fd_key((u32)args->fd);
    if (nodelay) { // kept for user space to read when it names a Nagle stall
        u8 *facts = socket_facts.lookup(&key);
        u8 now = (facts ? *facts : 0) & ~FACT_NODELAY_ON;
        now |= FACT_NODELAY_SET | (value ? FACT_NODELAY_ON : 0);
        socket_facts.update(&key, &now);
        return 0;
    }
    u8 *facts = socket_facts.lookup(&key);
    if (!facts || !(*facts & FACT_HANDSHAKEN))
        return 0; // before connect() or on an accepted socket's listener: it takes effect
    struct sockopt_event ev = {.kind = EV_SOCKOPT,
                               .pid = id >> 32,
                               .fd = (u32)args->fd,
                               .optname = optname,
                               .value = value,
                               .ts = bpf_ktime_get_ns()};
    process_comm(ev.comm, id >> 32);
    ring_output(&ev, sizeof(ev));
    return 0;
}

static __always_inline void forget_io(void) {
    struct active_io *io = thread_io(0);
    if (io)
        io->live = 0;
}

// A send that moved less than it was asked to found the send buffer full: the
// owner now waits for room (in poll, for a non-blocking socket like nginx's),
// and that wait, until its next send, is the network's time, not the owner's.
// (A write's or sendto's is seen by its transfer where SYSCALL_EXIT hooks nothing.)
static __always_inline void forget_send(long ret) {
    struct active_io *io = current_io();
    if (!io)
        return;
    if (io->sk && ret >= 0 && (u64)ret < io->want) {
        u64 skey = io->sk;
        struct conn_state *cs = conns.lookup(&skey);
        if (cs && !cs->full_at)
            cs->full_at = bpf_ktime_get_ns();
    }
    io->live = 0;
}

// A syscall's exit probe, only where current_io cannot tell an ended call by
// the registers: elsewhere a probe run fewer per send on the node. The loader
// leaves them out of its list of tracepoints alike (receivers/sockets.py).
#ifdef RECEIVES_FROM_REGS
#define SYSCALL_EXIT(name, call)
#else
#define SYSCALL_EXIT(name, call)                                                  \
    TRACEPOINT_PROBE(syscalls, sys_exit_##name) {                                 \
        call;                                                                     \
        return 0;                                                                 \
    }
#endif

// Sends with a known length: a short return means the send buffer was full.
#define SEND_IO(name, field, length)                                              \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name) {                                \
        remember_io_to(args->__syscall_nr, (u64)args->field, 0, (u32)args->fd,    \
                       BUF_PLAIN, 0, (u64)args->length);                          \
        return 0;                                                                 \
    }                                                                             \
    SYSCALL_EXIT(name, forget_send(args->ret))

// The buffer argument's name differs per syscall (buf, ubuf, buff).
#define PLAIN_IO(name, field)                                                     \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name) {                                \
        remember_io(args->__syscall_nr, (u64)args->field, 0, (u32)args->fd,       \
                    BUF_PLAIN);                                                   \
        return 0;                                                                 \
    }                                                                             \
    SYSCALL_EXIT(name, forget_io())

#define IOVEC_IO(name)                                                            \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name) {                                \
        remember_io(args->__syscall_nr, (u64)args->vec, (u64)args->vlen,          \
                    (u32)args->fd, BUF_IOVEC);                                    \
        return 0;                                                                 \
    }                                                                             \
    SYSCALL_EXIT(name, forget_io())

#define MSGHDR_IO(name)                                                           \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name) {                                \
        remember_io(args->__syscall_nr, (u64)args->msg, 0, (u32)args->fd,         \
                    BUF_MSGHDR);                                                  \
        return 0;                                                                 \
    }                                                                             \
    SYSCALL_EXIT(name, forget_io())

// sendfile: no user buffer to capture, but its entry time ends a response. Its
// exit stays probed: a file goes out in many transfers, none of them its return.
TRACEPOINT_PROBE(syscalls, sys_enter_sendfile64) {
    remember_io_to(args->__syscall_nr, 0, 0, (u32)args->out_fd, BUF_NONE, 0,
                   (u64)args->count);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_exit_sendfile64) {
    forget_send(args->ret);
    return 0;
}

SEND_IO(write, buf, count)
#ifndef RECEIVES_FROM_REGS // else read from the caller's registers (receive_io)
PLAIN_IO(read, buf)
PLAIN_IO(recvfrom, ubuf)
IOVEC_IO(readv)
MSGHDR_IO(recvmsg)
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_sendto) {
    remember_io_to(args->__syscall_nr, (u64)args->buff, 0, (u32)args->fd, BUF_PLAIN,
                   (u64)args->addr, (u64)args->len);
    return 0;
}
SYSCALL_EXIT(sendto, forget_send(args->ret))

#define MMSG_IO(name)                                                             \
    TRACEPOINT_PROBE(syscalls, sys_enter_##name) {                                \
        remember_io(args->__syscall_nr, (u64)args->mmsg, (u64)args->vlen,         \
                    (u32)args->fd, BUF_MMSG);                                     \
        return 0;                                                                 \
    }                                                                             \
    SYSCALL_EXIT(name, forget_io())

// Resolvers send a name's A and AAAA queries with one sendmmsg.
MMSG_IO(sendmmsg)
MMSG_IO(recvmmsg)
IOVEC_IO(writev)
MSGHDR_IO(sendmsg)
// Architectures with separate send/recv syscalls get them through the loader's
// OPTIONAL_IO list (x86_64 routes both through sendto/recvfrom).
OPTIONAL_IO

// The receive a thread is in, as the transfer probes need it (buffer, fd).
// With RECEIVES_FROM_REGS (amd64, BTF, bpf_task_pt_regs) read,
// readv, recvfrom and recvmsg are not hooked: their arguments are still in the
// registers the syscall saved, so no map entry is made and deleted around every
// read on the node (a quarter of the programs' time per database
// statement). Other calls (recvmmsg, sends) have their active_io entry.
#ifdef RECEIVES_FROM_REGS
#define NR_READ 0
#define NR_READV 19
#define NR_RECVFROM 45
#define NR_RECVMSG 47
BPF_PERCPU_ARRAY(receive_args, struct active_io, 1);
#endif

static __always_inline struct active_io *receive_io(void) {
#ifdef RECEIVES_FROM_REGS
    struct pt_regs *regs = syscall_regs();
    u64 buf = regs->si;
    // Kernel threads and io_uring's workers have zeroed registers: no buffer.
    if (!buf)
        return 0;
    u64 nr = regs->orig_ax;
    u32 kind = nr == NR_READ || nr == NR_RECVFROM ? BUF_PLAIN
             : nr == NR_READV                     ? BUF_IOVEC
             : nr == NR_RECVMSG                   ? BUF_MSGHDR
                                                  : BUF_NONE;
    if (kind != BUF_NONE) {
        int zero = 0;
        struct active_io *io = receive_args.lookup(&zero);
        if (!io)
            return 0;
        __builtin_memset(io, 0, sizeof(*io));
        io->buf = buf;
        io->iovcnt = kind == BUF_IOVEC ? regs->dx : 0;
        io->fd = (u32)regs->di;
        io->kind = kind;
        return io;
    }
#endif
    return current_io(); // recvmmsg
}

// Clamp a length to the capture size in a way the verifier can see: the empty
// asm stops clang from dropping the mask after proving the clamp.
static __always_inline u32 bounded(u32 n, u32 limit) {
    if (n > limit)
        n = limit;
    asm volatile("" : "+r"(n));
    return n & ((2 * CAPTURE_BYTES) - 1);
}

// Loops over bytes, iovecs and environment entries. With may_goto (Linux 6.9:
// the kernel ends a loop once a budget of passes is spent) the verifier checks
// a body until its state stops changing, not once per pass: the programs verify
// in under a tenth of the time (the PostgreSQL counter's statement walk took it
// 513k instructions; 17k now). The state stops changing only if nothing it
// keeps counts the passes: each body reads its position from map memory (a
// number to the verifier) and ends itself within `n` passes, so the bounded
// loops older kernels get do the same. LLVM 14 has no may_goto: its bytes go
// in through asm goto (as libbpf's can_loop).
#ifdef HAVE_MAY_GOTO
#define PASSES(n) while (({                                                             \
    __label__ spent, more;                                                           \
    int more_ = 1;                                                                   \
    asm volatile goto("1: .byte 0xe5; .byte 0; .long ((%l[spent] - 1b - 8) / 8) & 0xffff;" \
                      " .short 0" :::: spent);                                       \
    goto more;                                                                       \
spent:                                                                               \
    more_ = 0;                                                                       \
more:                                                                                \
    more_;                                                                           \
}))
#else
#define PASSES(n) _Pragma("clang loop unroll(disable)") for (u32 pass_ = 0; pass_ < (n); pass_++)
#endif

// Where such a loop stands, in map memory (see PASSES).
struct walk {
    u32 i;
    u32 off; // capture_iovec: the bytes copied
};
BPF_PERCPU_ARRAY(walks, struct walk, 1);

// This CPU's walk, at its start.
static __always_inline volatile struct walk *walk_start(void) {
    int zero = 0;
    volatile struct walk *w = walks.lookup(&zero);
    if (w) {
        w->i = 0;
        w->off = 0;
    }
    return w;
}

// Copy up to `want` bytes from a user iovec array into ev->data.
static __always_inline u32 capture_iovec(struct data_event *ev, u64 vec, u64 vlen, u32 want) {
    volatile struct walk *w = walk_start();
    if (!w)
        return 0;
    PASSES(MAX_IOV) {
        u32 i = w->i, off = w->off;
        if (i >= MAX_IOV || i >= vlen || off >= want || off >= CAPTURE_BYTES)
            break;
        w->i = i + 1;
        struct { u64 base; u64 len; } iov = {};
        if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(vec + i * sizeof(iov))))
            break;
        u32 n = want - off;
        if (iov.len < n)
            n = iov.len;
        n = bounded(n, CAPTURE_BYTES);
        u32 at = bounded(off, CAPTURE_BYTES);
        if (bpf_probe_read_user(&ev->data[at], n, (void *)iov.base))
            break;
        w->off = off + n;
    }
    return w->off;
}

// The user msghdr this transfer moves (sendmsg, or the next message of a
// sendmmsg/recvmmsg: the tracepoint fires once per message); 0 for others.
static __always_inline u64 transfer_msghdr(struct active_io *io) {
    if (io->kind == BUF_MSGHDR)
        return io->buf;
    if (io->kind != BUF_MMSG)
        return 0;
    u32 i = io->index;
    if (i >= io->iovcnt)
        return 0;
    io->index = i + 1;
    return io->buf + (u64)i * MMSGHDR_SIZE;
}

// Capture from the syscall's buffer into ev->data; returns the bytes captured.
static __always_inline u32 capture(struct data_event *ev, struct active_io *io, u64 hdr,
                                   u64 buf, u32 want) {
    want = bounded(want, CAPTURE_BYTES);
    if (hdr) {
        struct { u64 iov; u64 iovlen; } m = {};
        // struct user_msghdr: msg_iov at offset 16, msg_iovlen at 24 (UAPI)
        if (bpf_probe_read_user(&m, sizeof(m), (void *)(hdr + 16)) == 0)
            return capture_iovec(ev, m.iov, m.iovlen, want);
    } else if (io->kind == BUF_PLAIN) {
        if (bpf_probe_read_user(ev->data, want, (void *)buf) == 0)
            return want;
    } else if (io->kind == BUF_IOVEC) {
        return capture_iovec(ev, buf, io->iovcnt, want);
    }
    return 0;
}

// A UDP datagram to or from a DNS server: one event, whole (up to the capture size).
static __always_inline int on_datagram(void *sk, int ret, int flags, u8 dir) {
    if (ret <= 0 || (dir == DIR_INGRESS && (flags & MSG_PEEK)))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (tgid == 0 || tgid == SELF_TGID)
        return 0;
    struct active_io *io = dir == DIR_INGRESS ? receive_io() : current_io();
    if (!io)
        return 0; // no syscall context: neither payload nor peer
    u64 hdr = transfer_msghdr(io);
    u64 addr = io->addr;
    if (hdr)
        bpf_probe_read_user(&addr, sizeof(addr), (void *)hdr); // msg_name
    int zero = 0;
    struct data_event *ev = scratch.lookup(&zero);
    if (!ev)
        return 0;
    __builtin_memset(&ev->peer, 0, sizeof(ev->peer));
    if (!(dir == DIR_EGRESS && read_sockaddr(&ev->peer, addr))) {
        u64 key = (id & 0xffffffff00000000ULL) | io->fd;
        struct peer *c = connected.lookup(&key);
        if (!c)
            return 0;
        ev->peer = *c;
    }
    if (!IS_DNS_PORT(ev->peer.port))
        return 0;
    ev->kind = EV_DGRAM;
    ev->dir = dir;
    ev->tls = 0;
    ev->retrans = 0;
    ev->retrans_stamp = 0;
    ev->srtt_us = 0;
    ev->role = ROLE_CLIENT;
    ev->pid = tgid;
    ev->tid = tid;
    ev->fd = io->fd;
    ev->sk = (u64)sk;
    ev->gen = 0;
    ev->ts = dir == DIR_EGRESS ? io->ts : bpf_ktime_get_ns();
    ev->offset = 0;
    ev->cap_offset = 0;
    ev->len = (u32)ret;
    ev->has_payload = 1;
    __builtin_memset(&ev->go, 0, sizeof(ev->go));
    process_comm(ev->comm, tgid);
    ev->captured = capture(ev, io, hdr, io->buf, (u32)ret);
    u32 size = offsetof(struct data_event, data) + bounded(ev->captured, CAPTURE_BYTES);
    ring_output(ev, size);
    return 0;
}


// ---- RED of HTTP/1 and Redis, counted here: exact at any rate ----------------
// A request is noted when the call that carries it (a server's read, a client's
// write) starts with a whole request line (and, for a client, its Host header),
// and counted when the first call of its answer starts with its final status
// line (or at the close, unanswered): by process, role, port, method, version,
// status, and the server's path or the client's Host and peer, with the
// duration's bucket. The request's event says so (red_counted), and user space
// counts every other request from its span: TLS plaintext, a request sent
// while one is unanswered (pipelining), one not at a call's start. User space
// reads the counts (names the route, the service) once per scan, whatever it
// could or could not keep up with.
// A Redis command is noted the same way when its call holds it alone (its
// array's lengths end at or past the call's end) and counted, on the client's
// side only (a database server's side gets no span or metric), when a reply
// begins a call: by process, peer, command name and error code. A server's
// side is noted too, so both ends of one command are shed alike.
// A PostgreSQL simple Query the same way when its call holds it alone, counted
// when its answer begins: by its text's fingerprint and its connection's
// database (red_pg_query), and its SQLSTATE when the answer's first call holds
// an ErrorResponse.
#define RED_METHOD 12
#define RED_PATH 64
#define RED_SERIES 8192
#define RED_HOST 64
// Bytes of a client's request searched for its Host header (clients send it first
// or nearly: past this, the span counts it); within the event's data[].
#define RED_HEADERS (4 * CAPTURE_BYTES - 8 < 256 ? 4 * CAPTURE_BYTES - 8 : 256)
// HTTP_BUCKETS in otel_ebpf/metrics.py and one past them (15), or for Redis
// KERNEL_BUCKETS there (16): the database histogram's bounds and the service
// graph's (HTTP's) together, so user space can sum the buckets into either.
#define RED_BUCKETS 16
#define RED_HTTP 0      // red_key.proto
#define RED_REDIS 1
#define RED_PG 2
#define REDIS_NAME 32   // bytes of a command's name kept (in key.path), its NUL among them
#define REDIS_ERROR 32  // bytes of an error reply's code kept (in key.host)
#define REDIS_STEPS 48  // bytes of argument headers walked to tell a call holds one command
#define DB_OK 1         // key.status of an answered command or statement (0: unanswered)
#define DB_FAILED 2     // and of one answered with an error
#define PARSE_HTTP 0    // the request parser a counting program has (count_and_send)
#define PARSE_REDIS 1
#define PARSE_PG 2
#define PARSE_STATUS_LINE 3 // not a program: an HTTP answer counted by the transfer probe itself
#define STATUS_LINE_BYTES 12 // "HTTP/1.1 200"
#define PG_TEXT 512     // bytes of a statement fingerprinted and kept (user space names it
                        // from as many: processors/protocols/sql.py collection_of)
#define PG_MESSAGES 8   // messages of an answer's first call looked through for an error
#define PG_FIELDS 64    // bytes of an ErrorResponse searched for its SQLSTATE
#define PG_SQLSTATE 5
#define PG_STARTUP 256  // bytes of a start-up message's parameters walked for the database
#define PG_NAME 64      // bytes of a database's name kept, its NUL among them
#define PG_PROTOCOL_3 196608
#define FNV32_DATABASE 0xa165ddb8 // FNV-1a of "database" and of "user" (tests check them)
#define FNV32_USER 0x60785ef2

struct red_key {
    u32 tgid;
    u16 port;                 // a server's own port; a client's peer's
    u16 status;               // 0: never answered
    char method[RED_METHOD];  // NUL-padded
    char version;             // the request's HTTP/1.x minor version ('0', '1')
    u8 role;
    u8 family;                // a client's peer's
    u8 tls;                   // plaintext read through the OpenSSL uprobes (https)
    char path[RED_PATH];      // a server's: the target up to '?' or ' ', cut at RED_PATH bytes
                              // (Redis: the command's name; PostgreSQL: struct pg_counted)
    char host[RED_HOST];      // a client's: its Host header ("" when it sent none)
                              // (Redis: an error reply's code; PostgreSQL: the SQLSTATE)
    u8 peer[16];              // a client's peer
    char comm[16];            // the process's name, for one that exits before it is read
    u8 proto;                 // RED_HTTP, RED_REDIS, RED_PG
    u8 pad[3];
};

struct red_value {
    u64 count;
    u64 sum_ns;
    u64 min_ns;
    u64 max_ns;
    u64 buckets[RED_BUCKETS];
};

struct red_request {
    u64 gen;    // the connection's generation
    u64 start;  // when the call that carried it began (0: answered)
    u32 reader; // a server's: the thread that read it
    u32 pad;
    struct red_key key;
};

BPF_HASH(red_requests, u64, struct red_request, 16384); // full: counted from spans

#ifdef PROFILE_TIE_IN
// The HTTP/1 request each server thread has read and not answered: the CPU
// profiler (bpf/profile.bpf.c, an "extern" table there) ties samples to it.
struct serving {
    u64 sk;
    u64 start;
};
BPF_TABLE_PUBLIC("lru_hash", u32, struct serving, serving, 16384);
#endif

static __always_inline void serving_starts(struct red_request *r, u64 skey) {
#ifdef PROFILE_TIE_IN
    u32 tid = r->reader;
    struct serving s = {.sk = skey, .start = r->start};
    serving.update(&tid, &s);
#endif
}

// Answered or closed: its reader serves it no more (if it still serves this one).
static __always_inline void serving_ends(struct red_request *r, u64 skey) {
#ifdef PROFILE_TIE_IN
    u32 tid = r->reader;
    struct serving *s = serving.lookup(&tid);
    if (s && s->sk == skey && s->start == r->start)
        serving.delete(&tid);
#endif
}
// Ports of the collector's own sockets (its exporters' and, from user space, its
// listeners'): their peers' requests are not counted, as they are not traced.
BPF_TABLE("lru_hash", u16, u8, own_ports, 1024);
// Counts go to one map while user space drains the other (red_active says which).
BPF_HASH(red_a, struct red_key, struct red_value, RED_SERIES);
BPF_HASH(red_b, struct red_key, struct red_value, RED_SERIES);
BPF_ARRAY(red_active, u32, 1);
BPF_PERCPU_ARRAY(red_scratch, struct red_request, 1);
BPF_PERCPU_ARRAY(red_dropped, u64, 1); // exchanges not counted: the series map was full
// The span budget (user space sets it; see shed_request): [0] the threshold a
// request's random value must reach for a span, [1] nanoseconds past which a shed
// request still gets one (0: never), like a failed one.
BPF_ARRAY(span_budget, u64, 2);
// Set while the ring buffer is over half unread (until it is down to a quarter):
// every request is shed at its start, so the ring never overflows mid-request.
BPF_ARRAY(ring_backlog, u32, 1);

// A shed request that failed or was slow: its span is made from what the kernel
// kept of it (its head's first bytes, status and times), not its bytes.
struct outlier_event {
    u8 kind;
    u8 pad[7];
    u64 sk;
    u64 start;  // when the call that carried the request began
    u64 end;    // when its answer's first call did (or the connection closed)
    struct red_key key;
};

// Its span would say it failed: unanswered, a server's 5xx, a client's 4xx too, a
// database's error.
static __always_inline u8 red_failed(struct red_key *key) {
    u16 status = key->status;
    if (key->proto != RED_HTTP)
        return status != DB_OK;
    return !status || status >= 500 || (key->role == ROLE_CLIENT && status >= 400);
}

// Counted here: every noted HTTP/1 request, a database command on its client's side.
static __always_inline u8 red_counts(struct red_key *key) {
    return key->proto == RED_HTTP || key->role == ROLE_CLIENT;
}

static __always_inline void keep_outlier(struct conn_state *cs, u64 skey, struct red_request *r,
                                         u64 end) {
    int zero = 0, one = 1;
    u32 *backlog = ring_backlog.lookup(&zero);
    if (backlog && *backlog)
        return; // the ring buffer is read down first
    u8 failed = red_failed(&r->key);
    u64 *slow = span_budget.lookup(&one);
    u64 ns = end > r->start ? end - r->start : 0;
    if (!failed && !(slow && *slow && ns >= *slow))
        return;
    struct outlier_event *oe = events.ringbuf_reserve(sizeof(struct outlier_event));
    if (oe)
        count_written(sizeof(struct outlier_event));
    if (!oe) {
        oe = spare_events.ringbuf_reserve(sizeof(struct outlier_event));
        if (!oe) {
            count_lost();
            return;
        }
        count_retried();
    }
    oe->kind = EV_OUTLIER;
    oe->sk = skey;
    oe->start = r->start;
    oe->end = end;
    __builtin_memcpy(&oe->key, &r->key, sizeof(oe->key));
    events.ringbuf_submit(oe, BPF_RB_NO_WAKEUP);
}

// The i-th byte captured, 0 past them. The index is masked after a real load:
// clang drops a mask it can prove redundant, and the verifier may not know what
// clang knew (a position that went through the stack).
static __always_inline u8 byte_at(struct data_event *ev, u32 i) {
    if (i >= ev->captured)
        return 0;
    volatile u32 at = i;
    return ev->data[at & (CAPTURE_BYTES - 1)];
}

static __always_inline void red_count(struct red_key *key, u64 ns) {
    int zero = 0;
    u32 *active = red_active.lookup(&zero);
    struct red_value *v = active && *active ? red_b.lookup(key) : red_a.lookup(key);
    if (!v) {
        struct red_value fresh = {.min_ns = ns, .max_ns = ns};
        if (active && *active)
            red_b.insert(key, &fresh);
        else
            red_a.insert(key, &fresh);
        v = active && *active ? red_b.lookup(key) : red_a.lookup(key);
        if (!v) {
            u64 *n = red_dropped.lookup(&zero);
            if (n)
                __sync_fetch_and_add(n, 1);
            return;
        }
    }
    const u64 ms = 1000000;
    u32 b;
    if (key->proto != RED_HTTP) // KERNEL_BUCKETS: HTTP_BUCKETS and DB_BUCKETS, both
        b = ns <= 1 * ms ? 0 : ns <= 5 * ms ? 1 : ns <= 10 * ms ? 2 : ns <= 25 * ms ? 3
          : ns <= 50 * ms ? 4 : ns <= 75 * ms ? 5 : ns <= 100 * ms ? 6 : ns <= 250 * ms ? 7
          : ns <= 500 * ms ? 8 : ns <= 750 * ms ? 9 : ns <= 1000 * ms ? 10
          : ns <= 2500 * ms ? 11 : ns <= 5000 * ms ? 12 : ns <= 7500 * ms ? 13
          : ns <= 10000 * ms ? 14 : 15;
    else
        b = ns <= 5 * ms ? 0 : ns <= 10 * ms ? 1 : ns <= 25 * ms ? 2 : ns <= 50 * ms ? 3
          : ns <= 75 * ms ? 4 : ns <= 100 * ms ? 5 : ns <= 250 * ms ? 6 : ns <= 500 * ms ? 7
          : ns <= 750 * ms ? 8 : ns <= 1000 * ms ? 9 : ns <= 2500 * ms ? 10
          : ns <= 5000 * ms ? 11 : ns <= 7500 * ms ? 12 : ns <= 10000 * ms ? 13 : 14;
    __sync_fetch_and_add(&v->count, 1);
    __sync_fetch_and_add(&v->sum_ns, ns);
    __sync_fetch_and_add(&v->buckets[b], 1);
    if (ns < v->min_ns) // racy between CPUs: min and max are best effort
        v->min_ns = ns;
    if (ns > v->max_ns)
        v->max_ns = ns;
}

// The verifier follows every way out of a loop separately into what comes after;
// a position read back from map memory is just a number to it, so the ways out
// of one loop meet again before the next one.
static __always_inline u32 launder(struct red_request *r, u32 value, u32 mask) {
    volatile u64 *slot = &r->start; // a real store and load, not a register kept
    *slot = value;
    return (u32)*slot & mask;
}

// A whole request line: a method of 3..10 capitals, a space, a target (from
// '/', an absolute URL, or OPTIONS's '*'), a space, "HTTP/1.x", all captured.
// Fills r->key (the path up to '?', cut at RED_PATH bytes); 0: no request line.
static __always_inline int red_request_line(struct data_event *ev, struct red_request *r) {
    struct red_key *key = &r->key;
    u32 sp = 0;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < 11; i++) {
        u8 c = ev->data[i];
        if (c == ' ') {
            sp = i;
            break;
        }
        if (c < 'A' || c > 'Z')
            return 0;
        key->method[i] = c;
    }
    if (sp < 3)
        return 0;
    sp = launder(r, sp, 15);
    u8 first = ev->data[(sp + 1) & (CAPTURE_BYTES - 1)];
    if (first != '/' && first != 'h' && !(first == '*' && key->method[0] == 'O'))
        return 0; // not a request line (HTTP/2's "PRI *", a Redis inline command)
    volatile struct walk *w = walk_start();
    if (!w)
        return 0;
    u32 n = RED_PATH;
    PASSES(RED_PATH) {
        u32 i = w->i;
        if (i >= RED_PATH)
            break;
        u8 c = ev->data[(sp + 1 + i) & (CAPTURE_BYTES - 1)];
        if (c == ' ' || c == '?') {
            n = i;
            break;
        }
        key->path[i] = c;
        w->i = i + 1;
    }
    u32 from = launder(r, sp + 1 + n, 2 * RED_PATH - 1);
    u32 end = 0; // the target's end, a space
    w->i = 0;
    PASSES(RED_PATH) {
        u32 i = w->i;
        if (i >= RED_PATH)
            break;
        if (ev->data[(from + i) & (CAPTURE_BYTES - 1)] == ' ') {
            end = from + i;
            break;
        }
        w->i = i + 1;
    }
    if (!end)
        return 0; // a target longer than we look at: the span has it whole
    end = launder(r, end, 4 * RED_PATH - 1);
    if (end + 9 > ev->captured)
        return 0;
    u8 *v = &ev->data[end & (CAPTURE_BYTES - 1)];
    if (v[1] != 'H' || v[5] != '/' || v[6] != '1' || v[7] != '.')
        return 0;
    key->version = v[8];
    return 1;
}

// A client's Host header, searched for in its first RED_HEADERS bytes and
// copied: 1, else 0 (not there, or longer than we keep: the span counts it).
static __always_inline int red_host(struct data_event *ev, struct red_request *r) {
    volatile struct walk *w = walk_start();
    if (!w)
        return 0;
    u32 at = 0;
    PASSES(RED_HEADERS) {
        u32 i = w->i;
        if (i >= RED_HEADERS)
            break;
        // "\nHost:", any case: one word compare per byte
        u32 word;
        __builtin_memcpy(&word, &ev->data[i + 1], 4);
        if (ev->data[i] == '\n' && (word | 0x20202020) == 0x74736f68 && ev->data[i + 5] == ':') {
            at = i + 6;
            break;
        }
        w->i = i + 1;
    }
    if (!at)
        return 0;
    at = launder(r, at, 2 * RED_HEADERS - 1);
    if (ev->data[at & (CAPTURE_BYTES - 1)] == ' ')
        at++;
    u32 n = 0;
    w->i = 0;
    PASSES(RED_HOST) {
        u32 i = w->i;
        if (i >= RED_HOST)
            break;
        u8 c = ev->data[(at + i) & (CAPTURE_BYTES - 1)];
        if (c == '\r') {
            n = i + 1;
            break;
        }
        r->key.host[i] = c;
        w->i = i + 1;
    }
    if (!n)
        return 0;
    n = launder(r, n, 2 * RED_HOST - 1);
    return at + n <= ev->captured;
}

// A decimal of 1..7 digits at `at`, then CRLF: 1, *value and *next (past the
// CRLF) set; else 0 (not one, or not all captured).
static __always_inline int red_number(struct data_event *ev, u32 at, u32 *next, u64 *value) {
    u64 n = 0;
    u32 digits = 0;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < 8; i++) {
        u8 c = byte_at(ev, at + i);
        if (c < '0' || c > '9')
            break;
        n = n * 10 + (c - '0');
        digits++;
    }
    if (!digits || digits > 7)
        return 0;
    u32 end = at + digits;
    if (byte_at(ev, end) != '\r' || byte_at(ev, end + 1) != '\n')
        return 0;
    *next = end + 2;
    *value = n;
    return 1;
}

// Where the walk over a Redis command's argument headers stands. Kept in map
// memory, so the verifier sees each field as just a number: one state per step
// to follow, not one per way the bytes before could have gone.
struct redis_walk {
    u64 len;     // the argument's length, as its digits come
    u32 pos;     // the byte looked at
    u32 item;    // the argument
    u32 state;   // 0: its '$'; 1: its length's digits, to '\r'; 2: '\n'
    u32 digits;
    u32 step;    // the pass (PASSES)
};
BPF_PERCPU_ARRAY(redis_walks, struct redis_walk, 1);

// A Redis command as clients send it ("*<n>\r\n$<len>\r\n<name>\r\n..."), alone
// in its call: 1, its name in key.path. 0: not a command. -1: one that is not
// counted here (another follows it in this call, or its arguments' headers go
// past what is looked at): its span counts it. The arguments are walked by one
// loop over their headers' bytes, jumping over each payload by its length.
static __always_inline int red_redis_command(struct data_event *ev, struct red_request *r) {
    if (byte_at(ev, 0) != '*' || ev->cap_offset != ev->offset)
        return 0;
    u32 start = 0;
    u64 items = 0;
    if (!red_number(ev, 1, &start, &items) || !items || byte_at(ev, start) != '$')
        return 0;
    int zero = 0;
    // volatile: every field read back from the map, never kept by clang in a register
    volatile struct redis_walk *w = redis_walks.lookup(&zero);
    if (!w)
        return -1;
    w->len = 0;
    w->pos = start;
    w->item = 0;
    w->state = 0;
    w->digits = 0;
    w->step = 0;
    u32 name_at = 0, name_len = 0;
    PASSES(REDIS_STEPS) {
        if (w->step >= REDIS_STEPS || w->item >= items || w->pos >= ev->len)
            break;
        w->step++;
        u8 c = byte_at(ev, w->pos);
        if (w->state == 0) { // '$'
            if (c != '$')
                return -1;
            w->state = 1;
            w->len = 0;
            w->digits = 0;
        } else if (w->state == 1) { // its length's digits, then '\r'
            if (c == '\r' && w->digits) {
                w->state = 2;
            } else if (c >= '0' && c <= '9' && w->digits < 7) {
                w->len = w->len * 10 + (c - '0');
                w->digits++;
            } else {
                return -1;
            }
        } else { // '\n', then the payload and its CRLF
            if (c != '\n')
                return -1;
            if (!w->item) {
                name_at = w->pos + 1;
                name_len = (u32)w->len;
            }
            w->pos += (u32)w->len + 2;
            w->item++;
            w->state = 0;
        }
        w->pos++;
    }
    if (w->item < items && w->pos < ev->len)
        return -1; // more arguments than are walked
    if (!name_len || name_len >= REDIS_NAME || byte_at(ev, name_at + name_len) != '\r')
        return -1; // a name longer than is kept, or past what was captured
    // name_len came through map memory: bounded where the verifier sees it (the
    // copy's only way out is its length, clang knowing it is under REDIS_NAME)
    volatile u32 kept = name_len;
    u32 n = kept & (REDIS_NAME - 1);
    w->step = 0;
    PASSES(REDIS_NAME - 1) {
        u32 i = w->step;
        if (i >= n || i >= REDIS_NAME - 1)
            break;
        u8 c = byte_at(ev, name_at + i);
        if (c <= ' ' || c > '~')
            return -1; // not a word (user space names it by its first one)
        r->key.path[i] = c;
        w->step = i + 1;
    }
    return w->pos >= ev->len ? 1 : -1;
}

// The first call of a command's reply: its type byte (a push, '>', answers
// nothing), and for an error ('-', or '!' with its length) its code, the first
// word, in key.host. 0: not a reply's start.
static __always_inline int red_redis_reply(struct data_event *ev, struct red_request *r) {
    u8 t = byte_at(ev, 0);
    if (t == '-' || t == '!') {
        u32 at = 1;
        u64 len = 0;
        if (t == '!' && !red_number(ev, 1, &at, &len))
            return 0;
        volatile struct walk *w = walk_start();
        if (!w)
            return 0;
        PASSES(REDIS_ERROR - 1) {
            u32 i = w->i;
            if (i >= REDIS_ERROR - 1)
                break;
            u8 c = byte_at(ev, at + i);
            if (c == ' ' || c == '\r' || !c)
                break;
            r->key.host[i] = c;
            w->i = i + 1;
        }
        r->key.status = DB_FAILED;
        return 1;
    }
    if (t != '+' && t != ':' && t != '$' && t != '*' && t != '_' && t != ',' && t != '#'
        && t != '(' && t != '=' && t != '%' && t != '~' && t != '|')
        return 0;
    r->key.status = DB_OK;
    return 1;
}

// The databases connections named in their start-up messages, by their names'
// FNV-1a (conn_state.pg_database): user space reads the names.
struct pg_name {
    char name[PG_NAME];
};
BPF_TABLE("lru_hash", u32, struct pg_name, pg_databases, 1024);
// The first text seen of each fingerprint: user space names the operation and
// table from it with the code its spans use, so a counted statement and a
// traced one join one series. Literals are in it: read by user space, never sent.
struct pg_text {
    u32 len;
    u32 pad;
    char text[PG_TEXT];
};
BPF_TABLE("lru_hash", u64, struct pg_text, pg_statements, 4096);
BPF_PERCPU_ARRAY(pg_text_scratch, struct pg_text, 1);
// A client's statement in red_key.path.
struct pg_counted {
    u64 fingerprint;
    u32 namespace;
};
// The walks over a statement's text, an answer's messages and a start-up
// message's parameters, in map memory for the verifier's sake (as redis_walk).
struct pg_walk {
    u64 hash;
    u32 pos;
    u32 word;    // the text: 0 between words, 1 in a word, 2 in a number;
                 // the answer: an ErrorResponse's body (0: none seen);
                 // the start-up: the string walked is a value (else a key)
    u32 quoted;  // the text: inside '...'; the answer: where the next field starts;
                 // the start-up: where the string walked starts
    u32 wanted;  // the start-up: the key before this value (1 user, 2 database)
    u32 messages; // the answer: messages looked through (PASSES)
    u32 user_at, user_hash, database_at, database_hash;
};
BPF_PERCPU_ARRAY(pg_walks, struct pg_walk, 1);

static __always_inline u32 be32_at(struct data_event *ev, u32 at) {
    return ((u32)byte_at(ev, at) << 24) | ((u32)byte_at(ev, at + 1) << 16)
         | ((u32)byte_at(ev, at + 2) << 8) | byte_at(ev, at + 3);
}

static __always_inline u8 word_byte(u8 c) {
    return (u8)((c | 0x20) - 'a') < 26 || (u8)(c - '0') < 10 || c == '_' || c == '$' || c >= 0x80;
}

// A simple Query ('Q', its length, its text, a NUL) that is its call's whole: 1
// (a client's: its fingerprint and database in key.path). 0: not one. -1: one not
// counted here (its connection's database was not read: pg_unnamed). The fingerprint
// is FNV-1a over the text's first PG_TEXT bytes with its literals left out
// (numbers, '...' strings): one per statement, whatever values it carries.
static __always_inline int red_pg_query(struct conn_state *cs, struct data_event *ev,
                                        struct red_request *r, u8 client) {
    if (byte_at(ev, 0) != 'Q' || ev->cap_offset != ev->offset || ev->captured < 6)
        return 0;
    u32 len = be32_at(ev, 1);
    if (len < 5 || len + 1 != ev->len)
        return 0;
    if (ev->captured >= ev->len && byte_at(ev, ev->len - 1) != 0)
        return 0;
    cs->parser = PARSE_PG;
    if (!client)
        return 1;
    if (cs->pg_unnamed)
        return -1;
    int zero = 0;
    volatile struct pg_walk *w = pg_walks.lookup(&zero);
    if (!w)
        return -1;
    u32 end = ev->len - 1; // its NUL
    if (end > ev->captured)
        end = ev->captured;
    if (end > 5 + PG_TEXT)
        end = 5 + PG_TEXT;
    w->hash = 0xcbf29ce484222325ULL;
    w->pos = 5;
    w->word = 0;
    w->quoted = 0;
    PASSES(PG_TEXT) {
        if (w->pos >= end)
            break;
        u8 c = ev->data[w->pos & (CAPTURE_BYTES - 1)]; // below `end`: captured
        w->pos++;
        if (w->quoted) {
            if (c == '\'')
                w->quoted = 0;
            continue;
        }
        if (c == '\'') {
            w->quoted = 1;
            w->word = 0;
            c = '?';
        } else if (word_byte(c)) {
            if (!w->word)
                w->word = c >= '0' && c <= '9' ? 2 : 1;
            if (w->word == 2)
                continue;
        } else {
            w->word = 0;
        }
        w->hash = (w->hash ^ c) * 0x100000001b3ULL;
    }
    struct pg_counted counted = {.fingerprint = w->hash, .namespace = cs->pg_database};
    __builtin_memcpy(r->key.path, &counted, sizeof(counted));
    if (!pg_statements.lookup(&counted.fingerprint)) {
        struct pg_text *t = pg_text_scratch.lookup(&zero);
        if (t) {
            t->len = end - 5;
            bpf_probe_read_kernel(t->text, PG_TEXT, &ev->data[5]);
            pg_statements.insert(&counted.fingerprint, t);
        }
    }
    return 1;
}

// A start-up message (protocol 3.0) that is its call's whole: 1, and its
// connection's database (the "database" parameter, else "user", as the server
// reads them) named in conn_state and pg_databases; 0: not one.
static __always_inline int red_pg_startup(struct conn_state *cs, struct data_event *ev) {
    if (byte_at(ev, 0) || be32_at(ev, 0) != ev->len || be32_at(ev, 4) != PG_PROTOCOL_3)
        return 0;
    cs->pg_unnamed = 1; // until its name is read
    cs->parser = PARSE_PG;
    int zero = 0;
    volatile struct pg_walk *w = pg_walks.lookup(&zero);
    if (!w)
        return 1;
    u32 end = ev->len < ev->captured ? ev->len : ev->captured;
    if (end > 8 + PG_STARTUP)
        end = 8 + PG_STARTUP; // its parameters' first PG_STARTUP bytes
    w->hash = 0x811c9dc5;
    w->pos = 8;
    w->word = 0;
    w->quoted = 8;
    w->wanted = 0;
    w->user_hash = 0;
    w->database_hash = 0;
    PASSES(PG_STARTUP) {
        u32 at = w->pos;
        if (at >= end)
            break;
        u8 c = ev->data[at & (CAPTURE_BYTES - 1)]; // below `end`: captured
        w->pos = at + 1;
        if (c) {
            w->hash = (u32)((w->hash ^ c) * 16777619);
            continue;
        }
        if (at == w->quoted && !w->word)
            break; // an empty key: the parameters' end
        if (!w->word) {
            w->wanted = w->hash == FNV32_DATABASE ? 2 : w->hash == FNV32_USER ? 1 : 0;
        } else if (w->wanted == 2 && at - w->quoted < PG_NAME) {
            w->database_at = w->quoted;
            w->database_hash = w->hash;
        } else if (w->wanted == 1 && at - w->quoted < PG_NAME) {
            w->user_at = w->quoted;
            w->user_hash = w->hash;
        }
        w->word = !w->word;
        w->quoted = at + 1;
        w->hash = 0x811c9dc5;
    }
    u32 hash = w->database_hash ? w->database_hash : w->user_hash;
    u32 at = w->database_hash ? w->database_at : w->user_at;
    if (!hash)
        return 1; // not in what was walked, or too long a name
    cs->pg_database = hash;
    cs->pg_unnamed = 0;
    if (!pg_databases.lookup(&hash)) {
        struct pg_name name = {};
        bpf_probe_read_kernel(name.name, PG_NAME - 1, &ev->data[at & (CAPTURE_BYTES - 1)]);
        pg_databases.insert(&hash, &name); // user space reads it to its NUL
    }
    return 1;
}

static __always_inline u8 pg_backend_message(u8 t) {
    return t == 'T' || t == 'D' || t == 'C' || t == 'E' || t == 'Z' || t == 'I' || t == 'N'
        || t == 'S' || t == 'A' || t == 'G' || t == 'H' || t == 'W' || t == 'd' || t == 'c'
        || t == '1' || t == '2' || t == '3' || t == 'n' || t == 's' || t == 't';
}

// The first call of a statement's answer: 0 if it does not start with a message
// a server answers with. Its first messages are looked through for an
// ErrorResponse, whose SQLSTATE goes in key.host (an error after the first call,
// mid-rows, is not seen: user space, sent the call's head only, misses it too).
static __always_inline int red_pg_reply(struct data_event *ev, struct red_request *r) {
    if (!pg_backend_message(byte_at(ev, 0)))
        return 0;
    int zero = 0;
    volatile struct pg_walk *w = pg_walks.lookup(&zero);
    if (!w)
        return 0;
    w->pos = 0;
    w->word = 0;
    w->messages = 0;
    PASSES(PG_MESSAGES) {
        u32 at = w->pos;
        if (w->messages >= PG_MESSAGES || at + 5 > ev->captured)
            break;
        w->messages++;
        u8 t = byte_at(ev, at);
        u32 len = be32_at(ev, at + 1);
        if (!pg_backend_message(t) || len < 4 || len > ev->len)
            break;
        if (t == 'E') {
            w->word = at + 5;
            break;
        }
        w->pos = at + 1 + len;
    }
    r->key.status = DB_OK;
    if (!w->word)
        return 1;
    r->key.status = DB_FAILED;
    // its fields: a code byte and a NUL-terminated text each; 'C' the SQLSTATE
    w->quoted = w->word;
    w->pos = w->word;
    PASSES(PG_FIELDS) {
        u32 at = w->pos;
        if (at >= w->word + PG_FIELDS)
            break;
        w->pos = at + 1;
        u8 c = byte_at(ev, at);
        if (at == w->quoted) {
            if (c == 'C') {
                for (u32 j = 0; j < PG_SQLSTATE; j++)
                    r->key.host[j] = byte_at(ev, at + 1 + j);
                break;
            }
            if (!c)
                break;
        } else if (!c) {
            w->quoted = at + 1;
        }
    }
    return 1;
}

enum red_request_kind {
    RED_NONE = 0,    // no request starts here (a response, a body, not HTTP/1)
    RED_NOTED = 1,   // a request noted: counted when answered
    RED_BEHIND = 2,  // a request line sent while one is unanswered (pipelined)
    RED_UNNOTED = 3, // a request line not noted (no Host in reach, map full): its span counts it
};

// Its connection's calls are counted (red_exchange, red_answer).
static __always_inline u8 red_counted(struct conn_state *cs, struct data_event *ev) {
    return !(cs->tls && !ev->tls) && cs->port && !cs->uncounted && cs->role != ROLE_UNKNOWN;
}

// The call answers its connection's requests: a client's read, a server's write.
static __always_inline u8 answers(struct conn_state *cs, u8 dir) {
    return dir == (cs->role == ROLE_CLIENT ? DIR_INGRESS : DIR_EGRESS);
}

// The answer to the request the connection waits on, if `ev` starts one: counted.
// PARSE_STATUS_LINE reads only an HTTP status line (no loop, so the transfer
// probes have it inline): a connection with a Redis or PostgreSQL request has
// its cs->parser set before the request is noted.
static __always_inline void red_answer(struct conn_state *cs, u64 skey, struct data_event *ev,
                                       const int parser) {
    struct red_request *r = red_requests.lookup(&skey);
    if (!r || r->gen != cs->gen || !r->start)
        return; // nothing waits for an answer: the rest of one
    if (parser == PARSE_STATUS_LINE && r->key.proto != RED_HTTP)
        return;
    if (parser == PARSE_PG) { // its connection's calls all come here (cs->parser)
        if (r->key.proto != RED_PG || !red_pg_reply(ev, r))
            return;
    } else if (parser != PARSE_STATUS_LINE && r->key.proto == RED_REDIS) {
        if (!red_redis_reply(ev, r))
            return;
    } else {
        // "HTTP/1.x NNN": the status line of its answer
        if (byte_at(ev, 0) != 'H' || byte_at(ev, 4) != '/' || byte_at(ev, 8) != ' ')
            return;
        u32 status = (byte_at(ev, 9) - '0') * 100 + (byte_at(ev, 10) - '0') * 10
                   + (byte_at(ev, 11) - '0');
        if (status < 100 || status > 999)
            return;
        if (status < 200 && status != 101)
            return; // an interim answer (100 Continue): the final one follows
        r->key.status = status;
    }
    if (red_counts(&r->key)) {
        red_count(&r->key, ev->ts > r->start ? ev->ts - r->start : 0);
        if (cs->shed)
            keep_outlier(cs, skey, r, ev->ts);
    }
    if (cs->role != ROLE_CLIENT)
        serving_ends(r, skey);
    r->start = 0;
}

// A call that may start a request (a client's write, a server's read): noted
// if it does, to be counted when answered (red_answer).
static __always_inline int red_note(struct conn_state *cs, u64 skey, struct data_event *ev,
                                    const int parser) {
    u8 client = cs->role == ROLE_CLIENT;
    int zero = 0;
    struct red_request *r = red_scratch.lookup(&zero);
    if (!r)
        return RED_NONE;
    __builtin_memset(r, 0, sizeof(*r));
    int db = 0; // a database's command: 1 noted here, -1 counted from its span
    if (parser == PARSE_REDIS) {
        db = red_redis_command(ev, r);
        if (!db) // an inline command, the rest of a long one: captured
            return cs->parser == PARSE_REDIS ? RED_UNNOTED : RED_NONE;
        cs->parser = PARSE_REDIS;
    } else if (parser == PARSE_PG) {
        if (red_pg_startup(cs, ev))
            return RED_UNNOTED; // captured: its spans name the database too
        db = red_pg_query(cs, ev, r, client);
        if (!db) // another message (extended protocol, COPY data): captured
            return cs->parser == PARSE_PG ? RED_UNNOTED : RED_NONE;
    } else if (!red_request_line(ev, r)) {
        return RED_NONE;
    }
    struct red_request *open = red_requests.lookup(&skey);
    if (open && open->gen == cs->gen && open->start)
        return RED_BEHIND; // counted from its span
    if (db < 0)
        return RED_UNNOTED;
    r->key.proto = parser == PARSE_REDIS ? RED_REDIS : parser == PARSE_PG ? RED_PG : RED_HTTP;
    if (client) {
        if (!db) {
            __builtin_memset(r->key.path, 0, RED_PATH);
            if (!red_host(ev, r))
                return RED_UNNOTED;
        }
        r->key.port = cs->peer_port;
        r->key.family = cs->family;
        __builtin_memcpy(r->key.peer, cs->peer, 16);
    } else {
        r->key.port = cs->port;
    }
    r->gen = cs->gen;
    r->start = ev->ts;
    r->reader = client ? 0 : ev->tid;
    r->key.tgid = ev->pid;
    r->key.role = cs->role;
    r->key.tls = ev->tls;
    process_comm(r->key.comm, ev->pid);
    if (open) // in place: an update takes a fresh element and frees the old, per request
        __builtin_memcpy(open, r, sizeof(*r));
    else if (red_requests.update(&skey, r))
        return RED_UNNOTED;
    if (!client && !db)
        serving_starts(r, skey);
    return RED_NOTED;
}

static __always_inline int red_exchange(struct conn_state *cs, u64 skey,
                                        struct data_event *ev, const int parser) {
    if (!red_counted(cs, ev))
        return RED_NONE; // TLS: its plaintext only
    if (!answers(cs, ev->dir))
        return red_note(cs, skey, ev, parser);
    red_answer(cs, skey, ev, parser);
    return RED_NONE;
}

// The connection closed: a request it never answered counts as unanswered. A
// client reset by its server may still read an answer that came before the RST:
// its request stays (a new connection at this address drops it).
static __always_inline void red_closed(u64 skey, struct conn_state *cs) {
    struct red_request *r = red_requests.lookup(&skey);
    if (!r)
        return;
    if (r->start && cs && cs->role == ROLE_CLIENT && cs->resets_in && r->gen == cs->gen)
        return;
    if (r->start && cs && r->gen == cs->gen && red_counts(&r->key)) {
        u64 now = bpf_ktime_get_ns();
        red_count(&r->key, now > r->start ? now - r->start : 0);
        if (cs->shed)
            keep_outlier(cs, skey, r, now); // unanswered: failed
    }
    if (r->start && r->reader)
        serving_ends(r, skey);
    red_requests.delete(&skey);
}

BPF_PROG_ARRAY(red_progs, 3); // PARSE_HTTP, PARSE_REDIS, PARSE_PG (count_and_send)
// Set once user space has loaded the HTTP/1 counter (red_and_send): requests are
// counted in the kernel, by the transfer probes too (none when it was refused,
// or no metrics pipeline wants them).
BPF_ARRAY(http_counted, u32, 1);

// The process's name, and which goroutine, Node callback or asyncio task made
// the call: looked up only for an event that goes out (a shed call's would be
// thrown away), from what data_event_for left (a client's first send keeps its
// connect's cause in task_cause, for a callback that names none).
static __always_inline void task_context(struct data_event *ev) {
    process_comm(ev->comm, ev->pid);
    u64 connect_cause = ev->task_cause;
    go_context(&ev->go, ev->pid, ev->role == ROLE_SERVER && ev->dir == DIR_INGRESS);
    ev->task_cause = 0;
    ev->task = node_callback_of(ev->tid, &ev->task_cause);
    if (!ev->task)
        ev->task = py_running_task(ev->tid);
    else if (!ev->task_cause)
        ev->task_cause = connect_cause;
}

static __always_inline void send_data_event(struct data_event *ev) {
    task_context(ev);
    u32 size = offsetof(struct data_event, data) + bounded(ev->captured, CAPTURE_BYTES);
    ring_output(ev, size);
}

// ---- The span budget: which requests are captured, decided at their start ----
// A request the kernel counts (RED_NOTED) is captured, every call of its
// exchange sent, when its 56-bit random value is at least the threshold user
// space sets to keep the collector within its CPU budget (consistent
// probability sampling: the OpenTelemetry specification's `th`); otherwise
// nothing of it is sent, to the next request on its connection. The value is
// shared where the kernel can tell a request belongs to another's trace, so a
// trace is kept or shed whole: a server's request passes its value to the
// calls its thread sends, a client's to the server that reads it on this node
// (by ports, and the stream offset both ends count alike).
// [0] requests noted, [1] shed by the threshold, [2] shed uncounted, [3] shed by a backlog
BPF_PERCPU_ARRAY(shed_counts, u64, 4);
BPF_TABLE("lru_hash", u32, u64, thread_rand, 16384);
struct hop_key {
    u16 client_port;
    u16 server_port;
};
// A client connection's last noted request (only one is open at a time: those
// behind it are not noted), written in place: an entry per request was an
// update by the client and a delete by the server, per request.
struct hop {
    u64 offset; // its stream offset; HOP_TAKEN once its server read it
    u64 rand;
};
#define HOP_TAKEN (~0ULL)
BPF_TABLE("lru_hash", struct hop_key, struct hop, hop_rand, 16384);

#define RAND_BITS 0x00ffffffffffffffULL

static __always_inline void count_shed(int index) {
    u64 *n = shed_counts.lookup(&index);
    if (n)
        __sync_fetch_and_add(n, 1);
}

// Which processes had requests shed uncounted (shed_counts[2]), by tgid: user
// space names them when it says so. Only on that rare path.
BPF_TABLE("lru_hash", u32, u64, uncounted_processes, 256);

static __always_inline void count_uncounted(u32 tgid) {
    count_shed(2);
    u64 none = 0;
    uncounted_processes.insert(&tgid, &none); // kept if there
    u64 *n = uncounted_processes.lookup(&tgid);
    if (n)
        __sync_fetch_and_add(n, 1);
}

// The ring buffer's fill at a request's start, from what was written and what
// user space last said it read: the decision never waits for the reader to look
// (busy with a batch, it used to learn of a burst after the ring had overflowed).
static __always_inline u8 ring_behind(void) {
    int zero = 0, one = 1, two = 2;
    u64 *size = ring_fill.lookup(&two);
    u32 *behind = ring_backlog.lookup(&zero);
    if (!size || !*size || !behind)
        return 0;
    u64 *written = ring_fill.lookup(&zero);
    u64 *read = ring_fill.lookup(&one);
    if (!written || !read)
        return 0;
    u64 unread = *written > *read ? *written - *read : 0;
    u32 now = unread > *size / (*behind ? 4 : 2);
    if (now != *behind)
        *behind = now;
    return now;
}

// 1: shed the exchange `ev` starts (a noted request). Stamps its random value.
static __always_inline u8 shed_request(struct conn_state *cs, struct data_event *ev) {
    int zero = 0;
    count_shed(0);
    u64 *threshold = span_budget.lookup(&zero);
    u8 behind = ring_behind();
    u64 limit = threshold ? *threshold : 0;
    if (!limit && !behind)
        return 0;
    u32 tid = ev->tid;
    u64 r = 0;
    u8 found = 0;
    if (cs->role == ROLE_SERVER) {
        struct hop_key hk = {.client_port = cs->peer_port, .server_port = cs->port};
        struct hop *sent = hop_rand.lookup(&hk);
        if (sent && sent->offset == ev->offset) {
            r = sent->rand;
            found = 1;
            sent->offset = HOP_TAKEN; // a later connection on these ports starts afresh
        }
    } else {
        u64 *serving = thread_rand.lookup(&tid);
        if (serving) {
            r = *serving;
            found = 1;
        }
    }
    if (!found)
        r = (((u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32()) & RAND_BITS;
    if (cs->role == ROLE_SERVER) {
        // written in place where the thread has one: an LRU map's update takes a
        // fresh element from its free list and gives back the old, per request
        u64 *kept = thread_rand.lookup(&tid);
        if (kept)
            *kept = r;
        else
            thread_rand.update(&tid, &r);
    } else {
        struct hop_key hk = {.client_port = cs->port, .server_port = cs->peer_port};
        struct hop hop = {.offset = ev->offset, .rand = r};
        struct hop *kept = hop_rand.lookup(&hk);
        if (kept) { // its server may be reading it: the offset last, over the value
            kept->offset = HOP_TAKEN;
            asm volatile("" ::: "memory");
            kept->rand = r;
            asm volatile("" ::: "memory");
            kept->offset = ev->offset;
        } else {
            hop_rand.update(&hk, &hop);
        }
    }
    ev->rand = r;
    ev->threshold = limit;
    if (r < limit)
        count_shed(1);
    else if (behind)
        count_shed(3);
    else
        return 0;
    return 1;
}

BPF_PROG_ARRAY(red_tls_progs, 3); // red_and_send_tls's: a uprobe's kind of program

// Sent, unless its exchange is shed; the first call sent after shed ones says so.
static __always_inline void send_unless_shed(struct conn_state *cs, struct data_event *ev) {
    u8 bit = 1 << (ev->dir & 1);
    if (cs->shed) {
        cs->shed_gap |= bit;
        return;
    }
    if (cs->shed_gap & bit) {
        ev->after_shed = 1;
        cs->shed_gap &= ~bit;
    }
    send_data_event(ev);
}

// A call red_exchange has read (RED_*): sent unless its exchange is shed; a
// request it noted is shed or kept here.
static __always_inline void send_as_noted(struct conn_state *cs, struct data_event *ev, int kind) {
    if (kind == RED_NOTED) {
        ev->red_counted = 1;
        cs->shed = shed_request(cs, ev);
    } else if (kind == RED_UNNOTED) {
        cs->shed = 0; // its span counts it: captured
    } else if (kind == RED_BEHIND && cs->shed) {
        count_uncounted(ev->pid); // pipelined behind a shed one: neither count nor span has it
    }
    send_unless_shed(cs, ev);
}

// The parser a call goes to by its first bytes, on a connection none has taken
// yet: a RESP array (a Redis command, or a reply), a PostgreSQL Query or start-up
// message (its length's first byte, 0, and protocol 3.0), else HTTP/1's.
static __always_inline int parser_by_first_bytes(struct data_event *ev) {
    if (!ev->captured)
        return PARSE_HTTP;
    u8 first = ev->data[0];
    if (first == '*')
        return PARSE_REDIS;
    if (first == 'Q'
        || (!first && ev->captured >= 8 && !ev->data[4] && ev->data[5] == 3 && !ev->data[6]))
        return PARSE_PG;
    return PARSE_HTTP;
}

// Tail-called by the OpenSSL uprobes (red_and_send_tls: a tail call stays within
// its kind of program) and, for databases, by the transfer probes (they count
// HTTP/1 themselves), with their event in `scratch`. A call that starts like a
// Redis command goes on to the *_redis program (index 1), one like a PostgreSQL
// Query or start-up to the *_pg program (index 2), and every call of a
// connection where one of those recognised a command to it: each parser's
// loops are more than the verifier follows with another's in one program.
static __always_inline int count_and_send(void *ctx, const int parser, const int tls) {
    int zero = 0;
    struct data_event *ev = scratch.lookup(&zero);
    if (!ev)
        return 0;
    struct conn_state *cs = conn_of(ev->sk);
    if (!cs) {
        send_data_event(ev);
        return 0;
    }
    if (parser == PARSE_HTTP) { // the entry (OpenSSL's calls, and a connection's until
                                // a parser took it): a database's call goes on
        int to = cs->parser ? cs->parser : parser_by_first_bytes(ev);
        if (to != PARSE_HTTP) {
            if (tls)
                red_tls_progs.call(ctx, to);
            else
                red_progs.call(ctx, to); // returns only if it is not loaded
        }
    }
    send_as_noted(cs, ev, red_exchange(cs, ev->sk, ev, parser));
    return 0;
}

int red_and_send(void *ctx) {
    return count_and_send(ctx, PARSE_HTTP, 0);
}

int red_and_send_redis(void *ctx) {
    return count_and_send(ctx, PARSE_REDIS, 0);
}

int red_and_send_pg(void *ctx) {
    return count_and_send(ctx, PARSE_PG, 0);
}

int red_and_send_tls(struct pt_regs *ctx) {
    return count_and_send(ctx, PARSE_HTTP, 1);
}

int red_and_send_tls_redis(struct pt_regs *ctx) {
    return count_and_send(ctx, PARSE_REDIS, 1);
}

int red_and_send_tls_pg(struct pt_regs *ctx) {
    return count_and_send(ctx, PARSE_PG, 1);
}

// The event waiting in `scratch`: counted and sent by the tail-called program,
// or sent here if it is not loaded.
static __always_inline void send_scratch(void *ctx) {
    red_progs.call(ctx, 0);
    int zero = 0;
    struct data_event *ev = scratch.lookup(&zero);
    if (ev)
        send_data_event(ev);
}

// The shared scratch event, filled with what every data event of a TCP
// connection carries; the caller sets ts, fd, the payload and tls.
static __always_inline struct data_event *data_event_for(struct conn_state *cs, u64 skey, u8 dir,
                                                        u64 offset, u32 len, u32 tgid, u32 tid) {
    int zero = 0;
    struct data_event *ev = scratch.lookup(&zero);
    if (!ev)
        return 0;
    ev->kind = EV_DATA;
    ev->dir = dir;
    ev->role = cs->role;
    // The total before the connection's count: a retransmit between the two
    // reads leaves the stamp behind, so user space asks the map (never the
    // other way round, a stale count under a current stamp).
    u64 *total = retransmits_total.lookup(&zero);
    ev->retrans_stamp = total ? (u32)(*(volatile u64 *)total + 1) : 0;
    ev->retrans = *(volatile u32 *)&cs->retrans;
    ev->send_wait_us = (u32)(cs->send_wait_ns / 1000);
    ev->window_small = cs->window_small;
    ev->srtt_us = cs->srtt_us;
    ev->pid = tgid;
    ev->tid = tid;
    ev->sk = skey;
    ev->gen = cs->gen;
    ev->offset = offset;
    ev->cap_offset = offset;
    ev->len = len;
    ev->captured = 0;
    ev->has_payload = 0;
    ev->tls = 0;
    ev->red_counted = 0;
    ev->after_shed = 0;
    ev->rand = 0;
    ev->threshold = 0;
    ev->fd = 0;
    ev->task = 0;
    // a client's first bytes, in the callback its connect's completion began, are
    // caused by what caused the connect (task_context, when the event goes out)
    ev->task_cause = dir == DIR_EGRESS && offset == 0 ? cs->connect_cause : 0;
    return ev;
}

// Time a send waited for room: since a short send found the buffer full, and
// inside this call so far (a blocking socket waits in the call). Returns the
// total before this call began: a span ends where its last send began.
static __always_inline u64 account_send(struct conn_state *cs, struct active_io *io, u64 skey) {
    u64 now = bpf_ktime_get_ns();
    io->sk = skey;
    if (cs->full_at) {
        if (io->ts > cs->full_at)
            cs->send_wait_ns += io->ts - cs->full_at;
        cs->full_at = 0;
    }
    u64 from = io->waited > io->ts ? io->waited : io->ts;
    u64 before = cs->send_wait_ns - (from - io->ts); // less this call's part so far
    cs->send_wait_ns += now - from;
    io->waited = now;
    return before;
}

// The offset up to which user space needs no bytes of this direction, if it said one.
static __always_inline u64 *quiet_of(struct conn_state *cs, u64 skey, u8 dir) {
    int zero = 0;
    u32 *writes = quiet_writes.lookup(&zero);
    if (!writes)
        return 0;
    u32 seen = *(volatile u32 *)writes; // before the lookup: a write after it moves it on
    if (cs->quiet_seen[dir & 1] == seen)
        return 0; // missing at the last lookup, and nothing written since
    struct quiet_key qk = {.sk = skey, .gen = cs->gen, .dir = dir};
    u64 *until = quiet.lookup(&qk);
    if (!until)
        cs->quiet_seen[dir & 1] = seen;
    return until;
}

static __always_inline int on_transfer(void *ctx, void *sk, u16 protocol, int ret, int flags,
                                       u8 dir) {
    if (protocol == PROTO_UDP)
        return on_datagram(sk, ret, flags, dir);
    if (protocol != PROTO_TCP || ret <= 0)
        return 0;
    if (dir == DIR_INGRESS && (flags & MSG_PEEK))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (tgid == 0)
        return 0; // kernel-internal sockets
    u64 skey = (u64)sk;
    struct conn_state *cs = conn_of(skey);
    if (!cs) {
        // A connection opened before we started: user space finds its tuple.
        struct conn_state fresh = {.gen = bpf_ktime_get_ns()};
        conns.update(&skey, &fresh);
        cs = conns.lookup(&skey);
        if (!cs)
            return 0;
    }
    if (tgid == SELF_TGID) {
        if (!cs->self) {
            cs->self = 1;
            struct conn_event *ce = reserve_conn_event();
            if (!ce) {
                count_lost();
                return 0;
            }
            __builtin_memset(ce, 0, sizeof(*ce));
            ce->kind = EV_SELF;
            ce->sk = skey;
            ce->pid = tgid;
            events.ringbuf_submit(ce, BPF_RB_NO_WAKEUP);
        }
        return 0;
    }
    u64 offset = __sync_fetch_and_add(&cs->bytes[dir], (u64)ret);
    cs->pid = tgid;
    if (dir == DIR_INGRESS)
        node_read(tgid, tid, skey);
    struct active_io *io = dir == DIR_INGRESS ? receive_io() : current_io();
    struct ssl_call *call = ssl_call_of(tid);
    int plaintext = 0;
    if (call) {
        call->sk = skey;
        if (io)
            call->fd = io->fd;
        cs->tls = 1;
        // Sent now, not at SSL_write's return: the peer may answer before the
        // writer runs again, and the request must reach user space first.
        if (dir == DIR_EGRESS && call->dir == DIR_EGRESS && !call->emitted)
            plaintext = tls_write_seen(call, skey, tgid, tid);
    }
    u64 send_wait = cs->send_wait_ns;
    if (dir == DIR_EGRESS && io) {
        send_wait = account_send(cs, io, skey);
#ifdef RECEIVES_FROM_REGS
        // A write's or sendto's one transfer is its return (forget_send, unprobed)
        if (io->kind == BUF_PLAIN && (u64)ret < io->want && !cs->full_at)
            cs->full_at = bpf_ktime_get_ns();
#endif
    }
    if (cs->tls) { // ciphertext: the plaintext comes from the uprobes, counted only here
        if (plaintext)
            send_scratch(ctx);
        return 0;
    }

    u64 *quiet_until = quiet_of(cs, skey, dir);
    if (quiet_until && offset + (u64)ret < *quiet_until)
        return 0; // inside a body user space has already sized

    u8 payload = io && io->kind != BUF_NONE;
    if (cs->shed && !payload) {
        cs->shed_gap |= 1 << (dir & 1); // shed: only a call with bytes may start the next request
        return 0;
    }
    if (cs->shed && cs->parser != PARSE_HTTP && cs->role == ROLE_SERVER && dir == DIR_EGRESS) {
        // A database server's answer to a shed command: only its client's side is
        // counted, and no answer starts a request, so nothing in it is read.
        struct red_request *r = red_requests.lookup(&skey);
        if (r && r->gen == cs->gen)
            r->start = 0; // answered: the connection's next command is noted
        cs->shed_gap |= 1 << (dir & 1);
        return 0;
    }
    struct data_event *ev = data_event_for(cs, skey, dir, offset, (u32)ret, tgid, tid);
    if (!ev)
        return 0;
    ev->ts = bpf_ktime_get_ns();
    ev->send_wait_us = (u32)(send_wait / 1000);

    // Sends are stamped when the syscall began: the tracepoint fires only after
    // the bytes reached the peer, which may already have read them. Receives
    // are stamped now, when the bytes are in hand. So on one node a server
    // span always sits inside its client span.
    if (io) {
        ev->fd = io->fd;
        if (dir == DIR_EGRESS)
            ev->ts = io->ts;
    }
    if (payload) {
        ev->has_payload = 1;
        u32 want = (u32)ret;
        u64 buf = io->buf;
        // Skip what user space said it does not need; capture from there on.
        if (io->kind == BUF_PLAIN && quiet_until && *quiet_until > offset) {
            u64 skip = *quiet_until - offset;
            buf += skip;
            want -= (u32)skip;
            ev->cap_offset = offset + skip;
        }
        // A shed exchange's HTTP answer: only its status line is read (red_answer)
        if (cs->shed && cs->parser == PARSE_HTTP && cs->role != ROLE_UNKNOWN
            && answers(cs, dir) && want > STATUS_LINE_BYTES)
            want = STATUS_LINE_BYTES;
        ev->captured = capture(ev, io, transfer_msghdr(io), buf, want);
    }
    if (cs->role != ROLE_UNKNOWN && ev->has_payload && !cs->tls) {
        if (cs->parser == PARSE_HTTP && answers(cs, dir)) {
            // An answer on a connection no database parser took: what the tail
            // call would do, without it (and the lookups of the connection and
            // the event it begins with).
            if (red_counted(cs, ev))
                red_answer(cs, skey, ev, PARSE_STATUS_LINE);
            send_unless_shed(cs, ev);
            return 0;
        }
        // A request on such a connection too, once the HTTP/1 counter is loaded
        // (it may be refused, or not wanted: then nothing is counted here).
        int zero = 0;
        u32 *counting = http_counted.lookup(&zero);
        if (counting && *counting && cs->parser == PARSE_HTTP
            && parser_by_first_bytes(ev) == PARSE_HTTP) {
            send_as_noted(cs, ev, red_counted(cs, ev) ? red_note(cs, skey, ev, PARSE_HTTP)
                                                      : RED_NONE);
            return 0;
        }
        // counts and sends; returns only if it is not loaded. A database's
        // connection goes straight to its parser's program (count_and_send).
        red_progs.call(ctx, cs->parser);
    }
    send_data_event(ev);
    return 0;
}

// A thread that dies inside a syscall or an OpenSSL call never reaches the exit
// probe: forget what it was doing, or a later thread given the same id would
// inherit it (pids wrap at pid_max, 32768 by default).
TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id, tgid = id >> 32;
#ifndef TASK_STORAGE // task storage goes with its task
    active_io.delete(&tid);
#endif
    if (ssl_calls.delete(&tid) == 0)
        ssl_call_counted(-1);
    py_forget_thread(tid);
    node_forget_thread(tid);
    if (tid == tgid) {
        process_names.delete(&tgid);
        go_forget(tgid);
        node_forget(tgid);
    }
    return 0;
}

// exec has just named the process after its new program (the comm it keeps
// unless it renames itself), and given it the environment execve passed.
TRACEPOINT_PROBE(sched, sched_process_exec) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct task_name name = {};
    bpf_get_current_comm(name.comm, sizeof(name.comm));
    process_names.update(&tgid, &name);
    u32 old = args->old_pid;
    struct service_name *service = exec_services.lookup(&old);
    if (service) {
        struct service_name copy = *service;
        exec_services.delete(&old);
        service_names.update(&tgid, &copy);
    } else {
        service_names.delete(&tgid); // exec'd without one: not its parent's any more
    }
    go_forget(tgid); // a new program: user space decides again whether it is Go
    node_forget(tgid); // or Node
#ifdef GOROUTINES
    struct exec_event ev = {.kind = EV_EXEC, .pid = tgid};
    ring_output(&ev, sizeof(ev));
#endif
    return 0;
}

// A new process (or thread) id: what an exited process of that id said is void.
TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 child = args->child_pid;
    service_names.delete(&child);
    return 0;
}

// OTEL_SERVICE_NAME as execve passes it, read from the caller's envp while it is
// still mapped: a client that exits in milliseconds (curl) is gone before user
// space could read /proc/<pid>/environ, and would lose its service name.
static __always_inline int service_from_env(u64 envp) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    volatile struct walk *w = walk_start();
    if (!w)
        return 0;
    PASSES(MAX_ENV_SCANNED) {
        u32 i = w->i;
        if (i >= MAX_ENV_SCANNED)
            break;
        w->i = i + 1;
        u64 entry = 0;
        if (bpf_probe_read_user(&entry, sizeof(entry), (void *)(envp + i * sizeof(u64))) || !entry)
            return 0;
        struct { u64 a; u64 b; u16 c; } prefix = {};
        if (bpf_probe_read_user(&prefix, 18, (void *)entry))
            continue;
        // "OTEL_SER" "VICE_NAM" "E=", little-endian
        if (prefix.a != 0x5245535f4c45544fULL || prefix.b != 0x4d414e5f45434956ULL ||
            prefix.c != 0x3d45)
            continue;
        struct service_name name = {};
        if (bpf_probe_read_user_str(name.name, sizeof(name.name), (void *)(entry + 18)) > 1)
            exec_services.update(&tid, &name);
        return 0;
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_services.delete(&tid); // an earlier, failed execve's
    return service_from_env((u64)args->envp);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    exec_services.delete(&tid);
    return service_from_env((u64)args->envp);
}

TRACEPOINT_PROBE(sock, sock_send_length) {
    return on_transfer(args, args->sk, args->protocol, args->ret, args->flags, DIR_EGRESS);
}

TRACEPOINT_PROBE(sock, sock_recv_length) {
    return on_transfer(args, args->sk, args->protocol, args->ret, args->flags, DIR_INGRESS);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != PROTO_TCP)
        return 0;
    u64 skey = (u64)args->skaddr;
    int newstate = args->newstate, oldstate = args->oldstate;

    if (newstate == TCP_SYN_SENT) {
        // connect(): we are in the caller's context, so this names the client.
        struct conn_state cs = {
            .gen = bpf_ktime_get_ns(), .role = ROLE_CLIENT, .pid = bpf_get_current_pid_tgid() >> 32};
        node_callback_of((u32)bpf_get_current_pid_tgid(), &cs.connect_cause);
        conns.update(&skey, &cs);
        closed_conns.delete(&skey);
        red_requests.delete(&skey); // an earlier socket's, at this address
        return 0;
    }
    if (newstate != TCP_ESTABLISHED && newstate != TCP_CLOSE)
        return 0;

    struct conn_state *cs = conns.lookup(&skey);
    u8 role = ROLE_UNKNOWN;
    if (newstate == TCP_ESTABLISHED) {
        role = oldstate == TCP_SYN_SENT ? ROLE_CLIENT
             : oldstate == TCP_SYN_RECV ? ROLE_SERVER : ROLE_UNKNOWN;
        closed_conns.delete(&skey);
        if (cs && oldstate == TCP_SYN_SENT) {
            cs->role = role; // the state connect() made for this very socket
        } else {
            // Anything already here belongs to an earlier socket at this address
            // (say, a transfer seen after its close): a new connection starts clean.
            struct conn_state fresh = {.gen = bpf_ktime_get_ns(), .role = role};
            conns.update(&skey, &fresh);
            red_requests.delete(&skey);
            cs = conns.lookup(&skey);
        }
        if (cs) {
            u16 sport = args->sport, dport = args->dport;
            u8 yes = 1;
            if (cs->pid == SELF_TGID) // ours, connected: its port names our traffic
                own_ports.update(&sport, &yes);
            cs->uncounted = own_ports.lookup(&dport) != 0;
            cs->port = args->sport;
            cs->peer_port = args->dport;
            cs->family = args->family == AF_INET ? AF_INET : AF_INET6;
            if (args->family == AF_INET)
                __builtin_memcpy(cs->peer, args->daddr, 4);
            else
                __builtin_memcpy(cs->peer, args->daddr_v6, 16);
        }
    } else if (!cs) {
        return 0; // closing a socket we never tracked (listener, pre-start idle)
    }

    struct conn_event *ce = reserve_conn_event();
    if (!ce) {
        count_lost();
        if (newstate == TCP_CLOSE) {
            red_closed(skey, cs);
            closed_conns.update(&skey, cs);
            conns.delete(&skey);
        }
        return 0;
    }
    __builtin_memset(ce, 0, sizeof(*ce));
    ce->kind = newstate == TCP_ESTABLISHED ? EV_OPEN : EV_CLOSE;
    ce->sk = skey;
    ce->ts = bpf_ktime_get_ns();
    ce->family = args->family;
    ce->sport = args->sport;
    ce->dport = args->dport;
    if (args->family == AF_INET) {
        __builtin_memcpy(ce->saddr, args->saddr, 4);
        __builtin_memcpy(ce->daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(ce->saddr, args->saddr_v6, 16);
        __builtin_memcpy(ce->daddr, args->daddr_v6, 16);
    }
    if (cs) {
        ce->role = cs->role ? cs->role : role;
        ce->pid = cs->pid;
        ce->bytes_egress = cs->bytes[DIR_EGRESS];
        ce->bytes_ingress = cs->bytes[DIR_INGRESS];
        ce->opened = cs->gen;
        ce->retrans = cs->retrans;
        ce->srtt_us = cs->srtt_us;
        ce->resets_in = cs->resets_in;
        ce->resets_out = cs->resets_out;
    }
    ce->oldstate = oldstate;
    events.ringbuf_submit(ce, BPF_RB_NO_WAKEUP);
    if (newstate == TCP_CLOSE) {
        red_closed(skey, cs);
        if (cs) {
            struct quiet_key qk = {.sk = skey, .gen = cs->gen, .dir = DIR_EGRESS};
            quiet.delete(&qk);
            qk.dir = DIR_INGRESS;
            quiet.delete(&qk);
            closed_conns.update(&skey, cs);
        }
        conns.delete(&skey);
    }
    return 0;
}

// TCP health, counted per connection in the kernel (never an event per packet):
// user space reads the counters with each data event and at the close.

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) {
    u64 skey = (u64)args->skaddr;
    struct conn_state *cs = conns.lookup(&skey);
    if (!cs)
        return 0;
    __sync_fetch_and_add(&cs->retrans, 1);
    int zero = 0;
    u64 *total = retransmits_total.lookup(&zero);
    if (total) // after the connection's count (data_event_for reads them the other way)
        __sync_fetch_and_add(total, 1);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_receive_reset) {
    u64 skey = (u64)args->skaddr;
    struct conn_state *cs = conns.lookup(&skey);
    if (cs && cs->resets_in < 255)
        cs->resets_in++;
    return 0;
}

// Attached by the loader: bcc cannot generate this tracepoint's argument struct
// on every kernel (an enum field its headers may lack), and only the start of
// the record, stable across versions, is read.
struct send_reset_args {
    u64 common;
    u64 skbaddr;
    u64 skaddr;
    int state;
    u32 reason;
    u8 saddr[28]; // sockaddr_in / sockaddr_in6
    u8 daddr[28];
};

// A RST we send on a live connection is counted on it. An abortive close
// (SO_LINGER 0) sends its RST after the socket reached CLOSE, so that one is
// an event of its own: resets are rare, never one per packet of a flow.
int on_tcp_send_reset(struct send_reset_args *args) {
    u64 skey = args->skaddr;
    if (!skey)
        return 0; // a RST for no socket (a closed port): the peer counts it as refused
    struct conn_state *cs = conns.lookup(&skey);
    if (cs) {
        if (cs->resets_out < 255)
            cs->resets_out++;
        return 0;
    }
    struct conn_event *ce = reserve_conn_event();
    if (!ce) {
        count_lost();
        return 0;
    }
    __builtin_memset(ce, 0, sizeof(*ce));
    ce->kind = EV_RESET;
    ce->sk = skey;
    ce->ts = bpf_ktime_get_ns();
    ce->pid = bpf_get_current_pid_tgid() >> 32;
    u16 family = 0;
    __builtin_memcpy(&family, args->saddr, 2);
    ce->family = family;
    ce->sport = ((u16)args->saddr[2] << 8) | args->saddr[3];
    ce->dport = ((u16)args->daddr[2] << 8) | args->daddr[3];
    if (family == AF_INET) {
        __builtin_memcpy(ce->saddr, &args->saddr[4], 4);
        __builtin_memcpy(ce->daddr, &args->daddr[4], 4);
    } else {
        __builtin_memcpy(ce->saddr, &args->saddr[8], 16);
        __builtin_memcpy(ce->daddr, &args->daddr[8], 16);
    }
    ce->resets_out = 1;
    events.ringbuf_submit(ce, BPF_RB_NO_WAKEUP);
    return 0;
}

#ifdef HAVE_TCP_PROBE_SKADDR
// Fires for each segment received on an established socket: one hash lookup.
// Chosen over a sock_ops RTT callback, which needs a cgroup attachment point
// and a program type this receiver does not otherwise use.
TRACEPOINT_PROBE(tcp, tcp_probe) {
    u64 skey = (u64)args->skaddr;
    struct conn_state *cs = conns.lookup(&skey);
    if (!cs)
        return 0;
    cs->srtt_us = args->srtt;
    // Flow control: the peer's window (what we may send) or ours is nearly shut.
    if (args->snd_wnd < WINDOW_SMALL || args->rcv_wnd < WINDOW_SMALL)
        cs->window_small++;
    return 0;
}
#endif
