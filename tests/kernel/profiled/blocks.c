// Blocks in one named function and computes in another, for the off-CPU test:
// `nap` sleeps 20 ms at a time, `work` computes about 2 ms. `nap` makes the
// system call itself (x86-64): through libc's wrapper, built without frame
// pointers, the stack walk would skip from the wrapper to nap's caller.
// Usage: blocks SECONDS (SIGTERM ends it early)
#include <signal.h>
#include <stdlib.h>
#include <time.h>

static volatile unsigned long sink;
static volatile sig_atomic_t stop;

static void on_term(int sig) {
    (void)sig;
    stop = 1;
}

__attribute__((noinline)) void nap(void) {
    struct timespec ts = {0, 20 * 1000 * 1000};
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(35 /* nanosleep */), "D"(&ts), "S"(0)
                     : "rcx", "r11", "memory");
    (void)ret;
}

__attribute__((noinline)) void work(void) {
    for (unsigned long i = 0; i < 2000000; i++)
        sink += i * i;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5;
    signal(SIGTERM, on_term);
    struct timespec begin, now;
    clock_gettime(CLOCK_MONOTONIC, &begin);
    do {
        nap();
        work();
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (!stop && now.tv_sec - begin.tv_sec + (now.tv_nsec - begin.tv_nsec) / 1e9 < seconds);
    return 0;
}
