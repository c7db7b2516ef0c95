// CPU-bound workload for the agent overhead benchmark: one spinning thread per online CPU for a given
// number of seconds; prints the total loop iterations (the throughput).
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double seconds;
static volatile int stop;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static unsigned long work(unsigned long x) {
    for (int i = 0; i < 1000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

static void *spin(void *arg) {
    unsigned long count = 0, x = (unsigned long)arg;
    while (!stop) {
        x = work(x);
        count++;
    }
    *(unsigned long *)arg = count + (x == 42);
    return NULL;
}

int main(int argc, char **argv) {
    seconds = argc > 1 ? atof(argv[1]) : 10;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    pthread_t threads[256];
    unsigned long counts[256];
    if (cpus > 256)
        cpus = 256;
    for (long i = 0; i < cpus; i++) {
        counts[i] = i + 1;
        pthread_create(&threads[i], NULL, spin, &counts[i]);
    }
    double start = now();
    while (now() - start < seconds)
        usleep(10000);
    stop = 1;
    unsigned long total = 0;
    for (long i = 0; i < cpus; i++) {
        pthread_join(threads[i], NULL);
        total += counts[i];
    }
    printf("%lu\n", total);
    return 0;
}
