// SPDX-License-Identifier: GPL-2.0
//
// Kiln's whole-host CPU sampler. Attached to one software cpu-clock perf event per online CPU; each
// sample adds 1 to a counter keyed by (tgid, user stack id, kernel stack id).
//
// Draining without losing or double-counting samples: there are two generations of (counts, stacks)
// maps. `control[0].generation` says which one samples go to. User space flips it, waits until every
// program that may have read the old value has finished (the per-CPU `inflight` sequence below), and
// only then reads and empties the old generation, which no program writes any more.
//
// No vmlinux.h: the program only needs UAPI types (`struct bpf_perf_event_data`) and helpers, so it
// builds from Debian's linux-libc-dev and libbpf-dev headers alone, without BTF of the build host.

#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <bpf/bpf_helpers.h>

#define MAX_STACK_DEPTH 127
#define EEXIST 17
#define ENOMEM 12

// A stack id standing for "the stack map bucket held another stack" (the sample still counts).
#define STACK_ID_COLLISION -2
// A stack id standing for "the stack map was full".
#define STACK_ID_MAP_FULL -3
// No stack of that kind (kernel threads have no user stack; user-mode samples no kernel stack).
#define STACK_ID_NONE -1

// Indices into the per-CPU `stats` array; user space reads them with the same numbers.
enum stat {
    STAT_SAMPLES = 0,          // programs run with a process to charge
    STAT_IDLE = 1,             // samples of the idle task (pid 0), not recorded
    STAT_USER_COLLISION = 2,   // bpf_get_stackid(user) returned -EEXIST
    STAT_KERNEL_COLLISION = 3, // bpf_get_stackid(kernel) returned -EEXIST
    STAT_STACK_MAP_FULL = 4,   // bpf_get_stackid returned -ENOMEM
    STAT_LOST = 5,             // the counts map was full: the sample is lost
    STAT_NESTED = 6,           // the in-flight sequence was odd on entry: should never happen
    STAT_COUNT = 7,
};

struct sample_key {
    __u32 tgid;
    __s32 user_stack_id;
    __s32 kernel_stack_id;
};

struct control {
    __u32 generation;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, struct sample_key);
    __type(value, __u64);
} counts0 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16384);
    __type(key, struct sample_key);
    __type(value, __u64);
} counts1 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_STACK_TRACE);
    __uint(max_entries, 16384);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
} stacks0 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_STACK_TRACE);
    __uint(max_entries, 16384);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
} stacks1 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct control);
} control SEC(".maps");

// Per CPU: incremented on entry (odd: a program is running) and on exit (even: idle). Programs on one
// CPU never nest (the kernel's bpf_prog_active guard), so odd means exactly one program in flight.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} inflight SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} stats SEC(".maps");

static __always_inline void count_stat(__u32 index) {
    __u64 *value = bpf_map_lookup_elem(&stats, &index);
    if (value)
        *value += 1; // per-CPU slot, no other writer: a plain add is exact
}

static __always_inline __s32 stack_id(long id, __u32 collision_stat) {
    if (id >= 0)
        return (__s32)id;
    if (id == -EEXIST) {
        count_stat(collision_stat);
        return STACK_ID_COLLISION;
    }
    if (id == -ENOMEM) {
        count_stat(STAT_STACK_MAP_FULL);
        return STACK_ID_MAP_FULL;
    }
    return STACK_ID_NONE;
}

static __always_inline void record(struct bpf_perf_event_data *ctx, __u32 tgid, void *stacks, void *counts) {
    struct sample_key key = {};
    key.tgid = tgid;
    key.kernel_stack_id = stack_id(bpf_get_stackid(ctx, stacks, 0), STAT_KERNEL_COLLISION);
    key.user_stack_id = stack_id(bpf_get_stackid(ctx, stacks, BPF_F_USER_STACK), STAT_USER_COLLISION);

    __u64 *count = bpf_map_lookup_elem(counts, &key);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return;
    }
    __u64 one = 1;
    if (bpf_map_update_elem(counts, &key, &one, BPF_NOEXIST) == 0)
        return;
    // Another CPU may have inserted the same key between the lookup and the update.
    count = bpf_map_lookup_elem(counts, &key);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return;
    }
    count_stat(STAT_LOST);
}

SEC("perf_event")
int kiln_cpu_sample(struct bpf_perf_event_data *ctx) {
    __u32 zero = 0;
    __u64 *seq = bpf_map_lookup_elem(&inflight, &zero);
    if (!seq)
        return 0;
    // A fetching atomic is a full barrier (x86 lock xadd, arm64 ldaddal): the odd sequence is visible
    // before the generation is read below, which is what user space's flip-then-wait relies on.
    __u64 before = __sync_fetch_and_add(seq, 1);
    if (before & 1)
        count_stat(STAT_NESTED);

    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == 0) {
        count_stat(STAT_IDLE);
    } else {
        count_stat(STAT_SAMPLES);
        struct control *ctl = bpf_map_lookup_elem(&control, &zero);
        __u32 generation = ctl ? (ctl->generation & 1) : 0;
        if (generation)
            record(ctx, tgid, &stacks1, &counts1);
        else
            record(ctx, tgid, &stacks0, &counts0);
    }

    // Fetch form again, so that every map write above is visible before the sequence turns even.
    __u64 after = __sync_fetch_and_add(seq, 1);
    if ((after & 1) == 0)
        count_stat(STAT_NESTED);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
