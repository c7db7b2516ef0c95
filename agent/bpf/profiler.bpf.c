// SPDX-License-Identifier: GPL-2.0
//
// Kiln's whole-host CPU sampler. Attached to one software cpu-clock perf event per online CPU; each
// sample adds 1 to a counter keyed by (tgid, user stack id, kernel stack id), or, when DWARF unwinding
// is on (`control[0].stack_copy_bytes > 0`), goes to the `stack_events` ring buffer as the user
// registers (rip, rsp, rbp), the top of the user stack and the same two stack ids, for user space to
// unwind with the binaries' .eh_frame. A sample that cannot go to the ring buffer (full, stack copy
// failed) falls back to the counts map: every sample is in exactly one of the two.
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

// Only ever used as an opaque pointer (bpf_get_current_task_btf → bpf_task_pt_regs): the verifier
// types it from the kernel's BTF, so no vmlinux.h is needed.
struct task_struct;

#define MAX_STACK_DEPTH 127
// Upper bound of the user stack bytes copied per sample (the configured amount is at most this).
// A power of two: offsets into the copy buffer are masked with MAX_STACK_COPY - 1 for the verifier.
#define MAX_STACK_COPY 32768
// The stack is copied page by page (a page is the unit that is mapped or not), at most this many.
#define PAGE_SIZE 4096
#define MAX_COPY_CHUNKS (MAX_STACK_COPY / PAGE_SIZE + 1)
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
    STAT_RING_FULL = 7,        // DWARF mode: the ring buffer was full, the sample went to counts (FP)
    STAT_COPY_FAILED = 8,      // DWARF mode: no user registers or no stack byte readable, went to counts
    STAT_COPY_FULL = 9,        // DWARF mode: the copy hit the configured size (deeper stack cut there)
    STAT_EVENTS = 10,          // DWARF mode: samples sent to the ring buffer
    STAT_COUNT = 11,
};

struct sample_key {
    __u32 tgid;
    __s32 user_stack_id;
    __s32 kernel_stack_id;
};

struct control {
    __u32 generation;
    // Bytes of user stack to copy per sample; 0 turns DWARF mode off (frame-pointer stacks only).
    __u32 stack_copy_bytes;
};

// One DWARF-mode sample as user space reads it from the ring buffer; layout shared with
// `StackEventHeader` in src/bpf.rs. Only the header and `stack_len` bytes of `stack` are sent.
struct stack_event {
    __u32 tgid;
    __u32 generation;
    __s32 user_stack_id;   // frame-pointer walk, the fallback (in stacks[generation])
    __s32 kernel_stack_id; // in stacks[generation]
    __u64 ip;
    __u64 sp;
    __u64 bp;
    __u32 stack_len;       // bytes of `stack` copied from address `sp` upwards
    __u32 flags;           // STACK_EVENT_*
    // MAX_STACK_COPY plus one page of slack: the verifier checks `offset + chunk` against the buffer
    // with offset < MAX_STACK_COPY and chunk <= PAGE_SIZE, not against the configured size.
    __u8 stack[MAX_STACK_COPY + PAGE_SIZE];
};

#define STACK_EVENT_HEADER_SIZE 48
_Static_assert(__builtin_offsetof(struct stack_event, stack) == STACK_EVENT_HEADER_SIZE, "header layout");
// The copy stopped at the configured size, not at an unreadable page: the stack may go on beyond it.
#define STACK_EVENT_COPY_FULL 1

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

// Per-CPU scratch space for building a stack event (too big for the 512-byte BPF stack, and over the
// 32 KiB per-CPU value limit, so a plain array indexed by CPU; programs on one CPU never nest).
// User space sets max_entries to the number of possible CPUs.
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct stack_event);
} scratch SEC(".maps");

// DWARF-mode samples. User space consumes it continuously and sizes it (max_entries, bytes).
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4 << 20);
} stack_events SEC(".maps");

// Per CPU, per generation: stack events written to the ring buffer. After the drain's quiescence the
// sum for the old generation is final, and user space consumes the ring buffer until it has seen that
// many events of that generation (a program of the new generation may hold an earlier ring position
// for a moment, which hides later records from the consumer until it commits).
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 2);
    __type(key, __u32);
    __type(value, __u64);
} events_sent SEC(".maps");

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

static __always_inline void count_sample(struct sample_key *key, void *counts) {
    __u64 *count = bpf_map_lookup_elem(counts, key);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return;
    }
    __u64 one = 1;
    if (bpf_map_update_elem(counts, key, &one, BPF_NOEXIST) == 0)
        return;
    // Another CPU may have inserted the same key between the lookup and the update.
    count = bpf_map_lookup_elem(counts, key);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return;
    }
    count_stat(STAT_LOST);
}

