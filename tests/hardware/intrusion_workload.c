/* What a balancer costs the workload it balances: mmap/munmap latency beside a busy buffer.
 *
 * Built and run by scripts/bench-intrusion (cc -O2 -pthread):
 *
 *     intrusion_workload SIZE_MIB THP(0|1) DURATION_S CPU
 *
 * Maps SIZE_MIB of anonymous memory (MADV_HUGEPAGE or MADV_NOHUGEPAGE, see
 * madvise(2)), writes every page once, then runs two threads on CPU:
 *   - a busy thread writes one byte per 4 KiB of the buffer, over and over,
 *     so the memory is in use (the kernel's NUMA scanner only samples tasks
 *     that run: kernel/sched/fair.c task_numa_work);
 *   - a latency thread, every 1 ms, maps 16 pages, writes each, unmaps them,
 *     and records how long that took.
 * munmap(2) takes the process's mmap_lock for writing. Anything that holds it
 * for reading -- a read of /proc/PID/numa_maps walks the page tables under it
 * (fs/proc/task_mmu.c), so does the kernel's task_numa_work changing
 * protections -- makes munmap wait, and the wait shows in this latency.
 *
 * Prints one JSON line when the buffer is written ({"pid": N, "ready": true}),
 * then at the end one line with the latency distribution in microseconds:
 * {"samples": N, "p50_us": ..., "p99_us": ..., "p999_us": ..., "max_us": ...}.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define SMALL_PAGES 16
#define PAGE 4096UL

static volatile int stop;
static unsigned char *buf;
static size_t buf_bytes;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) {
        perror("sched_setaffinity");
        exit(2);
    }
}

static int cpu_arg;

static void *busy(void *arg)
{
    (void)arg;
    pin(cpu_arg);
    unsigned char v = 0;
    while (!stop) {
        v++;
        for (size_t off = 0; off < buf_bytes && !stop; off += PAGE)
            buf[off] = v;
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s SIZE_MIB THP(0|1) DURATION_S CPU\n", argv[0]);
        return 2;
    }
    size_t mib = strtoul(argv[1], NULL, 10);
    int thp = atoi(argv[2]);
    double duration_s = atof(argv[3]);
    cpu_arg = atoi(argv[4]);
    pin(cpu_arg);

    buf_bytes = mib << 20;
    /* 2 MiB alignment so a THP run can really get huge pages. */
    size_t align = 2UL << 20;
    unsigned char *raw = mmap(NULL, buf_bytes + align, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    buf = (unsigned char *)(((uintptr_t)raw + align - 1) & ~(align - 1));
    if (madvise(buf, buf_bytes, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) != 0)
        perror("madvise");
    memset(buf, 1, buf_bytes);
    printf("{\"pid\": %d, \"ready\": true}\n", getpid());
    fflush(stdout);

    pthread_t t;
    if (pthread_create(&t, NULL, busy, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    size_t cap = (size_t)(duration_s * 1000) + 16;
    uint64_t *lat = calloc(cap, sizeof(*lat));
    size_t n = 0;
    uint64_t end = now_ns() + (uint64_t)(duration_s * 1e9);
    struct timespec gap = {0, 1000000};
    while (n < cap && now_ns() < end) {
        uint64_t t0 = now_ns();
        unsigned char *p = mmap(NULL, SMALL_PAGES * PAGE, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            perror("mmap small");
            return 1;
        }
        for (size_t i = 0; i < SMALL_PAGES; i++)
            p[i * PAGE] = (unsigned char)i;
        munmap(p, SMALL_PAGES * PAGE);
        lat[n++] = now_ns() - t0;
        nanosleep(&gap, NULL);
    }
    stop = 1;
    pthread_join(t, NULL);
    qsort(lat, n, sizeof(*lat), cmp_u64);
    if (n == 0)
        return 1;
#define PCT(q) (lat[(size_t)((n - 1) * (q))] / 1000.0)
    printf("{\"samples\": %zu, \"p50_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
           n, PCT(0.50), PCT(0.99), PCT(0.999), lat[n - 1] / 1000.0);
    return 0;
}
