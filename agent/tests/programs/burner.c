// CPU burner for the agent's end-to-end test. Built with clang -O1 -fno-omit-frame-pointer (gcc gives
// frameless leaf functions even then, which hides the leaf's caller from a frame-pointer unwinder).
//
// Two threads burn CPU 2:1: the main thread runs main -> outer_heavy -> inner_heavy for 2 units of its
// own CPU time, a second thread runs main -> outer_light -> inner_light for 1 unit (its thread function
// re-enters main, legal in C, so that both stacks are rooted in main). A unit is 10 ms of the thread's
// CPU time (CLOCK_THREAD_CPUTIME_ID), not a count of loop iterations: iterations per CPU second change
// with what shares the core (an SMT sibling, caches), so only CPU time splits 2:1 whatever else runs on
// the host -- and CPU time is what a CPU profiler measures.
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <time.h>

volatile unsigned long sink;
// Read inside the loops so the compiler cannot treat inner_* as pure and fold repeated calls.
volatile unsigned long seed = 1;

__attribute__((noinline)) unsigned long inner_heavy(unsigned long n) {
    unsigned long acc = seed;
    for (unsigned long i = 0; i < n; i++)
        acc += i * i ^ (acc >> 3);
    return acc;
}

__attribute__((noinline)) unsigned long inner_light(unsigned long n) {
    unsigned long acc = seed;
    for (unsigned long i = 0; i < n; i++)
        acc += i * i ^ (acc >> 3);
    return acc;
}

static double thread_cpu_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

// The add after the call keeps it from being a tail call, so outer's frame stays on the stack. Chunks
// are short (well under a millisecond), so the last one overshoots the budget by a negligible amount.
__attribute__((noinline)) void outer_heavy(unsigned long units, unsigned long chunk) {
    double until = thread_cpu_seconds() + (double)units * 0.010;
    while (thread_cpu_seconds() < until)
        sink += inner_heavy(chunk) + 1;
}

__attribute__((noinline)) void outer_light(unsigned long units, unsigned long chunk) {
    double until = thread_cpu_seconds() + (double)units * 0.010;
    while (thread_cpu_seconds() < until)
        sink += inner_light(chunk) + 1;
}

static unsigned long g_units, g_chunk;

// noinline: light_thread's call must stay a real call so main appears on the light thread's stack.
__attribute__((noinline)) int main(int argc, char **argv);

static void *light_thread(void *arg) {
    (void)arg;
    char *args[] = {"light", NULL};
    main(-1, args);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc == -1) {
        outer_light(g_units, g_chunk);
        return 0;
    }
    // 10 ms units of CPU time for the light thread; the heavy one burns twice as many.
    g_units = argc > 1 ? strtoul(argv[1], NULL, 10) : 40;
    g_chunk = 100000;
    pthread_t thread;
    if (pthread_create(&thread, NULL, light_thread, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    outer_heavy(2 * g_units, g_chunk);
    pthread_join(thread, NULL);
    printf("done %lu\n", sink);
    return 0;
}