#if defined(__TARGET_ARCH_x86)
// The user-mode registers of the interrupted task: the perf event's own registers when it interrupted
// user mode, else the registers saved on kernel entry (bpf_task_pt_regs). Returns 0 when there are none
// (a kernel thread).
static __always_inline int user_registers(struct bpf_perf_event_data *ctx, __u64 *ip, __u64 *sp, __u64 *bp) {
    if ((ctx->regs.cs & 3) == 3) {
        *ip = ctx->regs.rip;
        *sp = ctx->regs.rsp;
        *bp = ctx->regs.rbp;
        return 1;
    }
    struct pt_regs saved = {};
    struct task_struct *task = bpf_get_current_task_btf();
    void *regs = (void *)bpf_task_pt_regs(task);
    if (!regs || bpf_probe_read_kernel(&saved, sizeof(saved), regs) != 0)
        return 0;
    if ((saved.cs & 3) != 3)
        return 0;
    *ip = saved.rip;
    *sp = saved.rsp;
    *bp = saved.rbp;
    return 1;
}

// Sends the sample to the ring buffer with the top of the user stack. Returns 0 when it could not (the
// caller counts it in the counts map instead), 1 when the sample is in the ring buffer.
static __always_inline int send_stack_event(struct bpf_perf_event_data *ctx, struct sample_key *key,
                                            __u32 generation, __u32 copy_bytes) {
    __u32 cpu = bpf_get_smp_processor_id();
    struct stack_event *event = bpf_map_lookup_elem(&scratch, &cpu);
    if (!event)
        return 0;
    __u64 ip = 0, sp = 0, bp = 0;
    if (!user_registers(ctx, &ip, &sp, &bp) || ip == 0 || sp == 0) {
        count_stat(STAT_COPY_FAILED);
        return 0;
    }
    if (copy_bytes > MAX_STACK_COPY)
        copy_bytes = MAX_STACK_COPY;
    // Page by page: bpf_probe_read_user is all or nothing, and the stack ends at a page boundary, so the
    // first chunk runs to the end of sp's page and every further chunk is one whole page.
    __u32 copied = 0;
    for (int chunk_index = 0; chunk_index < MAX_COPY_CHUNKS; chunk_index++) {
        if (copied >= copy_bytes)
            break;
        __u64 address = sp + copied;
        __u32 chunk = PAGE_SIZE - (__u32)(address & (PAGE_SIZE - 1));
        __u32 remaining = copy_bytes - copied;
        if (chunk > remaining)
            chunk = remaining;
        // Masks restate the bounds for the verifier (offset < MAX_STACK_COPY, chunk <= 2 pages).
        __u32 offset = copied & (MAX_STACK_COPY - 1);
        chunk &= (2 * PAGE_SIZE - 1);
        if (chunk > PAGE_SIZE)
            break;
        if (bpf_probe_read_user(&event->stack[offset], chunk, (void *)address) != 0)
            break;
        copied += chunk;
    }
    if (copied == 0) {
        count_stat(STAT_COPY_FAILED);
        return 0;
    }
    event->tgid = key->tgid;
    event->generation = generation;
    event->user_stack_id = key->user_stack_id;
    event->kernel_stack_id = key->kernel_stack_id;
    event->ip = ip;
    event->sp = sp;
    event->bp = bp;
    event->stack_len = copied;
    event->flags = copied >= copy_bytes ? STACK_EVENT_COPY_FULL : 0;
    if (event->flags & STACK_EVENT_COPY_FULL)
        count_stat(STAT_COPY_FULL);
    __u64 size = STACK_EVENT_HEADER_SIZE + (__u64)(copied & (MAX_STACK_COPY * 2 - 1));
    if (size > sizeof(*event))
        return 0;
    if (bpf_ringbuf_output(&stack_events, event, size, 0) != 0) {
        count_stat(STAT_RING_FULL);
        return 0;
    }
    __u64 *sent = bpf_map_lookup_elem(&events_sent, &generation);
    if (sent)
        *sent += 1; // per-CPU slot, no other writer
    count_stat(STAT_EVENTS);
    return 1;
}
#endif

static __always_inline void record(struct bpf_perf_event_data *ctx, __u32 tgid, __u32 generation,
                                   __u32 copy_bytes, void *stacks, void *counts) {
    struct sample_key key = {};
    key.tgid = tgid;
    key.kernel_stack_id = stack_id(bpf_get_stackid(ctx, stacks, 0), STAT_KERNEL_COLLISION);
    key.user_stack_id = stack_id(bpf_get_stackid(ctx, stacks, BPF_F_USER_STACK), STAT_USER_COLLISION);
#if defined(__TARGET_ARCH_x86)
    // A task without a user stack (kernel thread) has nothing to unwind.
    if (copy_bytes > 0 && key.user_stack_id != STACK_ID_NONE &&
        send_stack_event(ctx, &key, generation, copy_bytes))
        return;
#endif
    count_sample(&key, counts);
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
        __u32 copy_bytes = ctl ? ctl->stack_copy_bytes : 0;
        if (generation)
            record(ctx, tgid, generation, copy_bytes, &stacks1, &counts1);
        else
            record(ctx, tgid, generation, copy_bytes, &stacks0, &counts0);
    }

    // Fetch form again, so that every map write above is visible before the sequence turns even.
    __u64 after = __sync_fetch_and_add(seq, 1);
    if ((after & 1) == 0)
        count_stat(STAT_NESTED);
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
