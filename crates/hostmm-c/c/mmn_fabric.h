/*
 * A libfabric import memory monitor on top of libmmnotify.
 *
 * libfabric lets an application replace the monitor of its registration cache: open the
 * "mr_cache" fid and import a FI_CLASS_MEM_MONITOR fid whose export ops it calls (start,
 * stop, subscribe, unsubscribe, valid); libfabric fills in the import ops, whose notify the
 * monitor calls when memory changes. This adapter is that monitor, fed by an mmn_monitor
 * (userfaultfd, or the bracketed wrappers mmn_munmap & co., or an mmn_importer):
 *
 *   subscribe(addr, len)   records the range (counted) and, under uffd, mmn_watch()es it;
 *   unsubscribe            drops one count, and the watch with the last;
 *   valid                  false while an invalidation may be pending (mmn_monitor_pending),
 *                          so a lookup racing an unmap whose event was read but not yet
 *                          delivered re-registers instead of trusting the entry; never blocks;
 *   invalidations          one mmn_subscribe_all() callback: every invalidation (unmap,
 *                          clear) that overlaps a subscribed range calls libfabric's notify
 *                          with the invalidated range, after dropping the adapter's lock.
 *
 * Locks: libfabric calls subscribe/unsubscribe/valid with its own mm_lock held, and its
 * notify takes mm_lock. The adapter's lock is never held while calling into libfabric, and
 * nothing under mm_lock here waits for the uffd thread (mmn_watch/mmn_unwatch do not), so
 * the uffd thread blocking on mm_lock inside notify cannot deadlock.
 */
#ifndef MMN_FABRIC_H
#define MMN_FABRIC_H

#include <stdint.h>
#include <rdma/fabric.h>
#include <rdma/fi_ext.h>
#include <mmnotify.h>

#ifdef __cplusplus
extern "C" {
#endif

struct mmn_fabric_monitor;

/* Counters of the adapter (what libfabric asked, what it was told). */
struct mmn_fabric_stats {
    uint64_t starts, stops;
    uint64_t subscribes, subscribe_failures, unsubscribes;
    uint64_t valid_calls, valid_false;
    uint64_t invalidations;  /* invalidations of the address space seen */
    uint64_t notifies;       /* calls of libfabric's notify (those overlapping a subscription) */
    uint64_t subscribed;     /* ranges subscribed now */
};

/* Creates the adapter over `m` (which must outlive it). Returns an MMN_* status. */
int mmn_fabric_monitor_create(mmn_monitor *m, struct mmn_fabric_monitor **out);

/* The fid to import: fi_import_fid(mr_cache_fid, mmn_fabric_monitor_fid(fm), 0). */
struct fid *mmn_fabric_monitor_fid(struct mmn_fabric_monitor *fm);

/* Opens libfabric's "mr_cache" fid, imports the adapter and closes the fid: from then on
 * libfabric's registration caches use it. Call before opening any domain. Returns 0 or a
 * negative libfabric error (-FI_EBUSY: a monitor is already active or imported). It calls
 * fi_getinfo once first: fi_open("mr_cache") alone leaves libfabric uninitialized. */
int mmn_fabric_monitor_import(struct mmn_fabric_monitor *fm);

void mmn_fabric_monitor_stats(struct mmn_fabric_monitor *fm, struct mmn_fabric_stats *out);

/* Ends the subscription and frees the adapter. Close every libfabric domain first. */
void mmn_fabric_monitor_destroy(struct mmn_fabric_monitor *fm);

#ifdef __cplusplus
}
#endif

#endif
