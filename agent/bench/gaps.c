// Interruption meter for the per-sample cost benchmark (sample_cost.sh): one thread pinned to the CPU
// given, reading the clock in a tight loop for a given number of seconds. Every step between two reads
// longer than a threshold is time the thread did not run: an interrupt (a profiler's sample among them),
// or another task scheduled on that CPU. Prints one line:
//   iterations=N short_count=N short_ns=N long_count=N long_ns=N
// where "short" are gaps from the threshold up to 100 us (interrupt handlers, a sample and what runs in
// it: the stack walk, a BPF program, a ring-buffer write) and "long" are longer ones (another task ran,
// or the hypervisor took the vCPU).
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: gaps CPU SECONDS [THRESHOLD_NS]\n");
        return 2;
    }
    int cpu = atoi(argv[1]);
    long long duration_ns = (long long)(atof(argv[2]) * 1e9);
    long long threshold_ns = argc > 3 ? atoll(argv[3]) : 500;
    const long long long_gap_ns = 100000;

    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) {
        perror("sched_setaffinity");
        return 1;
    }

    unsigned long long iterations = 0, short_count = 0, long_count = 0;
    long long short_ns = 0, long_ns = 0;
    long long start = now_ns(), previous = start, end = start + duration_ns;
    for (;;) {
        long long current = now_ns();
        long long step = current - previous;
        previous = current;
        iterations++;
        if (step >= threshold_ns) {
            if (step < long_gap_ns) {
                short_count++;
                short_ns += step;
            } else {
                long_count++;
                long_ns += step;
            }
        }
        if (current >= end)
            break;
    }
    printf("iterations=%llu short_count=%llu short_ns=%lld long_count=%llu long_ns=%lld\n", iterations,
           short_count, short_ns, long_count, long_ns);
    return 0;
}
