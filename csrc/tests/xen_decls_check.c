/*
 * xen_decls_check.c - compiles only if csrc/xmc_xenfm.h, our copy of what we
 * use from libxenforeignmemory, agrees with Xen's own headers (Debian's
 * libxen-dev).  tests/test_xen.py compiles it with -fsyntax-only; there is
 * nothing to run.  Every check is a static assertion, so a drift is an error
 * whatever the warning flags.
 */
#include <stddef.h>

#include <xenforeignmemory.h>
#include <xentoollog.h>

#include "xmc_xenfm.h"

#define SAME_TYPE(a, b) __builtin_types_compatible_p(a, b)
#define MEMBER_TYPE(s, m) __typeof__(((s *)0)->m)

_Static_assert(SAME_TYPE(xmc_xen_pfn_t, xen_pfn_t), "xmc_xen_pfn_t is not xen_pfn_t");
_Static_assert(XMC_XTL_WARN == XTL_WARN, "XMC_XTL_WARN is not XTL_WARN");

_Static_assert(SAME_TYPE(xmc_fm_open_fn, __typeof__(xenforeignmemory_open)),
               "xmc_fm_open_fn differs from xenforeignmemory_open");
_Static_assert(SAME_TYPE(xmc_fm_close_fn, __typeof__(xenforeignmemory_close)),
               "xmc_fm_close_fn differs from xenforeignmemory_close");
_Static_assert(SAME_TYPE(xmc_fm_map2_fn, __typeof__(xenforeignmemory_map2)),
               "xmc_fm_map2_fn differs from xenforeignmemory_map2");
_Static_assert(SAME_TYPE(xmc_fm_unmap_fn, __typeof__(xenforeignmemory_unmap)),
               "xmc_fm_unmap_fn differs from xenforeignmemory_unmap");

/* Our logger must be laid out as struct xentoollog_logger, hook for hook. */
_Static_assert(sizeof(xmc_xtl_logger) == sizeof(struct xentoollog_logger),
               "xmc_xtl_logger size differs from struct xentoollog_logger");
#define SAME_MEMBER(m)                                                           \
    _Static_assert(offsetof(xmc_xtl_logger, m) ==                                \
                           offsetof(struct xentoollog_logger, m) &&              \
                       SAME_TYPE(MEMBER_TYPE(xmc_xtl_logger, m),                 \
                                 MEMBER_TYPE(struct xentoollog_logger, m)),      \
                   "xmc_xtl_logger." #m " differs from struct xentoollog_logger")
SAME_MEMBER(vmessage);
SAME_MEMBER(progress);
SAME_MEMBER(destroy);
