/*
 * xt.h - the C tests' tiny framework and shared helpers.
 *
 * A test is `TEST(name) { ... }`; each test file ends with a table
 * `const xt_test xt_<group>_tests[] = { XT(name), ..., XT_END };` that
 * test_main.c runs.  Each test runs in a forked child (crash isolation, and
 * LeakSanitizer judges every test alone); a failed CHECK prints where and why
 * and ends that child.  Only the test programs print: library code never does.
 *
 * Helpers: a guest RAM filled with a known pattern, mapping probes (is this
 * host range mapped, with which protection, does touching it fault), and the
 * fault-injection backend of fault_backend.c.
 */
#ifndef XT_H
#define XT_H

#define _GNU_SOURCE 1

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xenmapcache.h"

typedef struct xt_test {
    const char *name;
    void (*fn)(void);
} xt_test;

#define TEST(name) static void name(void)
#define XT(name) { #name, name }
#define XT_END { NULL, NULL }

/* Report a failed check and end the test (the child process). */
_Noreturn void xt_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond))                                                          \
            xt_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                  \
    } while (0)

/* Compare two integers (status codes, addresses, counters) and show both. */
#define CHECK_EQ(a, b)                                                        \
    do {                                                                      \
        long long xa_ = (long long)(a), xb_ = (long long)(b);                 \
        if (xa_ != xb_)                                                       \
            xt_fail(__FILE__, __LINE__, "%s == %s: %lld (0x%llx) != %lld (0x%llx)", \
                    #a, #b, xa_, (unsigned long long)xa_, xb_,                \
                    (unsigned long long)xb_);                                 \
    } while (0)

/* A call that must return XMC_OK. */
#define OK(call) CHECK_EQ((call), XMC_OK)

/* True when the tests run under valgrind (XT_SLOW=1): no timing assertions,
 * and xt_faults() takes memcheck's exit status 3 as a fault. */
bool xt_slow(void);

/* ---- guest RAM helpers (test_main.c) ------------------------------------ */

#define MIB (UINT64_C(1) << 20)
#define KIB (UINT64_C(1) << 10)
#define PAGE UINT64_C(4096)

/* The byte every fresh test RAM holds at guest address p. */
static inline uint8_t xt_pattern(uint64_t p)
{
    return (uint8_t)((p >> 12) * 31 + (p & 0xfff) * 7 + 1);
}

/* Guest RAM of `size` bytes filled with xt_pattern(). */
xmc_ram *xt_ram(uint64_t size);
/* Does [p, p + n) hold xt_pattern(paddr...)? */
bool xt_has_pattern(const void *p, uint64_t paddr, size_t n);
/* Stats of c (the call must succeed). */
xmc_stats xt_stats(xmc_cache *c);
/* Number of outstanding locked mappings listed by xmc_locked(). */
size_t xt_nlocked(xmc_cache *c);

/*
 * Call every entry point that takes a cache handle on c; NULL when each
 * returned `want`, else the first call that did not (for a NULL or a closed
 * handle, which must refuse everything alike).
 */
const char *xt_every_call(xmc_cache *c, int want);

/* ---- mapping probes -------------------------------------------------------- */

/* Is any page of [p, p + len) mapped in this process? all = every page. */
bool xt_mapped(const void *p, size_t len, bool all);
/* Protection of the mapping holding p, as in /proc/self/maps ("rw-p"). */
bool xt_prot(const void *p, char out[5]);
/* Run fn(arg) in a forked child: true when it died of SIGSEGV or SIGBUS. */
bool xt_faults(void (*fn)(void *), void *arg);
/* Touch one byte (read) at p; for xt_faults. */
void xt_touch_read(void *p);
void xt_touch_write(void *p);
/* Open file descriptors of this process. */
int xt_fd_count(void);

/* Run fn in a forked child (with a watchdog: a hang fails): did it get to
 * the end?  Told through a pipe, not the exit status, which valgrind would
 * turn into a failure for what a child leaks on purpose. */
bool xt_in_child(void (*fn)(void));

/* ---- a handshake with a callback running in another thread -------------- */

/* A callback calls xt_gate_pass(): it says it is inside, then waits until the
 * test, having seen it inside (xt_gate_wait_inside), lets it go on
 * (xt_gate_open).  Once per test: each test runs in a process of its own. */
void xt_gate_pass(void);
void xt_gate_wait_inside(void);
void xt_gate_open(void);

#endif /* XT_H */
