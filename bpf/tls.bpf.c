// SPDX-License-Identifier: Apache-2.0
// OpenSSL plaintext through uprobes; loaded with sockets.bpf.c (appended to it:
// it shares its maps, event layout and ring buffer).
//
//   SSL_write/SSL_read(_ex) entry   remember the SSL * and the plaintext buffer (probed
//                                   on the internal functions they call where
//                                   receivers/openssl_probes.py finds them)
//   socket tracepoints inside it    name the socket (sockets.bpf.c, ssl_calls),
//                                   and mark it TLS so its ciphertext is never sent;
//                                   a write's plaintext is sent at its first transfer
//   SSL_read return                 the plaintext read, as a data event of the
//                                   socket's plaintext stream (its own offsets)
//   SSL_do_handshake                ties SSL * to its socket before any data moves
//
// User space tells the streams apart by TLS_STREAM, the low bit of the socket
// address (a struct sock is never at an odd address): quiet offsets and spans
// of the plaintext stream use sk | TLS_STREAM.

#define TLS_STREAM 1
#define DIR_NONE 2 // handshake: nothing to send

struct tls_conn {
    u64 sk;
    u64 gen;      // the socket's generation: an SSL * and a sock address can both be reused
    u64 bytes[2]; // plaintext stream offset per direction
    u64 retry;    // a write sent, then failed (WANT_WRITE): its retry sends nothing new
};

BPF_TABLE("lru_hash", u64, struct tls_conn, tls_conns, MAX_CONNS);

// The SSL *'s plaintext stream state, tied to socket `sk` (0: as known).
static __always_inline struct tls_conn *tls_conn_of(u64 ssl, u64 sk) {
    struct tls_conn *tc = tls_conns.lookup(&ssl);
    if (sk && (!tc || tc->sk != sk)) {
        struct tls_conn fresh = {.sk = sk};
        tls_conns.update(&ssl, &fresh);
        tc = tls_conns.lookup(&ssl);
    }
    return tc;
}

// `n` plaintext bytes from `buf`, the next bytes of the stream, as an event in
// `scratch` (1) for the caller to send: plain HTTP/1 in it is counted (red_*)
// and under the span budget as a plaintext socket's is.
static __always_inline int tls_data(struct tls_conn *tc, struct ssl_call *c, u8 dir, u64 n,
                                    u64 ts, u32 tgid, u32 tid) {
    u64 skey = tc->sk;
    struct conn_state *cs = conn_of(skey);
    if (!cs)
        return 0; // the socket closed long ago
    if (tc->gen != cs->gen) { // a new connection: its plaintext starts at 0
        tc->gen = cs->gen;
        tc->bytes[0] = 0;
        tc->bytes[1] = 0;
        tc->retry = 0;
    }
    u64 offset = __sync_fetch_and_add(&tc->bytes[dir & 1], n);
    struct quiet_key qk = {.sk = skey | TLS_STREAM, .gen = cs->gen, .dir = dir};
    u64 *quiet_until = quiet.lookup(&qk);
    if (quiet_until && offset + n < *quiet_until)
        return 0;

    struct data_event *ev = data_event_for(cs, skey, dir, offset, (u32)n, tgid, tid);
    if (!ev)
        return 0;
    ev->fd = c->fd;
    ev->ts = ts;
    ev->has_payload = 1;
    ev->tls = 1;
    u64 buf = c->buf;
    u64 want = n;
    if (quiet_until && *quiet_until > offset) { // skip what user space has sized
        u64 skip = *quiet_until - offset;
        buf += skip;
        want -= skip;
        ev->cap_offset = offset + skip;
    }
    u32 len = bounded(want > CAPTURE_BYTES ? CAPTURE_BYTES : (u32)want, CAPTURE_BYTES);
    ev->captured = bpf_probe_read_user(ev->data, len, (void *)buf) == 0 ? len : 0;
    return 1;
}

static __always_inline int tls_write_seen(struct ssl_call *call, u64 sk, u32 tgid, u32 tid) {
    call->emitted = 1;
    struct tls_conn *tc = tls_conn_of(call->ssl, sk);
    if (!tc)
        return 0;
    if (tc->retry && tc->retry == call->num) {
        tc->retry = 0; // OpenSSL retries a write with the same arguments: already sent
        return 0;
    }
    return tls_data(tc, call, DIR_EGRESS, call->num, call->ts, tgid, tid);
}


