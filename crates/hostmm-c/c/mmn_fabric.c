/* The libfabric import monitor over libmmnotify: see mmn_fabric.h. */
#include "mmn_fabric.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <rdma/fi_errno.h>

struct range {
    uintptr_t start, end;
    unsigned count;
    mmn_watch_handle *watch;
};

struct mmn_fabric_monitor {
    struct fid_mem_monitor mon; /* first: libfabric hands this pointer back */
    struct fi_ops_mem_monitor export_ops;
    mmn_monitor *m;
    mmn_subscription *all;
    pthread_mutex_t lock; /* the range table */
    struct range *ranges;
    size_t n, cap;
    atomic_bool started;
    atomic_uint_fast64_t starts, stops, subscribes, subscribe_failures, unsubscribes;
    atomic_uint_fast64_t valid_calls, valid_false, invalidations, notifies;
};

static struct mmn_fabric_monitor *of(struct fid_mem_monitor *mon)
{
    return (struct mmn_fabric_monitor *)mon; /* `mon` is the first member */
}

static bool overlaps_subscription(struct mmn_fabric_monitor *fm, uint64_t start, uint64_t end)
{
    bool hit = false;
    pthread_mutex_lock(&fm->lock);
    for (size_t i = 0; i < fm->n && !hit; i++)
        hit = fm->ranges[i].start < end && fm->ranges[i].end > start;
    pthread_mutex_unlock(&fm->lock);
    return hit;
}

/* The mmn_subscribe_all callback: runs on the invalidating thread. */
static void on_invalidate(void *user, uint64_t start, uint64_t end, int event)
{
    struct mmn_fabric_monitor *fm = user;
    /* A protection change cannot move a page; libfabric's own monitors ignore it too. */
    if (event == MMN_EVENT_PROTECTION_VMA || event == MMN_EVENT_PROTECTION_PAGE ||
        event == MMN_EVENT_SOFT_DIRTY)
        return;
    atomic_fetch_add(&fm->invalidations, 1);
    if (!overlaps_subscription(fm, start, end))
        return;
    /* libfabric's notify takes its mm_lock; our lock is not held here. */
    if (atomic_load(&fm->started) && fm->mon.import_ops && fm->mon.import_ops->notify) {
        atomic_fetch_add(&fm->notifies, 1);
        fm->mon.import_ops->notify(&fm->mon, (const void *)(uintptr_t)start, (size_t)(end - start));
    }
}

static int fab_start(struct fid_mem_monitor *mon)
{
    atomic_store(&of(mon)->started, true);
    atomic_fetch_add(&of(mon)->starts, 1);
    return 0;
}

static void fab_stop(struct fid_mem_monitor *mon)
{
    atomic_store(&of(mon)->started, false);
    atomic_fetch_add(&of(mon)->stops, 1);
}

static int fab_subscribe(struct fid_mem_monitor *mon, const void *addr, size_t len)
{
    struct mmn_fabric_monitor *fm = of(mon);
    uintptr_t start = (uintptr_t)addr, end = start + len;
    int ret = 0;
    if (len == 0)
        return -FI_EINVAL;
    pthread_mutex_lock(&fm->lock);
    for (size_t i = 0; i < fm->n; i++) {
        if (fm->ranges[i].start == start && fm->ranges[i].end == end) {
            fm->ranges[i].count++;
            goto out;
        }
    }
    if (fm->n == fm->cap) {
        size_t cap = fm->cap ? 2 * fm->cap : 64;
        struct range *r = realloc(fm->ranges, cap * sizeof *r);
        if (!r) {
            ret = -FI_ENOMEM;
            goto out;
        }
        fm->ranges = r;
        fm->cap = cap;
    }
    mmn_watch_handle *w = NULL;
    /* Under uffd the range must be watched or its unmaps go unseen; refuse what cannot be
     * (shared or file memory, another uffd's memory): libfabric then does not cache it. */
    int rc = mmn_watch(fm->m, addr, len, &w);
    if (rc != MMN_OK) {
        ret = rc == MMN_ERR_NOT_MAPPED ? -FI_EFAULT : -FI_EINVAL;
        goto out;
    }
    fm->ranges[fm->n++] = (struct range){start, end, 1, w};
out:
    pthread_mutex_unlock(&fm->lock);
    atomic_fetch_add(ret ? &fm->subscribe_failures : &fm->subscribes, 1);
    return ret;
}

