// Spends its CPU in three named leaf functions, about 3:2:1, and prints the
// shares it measured itself (each call timed by the thread's CPU clock, over
// the process's CPU time), for the profiler's tests to compare with.
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
    double start = process_cpu();
    struct timespec begin, now;
    clock_gettime(CLOCK_MONOTONIC, &begin);
    do {
        double t = thread_cpu();
        burn_three(3 * unit);
        double t2 = thread_cpu();
        burn_two(2 * unit);
        double t3 = thread_cpu();
        burn_one(unit);
        double t4 = thread_cpu();
        if (syscalls)
            write_bytes(devnull, 2000);
        double t5 = thread_cpu();
        spent[0] += t2 - t;
        spent[1] += t3 - t2;
        spent[2] += t4 - t3;
        spent[3] += t5 - t4;
        rounds++;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (!stop && now.tv_sec - begin.tv_sec + (now.tv_nsec - begin.tv_nsec) / 1e9 < seconds);
    double total = process_cpu() - start;
    printf("{\"pid\": %d, \"rounds\": %lu, \"burn_three\": %.4f, \"burn_two\": %.4f, \"burn_one\": %.4f, \"write_bytes\": %.4f}\n",
           getpid(), rounds, spent[0] / total, spent[1] / total, spent[2] / total, spent[3] / total);
    return 0;
}
