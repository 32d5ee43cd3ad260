/*
 * The unmap/remap race against lookups, in C against libmmnotify (the race of
 * `mmnotify race --pattern replace`).
 *
 * One mutator replaces a 4-page range A again and again: it maps fresh memory elsewhere,
 * writes a new generation number into every page, and moves it over A with
 * mremap(MREMAP_FIXED) (the old pages of A are freed). Looker threads look A up in an
 * mmn_cache whose registrar records, for every page, the physical frame (from
 * /proc/self/pagemap) and the generation word (read through /proc/self/mem, which never
 * faults). Every lookup that no replacement overlapped is checked: the registration it got
 * must hold the frames and generations mapped at A now. One that does not is stale.
 *
 *   race [uffd|bracketed|auto] [ROUNDS] [--unbracketed]
 *
 * Under uffd the mutator uses plain system calls; under bracketed it uses mmn_mremap, or,
 * with --unbracketed (the broken variant, to show the check has teeth), plain mremap, which
 * the bracketed source cannot see. Prints `rounds=N stale=K ...`; exits 0 only if no lookup
 * was stale, at least one was checked, and every registration was deregistered (no leak).
 * Build: cc -std=c11 -O2 race.c $(pkg-config --cflags --libs mmnotify) -pthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mmnotify.h>

#define NPAGES 4
#define LOOKERS 2

struct record {
    uint64_t start, len;
    uint64_t frames[NPAGES];
    uint64_t gens[NPAGES];
};

static size_t page;
static int pagemap_fd, mem_fd;
static int frames_visible;
static unsigned char *area; /* A */
static mmn_monitor *mon;
static mmn_cache *cache;

static atomic_ulong registrations, deregistrations;
static atomic_ulong seq;  /* odd while a replacement is in progress */
static atomic_int stop;
static atomic_ulong lookups, checked, stale, failed;

/* The frames and generation words mapped at [start, start + NPAGES pages) now; -1 if a page
 * is not present or not readable. */
static int snapshot(uint64_t start, uint64_t *frames, uint64_t *gens)
{
    uint64_t pm[NPAGES];
    if (pread(pagemap_fd, pm, sizeof pm, (off_t)(start / page * 8)) != (ssize_t)sizeof pm)
        return -1;
    for (int i = 0; i < NPAGES; i++) {
        if (!(pm[i] >> 63))
            return -1;
        frames[i] = pm[i] & ((1ULL << 55) - 1);
        if (pread(mem_fd, &gens[i], 8, (off_t)(start + i * page)) != 8)
            return -1;
    }
    return 0;
}

static int reg_cb(void *user, uint64_t start, uint64_t len, size_t *handle)
{
    (void)user;
    if (len != NPAGES * page)
        return -1;
    struct record *r = malloc(sizeof *r);
    if (!r)
        return -1;
    r->start = start;
    r->len = len;
    if (snapshot(start, r->frames, r->gens) != 0) {
        free(r);
        return -1;
    }
    *handle = (size_t)r;
    atomic_fetch_add(&registrations, 1);
    return 0;
}

static void dereg_cb(void *user, uint64_t start, uint64_t len, size_t handle)
{
    (void)user;
    struct record *r = (struct record *)handle;
    if (r->start != start || r->len != len)
        abort();
    free(r);
    atomic_fetch_add(&deregistrations, 1);
}

/* One lookup, checked when no replacement overlapped it. */
static void lookup_and_check(void)
{
    unsigned long s1 = atomic_load(&seq);
    mmn_reg *reg;
    size_t h;
    int rc = mmn_cache_get(cache, area, NPAGES * page, &reg, &h);
    atomic_fetch_add(&lookups, 1);
    if (rc != MMN_OK) {
        /* A lookup colliding with a replacement may fail (the range is moving); never stale. */
        atomic_fetch_add(&failed, 1);
        return;
    }
    uint64_t frames[NPAGES], gens[NPAGES];
    int have = snapshot((uint64_t)(uintptr_t)area, frames, gens);
    unsigned long s2 = atomic_load(&seq);
    if (have == 0 && s1 == s2 && !(s1 & 1)) {
        const struct record *r = (const struct record *)h;
        int bad = memcmp(r->gens, gens, sizeof gens) != 0 ||
                  (frames_visible && memcmp(r->frames, frames, sizeof frames) != 0);
        atomic_fetch_add(&checked, 1);
        if (bad && atomic_fetch_add(&stale, 1) < 3)
            fprintf(stderr, "stale: registration of generation %llu, mapped now %llu\n",
                    (unsigned long long)r->gens[0], (unsigned long long)gens[0]);
    }
    mmn_cache_put(reg);
}

static void *looker(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop))
        lookup_and_check();
    return NULL;
}

