/*
 * The libfabric import monitor (crates/hostmm-c/c/mmn_fabric.c), tested as far as a machine
 * without RDMA hardware allows:
 *
 *  1. libfabric accepts the import (fi_open "mr_cache" + fi_import_fid returns 0 and fills
 *     in the notify op), and refuses a second one;
 *  2. driven through its export ops as libfabric drives them, the adapter calls libfabric's
 *     notify exactly once for every invalidation that overlaps a subscribed range (munmap,
 *     mremap, MADV_DONTNEED, an mmn_import) and never for one that does not, or after
 *     unsubscribe;
 *  3. each provider available here is asked to register memory (fi_mr_reg): if its
 *     registration cache subscribes ranges through the adapter, the race runs through it
 *     (register, replace the memory, register again: the second registration must not be
 *     a cache hit on the replaced memory). A provider that never subscribes is reported as
 *     not driving the cache.
 *
 *   libfabric_monitor [uffd|bracketed|auto]
 *
 * Prints what happened per step; exits non-zero if step 1 or 2 fails, or a provider that
 * drives the cache hands out a stale registration.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_errno.h>

#include "mmn_fabric.h"

static mmn_monitor *m;
static struct mmn_fabric_monitor *fm;
static int uffd;
static size_t page;
static int failures;

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);                       \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            failures++;                                                                  \
        }                                                                                \
    } while (0)

static void *map(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    memset(p, 1, len);
    return p;
}

/* Changes go through the bracketed wrappers, or as plain calls under uffd; either way every
 * invalidation has been delivered when these return. */
static void do_munmap(void *p, size_t len)
{
    if (uffd) {
        munmap(p, len);
        mmn_monitor_sync(m);
    } else {
        CHECK(mmn_munmap(m, p, len) == MMN_OK, "mmn_munmap: %s", mmn_last_error());
    }
}

static void do_dontneed(void *p, size_t len)
{
    if (uffd) {
        madvise(p, len, MADV_DONTNEED);
        mmn_monitor_sync(m);
    } else {
        CHECK(mmn_madvise(m, p, len, MADV_DONTNEED) == MMN_OK, "mmn_madvise: %s", mmn_last_error());
    }
}

static void *do_move(void *p, size_t len)
{
    void *to = NULL;
    if (uffd) {
        to = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (char *)map(len) + 0);
        mmn_monitor_sync(m);
    } else {
        void *dest = map(len);
        CHECK(mmn_mremap(m, p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dest, &to) == MMN_OK,
              "mmn_mremap: %s", mmn_last_error());
    }
    return to;
}

static struct mmn_fabric_stats stats(void)
{
    struct mmn_fabric_stats s;
    mmn_fabric_monitor_stats(fm, &s);
    return s;
}

/* libfabric's notify op, wrapped: counts the calls that really reach libfabric. */
static struct fi_ops_mem_notify *libfabric_ops, counting_ops;
static uint64_t notified;
static void counting_notify(struct fid_mem_monitor *mon, const void *addr, size_t len)
{
    __atomic_fetch_add(&notified, 1, __ATOMIC_SEQ_CST);
    libfabric_ops->notify(mon, addr, len);
}

static uint64_t notifies(void)
{
    return __atomic_load_n(&notified, __ATOMIC_SEQ_CST);
}

/* An independent subscriber on the same ranges: what libfabric's notify must match. */
static uint64_t seen;
static void count_cb(void *user, uint64_t start, uint64_t end, int event)
{
    (void)user;
    (void)start;
    (void)end;
    if (event == MMN_EVENT_UNMAP || event == MMN_EVENT_CLEAR)
        seen++;
}

/* Runs `op`, then checks that libfabric's notify ran once per invalidation of a subscribed
 * range the independent subscriber saw, and at least `min` times. */
