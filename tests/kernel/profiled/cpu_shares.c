// Spends its CPU in three named leaf functions, about 3:2:1, and prints the
// shares it measured itself (each call timed by the thread's CPU clock, over
// the process's CPU time), for the profiler's tests to compare with. It also
// prints a timeline ("timeline": [wall-clock ns, then the CPU seconds spent so
// far in each function and in all], every 20 ms) so that a test can take the
// truth over exactly the window a profile sampled: what a system call costs
// moves with what else the kernel runs meanwhile.
// Usage: cpu_shares SECONDS [syscalls]  ("syscalls": also pwrite to /dev/null a
// byte at a time). SIGTERM ends it early, shares printed all the same.
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;
static volatile sig_atomic_t stop;

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

static double thread_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long long wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double process_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec
         + ru.ru_stime.tv_usec / 1e6;
}

#define BURN(name)                                        \
    __attribute__((noinline)) void name(unsigned long n) { \
        for (unsigned long i = 0; i < n; i++)             \
            sink += i * i;                                \
    }
BURN(burn_three)
BURN(burn_two)
BURN(burn_one)

// pwrite, not write: the socket collector's probes on write(2) (running beside
// the tests) take time no profiler can sample (a perf event's program does not
// run while another eBPF program runs), which would skew the shares measured
// against this program's own; pwrite64 is not probed and shows the same
// kernel frames (vfs_write).
__attribute__((noinline)) void write_bytes(int fd, unsigned long n) {
    char c = 0;
    for (unsigned long i = 0; i < n; i++)
        if (pwrite(fd, &c, 1, 0) < 0)
            return;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5;
    int syscalls = argc > 2 && strcmp(argv[2], "syscalls") == 0;
    int devnull = open("/dev/null", O_WRONLY);
    signal(SIGTERM, on_term);
    const unsigned long unit = 400000;
    double spent[4] = {0};
    unsigned long rounds = 0;
    enum { MARKS = 8192, MARK_EVERY_NS = 20000000 };
    static long long mark_at[MARKS];
    static double mark_spent[MARKS][5];
    int marks = 0;
    double start = process_cpu();
    double thread_start = thread_cpu();
    struct timespec begin, now;
    clock_gettime(CLOCK_MONOTONIC, &begin);
    unsigned long seed = 88172645463325252UL;
    do {
        // each round's length varies (0.5..1.5 units, xorshift): a loop of one
        // fixed period can beat with the sampling clock and skew its shares
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        unsigned long n = unit / 2 + seed % unit;
        double t = thread_cpu();
        burn_three(3 * n);
        double t2 = thread_cpu();
        burn_two(2 * n);
        double t3 = thread_cpu();
        burn_one(n);
        double t4 = thread_cpu();
        if (syscalls)
            write_bytes(devnull, 2000);
        double t5 = thread_cpu();
        spent[0] += t2 - t;
        spent[1] += t3 - t2;
        spent[2] += t4 - t3;
        spent[3] += t5 - t4;
        rounds++;
        long long at = wall_ns();
        if (marks < MARKS && (marks == 0 || at - mark_at[marks - 1] >= MARK_EVERY_NS)) {
            mark_at[marks] = at;
            memcpy(mark_spent[marks], spent, sizeof spent);
            mark_spent[marks][4] = t5 - thread_start;
            marks++;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (!stop && now.tv_sec - begin.tv_sec + (now.tv_nsec - begin.tv_nsec) / 1e9 < seconds);
    double total = process_cpu() - start;
    printf("{\"pid\": %d, \"rounds\": %lu, \"burn_three\": %.4f, \"burn_two\": %.4f, \"burn_one\": %.4f, \"write_bytes\": %.4f, \"timeline\": [",
           getpid(), rounds, spent[0] / total, spent[1] / total, spent[2] / total, spent[3] / total);
    for (int i = 0; i < marks; i++)
        printf("%s[%lld, %.6f, %.6f, %.6f, %.6f, %.6f]", i ? ", " : "", mark_at[i], mark_spent[i][0],
               mark_spent[i][1], mark_spent[i][2], mark_spent[i][3], mark_spent[i][4]);
    printf("]}\n");
    return 0;
}