static int die(const char *what, int rc)
{
    fprintf(stderr, "%s: %s (%s)\n", what, mmn_strerror(rc), mmn_last_error());
    exit(1);
}

/* Replaces A with fresh pages of generation `gen`. */
static void replace(uint64_t gen, int bracketed)
{
    size_t len = NPAGES * page;
    unsigned char *n = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (n == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    for (int i = 0; i < NPAGES; i++)
        memcpy(n + i * page, &gen, sizeof gen);
    atomic_fetch_add(&seq, 1);
    if (bracketed) {
        void *to;
        int rc = mmn_mremap(mon, n, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, area, &to);
        if (rc != MMN_OK)
            die("mmn_mremap", rc);
    } else if (mremap(n, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, area) == MAP_FAILED) {
        perror("mremap");
        exit(1);
    }
    atomic_fetch_add(&seq, 1);
}

int main(int argc, char **argv)
{
    const char *want = argc > 1 ? argv[1] : "auto";
    unsigned long rounds = argc > 2 ? strtoul(argv[2], NULL, 10) : 2000;
    int unbracketed = argc > 3 && strcmp(argv[3], "--unbracketed") == 0;
    int source = strcmp(want, "uffd") == 0        ? MMN_SOURCE_UFFD
                 : strcmp(want, "bracketed") == 0 ? MMN_SOURCE_BRACKETED
                                                  : MMN_SOURCE_AUTO;
    page = (size_t)sysconf(_SC_PAGESIZE);
    pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
    mem_fd = open("/proc/self/mem", O_RDONLY);
    if (pagemap_fd < 0 || mem_fd < 0) {
        perror("open /proc/self/{pagemap,mem}");
        return 1;
    }

    int rc = mmn_monitor_create(source, &mon);
    if (rc != MMN_OK)
        die("mmn_monitor_create", rc);
    int bracketed = mmn_monitor_source(mon) == MMN_SOURCE_BRACKETED;
    if (mmn_monitor_fallback_reason(mon))
        fprintf(stderr, "uffd refused, bracketed source: %s\n", mmn_monitor_fallback_reason(mon));

    /* A, fenced by PROT_NONE pages so that its mapping never merges with a neighbour. */
    size_t len = NPAGES * page;
    unsigned char *fence = mmap(NULL, len + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (fence == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    area = fence + page;
    if (mmap(area, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(area, 0, len);
    uint64_t f[NPAGES], g[NPAGES];
    if (snapshot((uint64_t)(uintptr_t)area, f, g) != 0) {
        fprintf(stderr, "pagemap unreadable\n");
        return 1;
    }
    frames_visible = f[0] != 0;
    if (!frames_visible)
        fprintf(stderr, "physical frames hidden (not root): checking generations only\n");

    mmn_registrar r = {reg_cb, dereg_cb, NULL, 1};
    mmn_cache_config cfg;
    mmn_cache_config_default(&cfg);
    if ((rc = mmn_cache_create(mon, &r, &cfg, &cache)) != MMN_OK)
        die("mmn_cache_create", rc);

    pthread_t t[LOOKERS];
    for (int i = 0; i < LOOKERS; i++)
        pthread_create(&t[i], NULL, looker, NULL);
    uint64_t gen = 1;
    for (unsigned long round = 0; round < rounds; round++) {
        for (int k = 0; k < 3; k++)
            replace(gen++, bracketed && !unbracketed);
        lookup_and_check(); /* the mutator's own check, after the round */
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < LOOKERS; i++)
        pthread_join(t[i], NULL);

    mmn_cache_counters cs;
    mmn_cache_stats(cache, &cs);
    mmn_cache_destroy(cache);
    mmn_monitor_destroy(mon);
    unsigned long regs = atomic_load(&registrations), deregs = atomic_load(&deregistrations);
    printf("source=%s%s rounds=%lu stale=%lu lookups=%lu checked=%lu failed=%lu invalidations=%llu "
           "retries=%llu registrations=%lu deregistrations=%lu frames=%s\n",
           bracketed ? "bracketed" : "uffd", unbracketed ? "(unbracketed: broken)" : "", rounds,
           atomic_load(&stale), atomic_load(&lookups), atomic_load(&checked), atomic_load(&failed),
           (unsigned long long)cs.invalidations, (unsigned long long)cs.retries, regs, deregs,
           frames_visible ? "checked" : "hidden");
    if (regs != deregs) {
        fprintf(stderr, "leak: %lu registrations, %lu deregistrations\n", regs, deregs);
        return 2;
    }
    if (atomic_load(&checked) == 0) {
        fprintf(stderr, "no lookup was checked: the race proved nothing\n");
        return 3;
    }
    return atomic_load(&stale) == 0 ? 0 : 1;
}
