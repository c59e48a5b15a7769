// Two processes passing a byte back and forth over pipes: every round trip is
// two context switches, the load where an off-CPU probe (on every switch) costs
// the most. Prints {"rounds": N} after SECONDS.
// Usage: pingpong SECONDS
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 5;
    int there[2], back[2];
    if (pipe(there) || pipe(back))
        return 1;
    char c = 0;
    if (fork() == 0) {
        close(there[1]); // the parent's ends: EOF reaches the child when the parent is done
        close(back[0]);
        while (read(there[0], &c, 1) == 1)
            if (write(back[1], &c, 1) != 1)
                break;
        return 0;
    }
    close(there[0]);
    close(back[1]);
    unsigned long rounds = 0;
    struct timespec begin, now;
    clock_gettime(CLOCK_MONOTONIC, &begin);
    do {
        for (int i = 0; i < 1000; i++, rounds++)
            if (write(there[1], &c, 1) != 1 || read(back[0], &c, 1) != 1)
                return 1;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - begin.tv_sec + (now.tv_nsec - begin.tv_nsec) / 1e9 < seconds);
    close(there[1]);
    printf("{\"rounds\": %lu}\n", rounds);
    return 0;
}