static void fab_unsubscribe(struct fid_mem_monitor *mon, const void *addr, size_t len)
{
    struct mmn_fabric_monitor *fm = of(mon);
    uintptr_t start = (uintptr_t)addr, end = start + len;
    mmn_watch_handle *w = NULL;
    pthread_mutex_lock(&fm->lock);
    for (size_t i = 0; i < fm->n; i++) {
        if (fm->ranges[i].start == start && fm->ranges[i].end == end) {
            if (--fm->ranges[i].count == 0) {
                w = fm->ranges[i].watch;
                fm->ranges[i] = fm->ranges[--fm->n];
            }
            break;
        }
    }
    pthread_mutex_unlock(&fm->lock);
    mmn_unwatch(w);
    atomic_fetch_add(&fm->unsubscribes, 1);
}

static bool fab_valid(struct fid_mem_monitor *mon, const void *addr, size_t len)
{
    struct mmn_fabric_monitor *fm = of(mon);
    (void)addr;
    (void)len;
    atomic_fetch_add(&fm->valid_calls, 1);
    /* Every invalidation whose unmapping call has returned was delivered (notify ran and
     * removed the entry) unless one is still pending: then this entry may be stale. */
    bool ok = mmn_monitor_pending(fm->m) == 0;
    if (!ok)
        atomic_fetch_add(&fm->valid_false, 1);
    return ok;
}

int mmn_fabric_monitor_create(mmn_monitor *m, struct mmn_fabric_monitor **out)
{
    if (!m || !out)
        return MMN_ERR_NULL;
    struct mmn_fabric_monitor *fm = calloc(1, sizeof *fm);
    if (!fm)
        return MMN_ERR_OTHER;
    fm->m = m;
    pthread_mutex_init(&fm->lock, NULL);
    fm->export_ops.size = sizeof fm->export_ops;
    fm->export_ops.start = fab_start;
    fm->export_ops.stop = fab_stop;
    fm->export_ops.subscribe = fab_subscribe;
    fm->export_ops.unsubscribe = fab_unsubscribe;
    fm->export_ops.valid = fab_valid;
    fm->mon.fid.fclass = FI_CLASS_MEM_MONITOR;
    fm->mon.export_ops = &fm->export_ops;
    /* Subscribed once, here, not under any libfabric lock: mmn_subscribe* may wait. */
    int rc = mmn_subscribe_all(m, on_invalidate, fm, &fm->all);
    if (rc != MMN_OK) {
        pthread_mutex_destroy(&fm->lock);
        free(fm);
        return rc;
    }
    *out = fm;
    return MMN_OK;
}

struct fid *mmn_fabric_monitor_fid(struct mmn_fabric_monitor *fm)
{
    return &fm->mon.fid;
}

int mmn_fabric_monitor_import(struct mmn_fabric_monitor *fm)
{
    struct fid *cache_fid;
    struct fi_info *info = NULL;
    /* fi_open("mr_cache") does not initialize libfabric; its monitors (and the list that
     * notify walks) are set up by the first fi_getinfo. Without this, notify crashes in
     * libfabric 1.17. */
    if (fi_getinfo(FI_VERSION(1, 13), NULL, NULL, 0, NULL, &info) == 0)
        fi_freeinfo(info);
    int ret = fi_open(FI_VERSION(1, 13), "mr_cache", NULL, 0, 0, &cache_fid, NULL);
    if (ret)
        return ret;
    ret = fi_import_fid(cache_fid, &fm->mon.fid, 0);
    fi_close(cache_fid);
    return ret;
}

void mmn_fabric_monitor_stats(struct mmn_fabric_monitor *fm, struct mmn_fabric_stats *out)
{
    out->starts = atomic_load(&fm->starts);
    out->stops = atomic_load(&fm->stops);
    out->subscribes = atomic_load(&fm->subscribes);
    out->subscribe_failures = atomic_load(&fm->subscribe_failures);
    out->unsubscribes = atomic_load(&fm->unsubscribes);
    out->valid_calls = atomic_load(&fm->valid_calls);
    out->valid_false = atomic_load(&fm->valid_false);
    out->invalidations = atomic_load(&fm->invalidations);
    out->notifies = atomic_load(&fm->notifies);
    pthread_mutex_lock(&fm->lock);
    out->subscribed = fm->n;
    pthread_mutex_unlock(&fm->lock);
}

void mmn_fabric_monitor_destroy(struct mmn_fabric_monitor *fm)
{
    if (!fm)
        return;
    mmn_unsubscribe(fm->all);
    for (size_t i = 0; i < fm->n; i++)
        mmn_unwatch(fm->ranges[i].watch);
    if (fm->mon.fid.ops && fm->mon.fid.ops->close)
        fm->mon.fid.ops->close(&fm->mon.fid);
    pthread_mutex_destroy(&fm->lock);
    free(fm->ranges);
    free(fm);
}