static __always_inline void send_tls_scratch(struct pt_regs *ctx) {
    red_tls_progs.call(ctx, 0); // counts and sends; returns only if it is not loaded
    int zero = 0;
    struct data_event *ev = scratch.lookup(&zero);
    if (ev)
        send_data_event(ev);
}

static __always_inline int ssl_enter(u64 ssl, u64 buf, u64 num, u64 out_len, u8 dir) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) == SELF_TGID)
        return 0;
    u32 tid = (u32)id;
    struct ssl_call *call = ssl_calls.lookup(&tid);
    if (call) {
        call->depth++; // an SSL_* call made by another: the outer one reports
        return 0;
    }
    struct ssl_call fresh = {
        .ssl = ssl, .buf = buf, .num = num, .out_len = out_len, .ts = bpf_ktime_get_ns(), .dir = dir};
    if (ssl_calls.insert(&tid, &fresh) == 0)
        ssl_call_counted(1);
    return 0;
}

static __always_inline int ssl_exit(struct pt_regs *ctx, int is_ex) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    struct ssl_call *call = ssl_calls.lookup(&tid);
    if (!call)
        return 0;
    if (call->depth) {
        call->depth--;
        return 0;
    }
    struct ssl_call c = *call;
    if (ssl_calls.delete(&tid) == 0)
        ssl_call_counted(-1);

    struct tls_conn *tc = tls_conn_of(c.ssl, c.sk);
    if (!tc || c.dir == DIR_NONE)
        return 0;
    int rc = (int)PT_REGS_RC(ctx); // an int: the upper half of the register is not defined
    u64 n = 0;
    if (rc > 0 && is_ex)
        bpf_probe_read_user(&n, sizeof(n), (void *)c.out_len);
    else if (rc > 0)
        n = (u64)rc;
    if (c.dir == DIR_EGRESS) {
        if (c.emitted && n == 0)
            tc->retry = c.num; // sent at its first transfer, but the call failed
        else if (!c.emitted && n && tls_data(tc, &c, DIR_EGRESS, n, c.ts, tgid, tid))
            send_tls_scratch(ctx); // nothing reached the socket inside the call
        return 0;
    }
    if (n && tls_data(tc, &c, DIR_INGRESS, n, bpf_ktime_get_ns(), tgid, tid))
        send_tls_scratch(ctx); // a read: the plaintext is in the buffer now
    return 0;
}

// int SSL_write(SSL *, const void *buf, int num); int SSL_read(SSL *, void *buf, int num)
int ssl_write_enter(struct pt_regs *ctx) {
    return ssl_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), (u32)PT_REGS_PARM3(ctx), 0, DIR_EGRESS);
}
int ssl_read_enter(struct pt_regs *ctx) {
    return ssl_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), (u32)PT_REGS_PARM3(ctx), 0, DIR_INGRESS);
}
// int SSL_write_ex(SSL *, const void *buf, size_t num, size_t *written); SSL_read_ex alike,
// and ssl_write_internal and ssl_read_internal, which they and SSL_write/SSL_read call
int ssl_write_ex_enter(struct pt_regs *ctx) {
    return ssl_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx),
                     DIR_EGRESS);
}
int ssl_read_ex_enter(struct pt_regs *ctx) {
    return ssl_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM4(ctx),
                     DIR_INGRESS);
}
// since OpenSSL 3.3: int ssl_write_internal(SSL *, const void *buf, size_t num, uint64_t flags,
// size_t *written)
int ssl_write_ex2_enter(struct pt_regs *ctx) {
    return ssl_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), PT_REGS_PARM5(ctx),
                     DIR_EGRESS);
}
int ssl_handshake_enter(struct pt_regs *ctx) {
    return ssl_enter(PT_REGS_PARM1(ctx), 0, 0, 0, DIR_NONE);
}
int ssl_exit_plain(struct pt_regs *ctx) {
    return ssl_exit(ctx, 0);
}
int ssl_exit_ex(struct pt_regs *ctx) {
    return ssl_exit(ctx, 1);
}
