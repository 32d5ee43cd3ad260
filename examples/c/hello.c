/* The README's example for C users: a registration cache that never hands out a stale
 * registration. Build (from the repository root):
 *   cargo build --release -p hostmm-c
 *   cc examples/c/hello.c $(PKG_CONFIG_PATH=target/release pkg-config --cflags --libs mmnotify) -o hello
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <mmnotify.h>

static int registrations;

static int reg(void *user, uint64_t start, uint64_t len, size_t *handle)
{
    (void)user;
    /* A real registrar calls fi_mr_reg / ibv_reg_mr on [start, start + len) here. */
    printf("register [%#llx, +%llu)\n", (unsigned long long)start, (unsigned long long)len);
    *handle = (size_t)++registrations;
    return 0;
}

static void dereg(void *user, uint64_t start, uint64_t len, size_t handle)
{
    (void)user;
    (void)len;
    printf("deregister %zu [%#llx)\n", handle, (unsigned long long)start);
}

int main(void)
{
    mmn_monitor *m;
    if (mmn_monitor_create(MMN_SOURCE_AUTO, &m) != MMN_OK) { /* uffd, else bracketed */
        fprintf(stderr, "%s\n", mmn_last_error());
        return 1;
    }
    if (mmn_monitor_fallback_reason(m))
        printf("bracketed source: %s\n", mmn_monitor_fallback_reason(m));
    mmn_registrar r = {reg, dereg, NULL, 1 /* pin the pages */};
    mmn_cache *c;
    mmn_cache_create(m, &r, NULL, &c);

    size_t len = 1 << 16;
    char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(buf, 0, len);
    mmn_reg *x;
    size_t h1, h2;
    mmn_cache_get(c, buf, len, &x, &h1); /* miss: registers */
    mmn_cache_put(x);
    mmn_cache_get(c, buf, len, &x, &h2); /* hit: the same registration */
    mmn_cache_put(x);
    mmn_munmap(m, buf, len); /* the wrapper: seen by both sources */
    int rc = mmn_cache_get(c, buf, len, &x, NULL); /* never the old registration */
    printf("hit=%d after munmap: %s\n", h1 == h2, mmn_strerror(rc));
    mmn_cache_destroy(c);
    mmn_monitor_destroy(m);
    return h1 == h2 && rc != MMN_OK ? 0 : 1;
}