#define EXPECT_NOTIFIES(min, op)                                                          \
    do {                                                                                  \
        uint64_t n0 = notifies(), s0 = seen;                                        \
        op;                                                                               \
        uint64_t n = notifies() - n0, k = seen - s0;                                \
        CHECK(n == k && (long long)n >= (min), "%s: %llu notifies for %llu invalidations (min %d)",  \
              #op, (unsigned long long)n, (unsigned long long)k, (min));                  \
        total += n;                                                                       \
        ops++;                                                                            \
    } while (0)

static void step_notify(void)
{
    struct fid_mem_monitor *mon = (struct fid_mem_monitor *)mmn_fabric_monitor_fid(fm);
    CHECK(mon->export_ops->start(mon) == 0, "start");
    char *r1 = map(4 * page), *r2 = map(2 * page), *u = map(page), *r3 = map(page);
    mmn_subscription *subs[3];
    char *at[3] = {r1, r2, r3};
    size_t len[3] = {4 * page, 2 * page, page};
    for (int i = 0; i < 3; i++) {
        CHECK(mon->export_ops->subscribe(mon, at[i], len[i]) == 0, "subscribe %d", i);
        CHECK(mmn_subscribe(m, at[i], len[i], count_cb, NULL, &subs[i]) == MMN_OK, "mmn_subscribe");
    }
    CHECK(mon->export_ops->valid(mon, r1, 4 * page), "valid with nothing pending");
    uint64_t total = 0, ops = 0;
    mmn_importer *imp;
    CHECK(mmn_importer_create(m, &imp) == MMN_OK, "importer");
    char *moved = NULL;

    EXPECT_NOTIFIES(1, do_dontneed(r1 + page, page));
    EXPECT_NOTIFIES(0, do_munmap(u, page)); /* overlaps nothing subscribed */
    EXPECT_NOTIFIES(1, moved = do_move(r2, 2 * page)); /* the old range of r2 goes */
    EXPECT_NOTIFIES(1, do_munmap(r1, 4 * page));
    EXPECT_NOTIFIES(1, CHECK(mmn_import(imp, r3, page, MMN_EVENT_UNMAP) == MMN_OK, "import"));
    CHECK(mon->export_ops->valid(mon, r3, page), "valid with nothing pending");

    /* After unsubscribe, nothing. */
    for (int i = 0; i < 3; i++) {
        mon->export_ops->unsubscribe(mon, at[i], len[i]);
        mmn_unsubscribe(subs[i]);
    }
    CHECK(stats().subscribed == 0, "every range unsubscribed");
    uint64_t before = notifies();
    CHECK(mmn_import(imp, r3, page, MMN_EVENT_UNMAP) == MMN_OK, "import");
    CHECK(notifies() == before, "a notify after unsubscribe");
    CHECK(notifies() == stats().notifies, "the adapter's count matches the calls libfabric got");
    mmn_importer_destroy(imp);
    mon->export_ops->stop(mon);
    munmap(moved, 2 * page);
    munmap(r3, page);
    printf("notify: %llu calls of libfabric's notify over %llu operations (MADV_DONTNEED, munmap "
           "elsewhere, mremap, munmap, mmn_import), one per invalidation of a subscribed range "
           "(an independent mmn_subscribe counted the same), none after unsubscribe\n",
           (unsigned long long)total, (unsigned long long)ops);
}

/* Asks `prov` to register memory; returns 1 if it drove the cache (subscribed a range). */
static int try_provider(const char *prov, unsigned rounds)
{
    struct fi_info *hints = fi_allocinfo(), *info = NULL;
    struct fid_fabric *fabric = NULL;
    struct fid_domain *domain = NULL;
    int drove = 0;
    hints->fabric_attr->prov_name = strdup(prov);
    hints->caps = FI_MSG;
    hints->ep_attr->type = FI_EP_RDM;
    hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED |
                                  FI_MR_PROV_KEY | FI_MR_ENDPOINT;
    int ret = fi_getinfo(FI_VERSION(1, 13), NULL, NULL, 0, hints, &info);
    if (ret) {
        printf("provider %s: not available here (fi_getinfo: %s)\n", prov, fi_strerror(-ret));
        goto out;
    }
    if ((ret = fi_fabric(info->fabric_attr, &fabric, NULL)) ||
        (ret = fi_domain(fabric, info, &domain, NULL))) {
        printf("provider %s: cannot open a domain (%s)\n", prov, fi_strerror(-ret));
        goto out;
    }
    struct mmn_fabric_stats s0 = stats();
    size_t len = 4 * page;
    char *buf = map(len);
    unsigned stale = 0, done = 0;
    for (unsigned i = 0; i < rounds; i++) {
        struct fid_mr *mr = NULL;
        uint64_t subs = stats().subscribes;
        ret = fi_mr_reg(domain, buf, len, FI_SEND | FI_RECV, 0, 0, 0, &mr, NULL);
        if (ret) {
            printf("provider %s: fi_mr_reg: %s\n", prov, fi_strerror(-ret));
            break;
        }
        int subscribed = stats().subscribes > subs;
        fi_close(&mr->fid); /* a cached entry stays in the cache */
        if (i == 0 && !subscribed)
            break; /* it does not register through the cache */
        if (i > 0 && !subscribed)
            stale++; /* the registration after a replacement was a hit on the old memory */
        done++;
        /* Replace buf with fresh memory at the same address. */
        char *fresh = map(len);
        void *to = NULL;
        if (uffd) {
            to = mremap(fresh, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, buf);
            mmn_monitor_sync(m);
        } else if (mmn_mremap(m, fresh, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, buf, &to) != MMN_OK) {
            fprintf(stderr, "mmn_mremap: %s\n", mmn_last_error());
            exit(1);
        }
    }
    struct mmn_fabric_stats s1 = stats();
    if (done == 0) {
        printf("provider %s: fi_mr_reg did not go through libfabric's registration cache "
               "(no subscribe, %llu valid calls): it does not drive the MR cache\n",
               prov, (unsigned long long)(s1.valid_calls - s0.valid_calls));
    } else {
        drove = 1;
        printf("provider %s: drives the MR cache: rounds=%u stale=%u subscribes=%llu "
               "notifies=%llu valid=%llu\n",
               prov, done, stale, (unsigned long long)(s1.subscribes - s0.subscribes),
               (unsigned long long)(s1.notifies - s0.notifies),
               (unsigned long long)(s1.valid_calls - s0.valid_calls));
        CHECK(stale == 0, "provider %s handed out %u stale registrations", prov, stale);
    }
    munmap(buf, len);
out:
    if (domain)
        fi_close(&domain->fid);
    if (fabric)
        fi_close(&fabric->fid);
    if (info)
        fi_freeinfo(info);
    fi_freeinfo(hints);
    return drove;
}

int main(int argc, char **argv)
{
    const char *want = argc > 1 ? argv[1] : "auto";
    int source = strcmp(want, "uffd") == 0        ? MMN_SOURCE_UFFD
                 : strcmp(want, "bracketed") == 0 ? MMN_SOURCE_BRACKETED
                                                  : MMN_SOURCE_AUTO;
    page = (size_t)sysconf(_SC_PAGESIZE);
    int rc = mmn_monitor_create(source, &m);
    if (rc != MMN_OK) {
        fprintf(stderr, "mmn_monitor_create: %s (%s)\n", mmn_strerror(rc), mmn_last_error());
        return 1;
    }
    uffd = mmn_monitor_source(m) == MMN_SOURCE_UFFD;
    printf("libfabric %u.%u, source %s\n", FI_MAJOR(fi_version()), FI_MINOR(fi_version()),
           uffd ? "uffd" : "bracketed");
    CHECK(mmn_fabric_monitor_create(m, &fm) == MMN_OK, "adapter: %s", mmn_last_error());

    /* 1. The import. */
    int ret = mmn_fabric_monitor_import(fm);
    struct fid_mem_monitor *mon = (struct fid_mem_monitor *)mmn_fabric_monitor_fid(fm);
    CHECK(ret == 0, "fi_import_fid: %s", fi_strerror(-ret));
    CHECK(mon->import_ops && mon->import_ops->notify, "libfabric filled in no notify op");
    struct mmn_fabric_monitor *second;
    CHECK(mmn_fabric_monitor_create(m, &second) == MMN_OK, "second adapter");
    int again = mmn_fabric_monitor_import(second);
    CHECK(again == -FI_EBUSY, "a second import: %d, expected -FI_EBUSY", again);
    mmn_fabric_monitor_destroy(second);
    if (mon->import_ops) {
        libfabric_ops = mon->import_ops;
        counting_ops = *libfabric_ops;
        counting_ops.notify = counting_notify;
        mon->import_ops = &counting_ops;
    }
    printf("import: accepted (notify op set), a second import refused with %s\n",
           fi_strerror(-again));

    /* 2. notify for every invalidation of a subscribed range. */
    step_notify();

    /* 3. Providers available without RDMA hardware. */
    const char *provs[] = {"tcp", "net", "ofi_rxm", "sockets", "shm", "udp", "ofi_rxd",
                           "ofi_mrail", "psm", "psm2", "psm3", "verbs", "efa"};
    int driven = 0;
    for (size_t i = 0; i < sizeof provs / sizeof *provs; i++)
        driven += try_provider(provs[i], 200);
    printf("providers that drove libfabric's MR cache through the adapter: %d\n", driven);

    mmn_fabric_monitor_destroy(fm);
    mmn_monitor_destroy(m);
    printf("%d passed, %d failed\n", failures ? 0 : 1, failures ? 1 : 0);
    return failures ? 1 : 0;
}
