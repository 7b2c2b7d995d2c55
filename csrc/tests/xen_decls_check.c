/*
 * xen_decls_check.c - compiles only if csrc/xmc_xenfm.h and csrc/xmc_gnttab.h,
 * our copies of what we use from libxenforeignmemory and libxengnttab, agree
 * with Xen's own headers (Debian's libxen-dev).  tests/test_xen.py compiles it with -fsyntax-only; there is
 * nothing to run.  Every check is a static assertion, so a drift is an error
 * whatever the warning flags.
 */
#include <stddef.h>

#include <xenforeignmemory.h>
#include <xengnttab.h>
#include <xentoollog.h>

#include "xmc_gnttab.h"
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

/* libxengnttab: xengnttab_handle is struct xengntdev_handle. */
_Static_assert(SAME_TYPE(xengnttab_handle, struct xengntdev_handle),
               "xengnttab_handle is not struct xengntdev_handle");
_Static_assert(SAME_TYPE(xmc_gt_open_fn, __typeof__(xengnttab_open)),
               "xmc_gt_open_fn differs from xengnttab_open");
_Static_assert(SAME_TYPE(xmc_gt_close_fn, __typeof__(xengnttab_close)),
               "xmc_gt_close_fn differs from xengnttab_close");
_Static_assert(SAME_TYPE(xmc_gt_map_refs_fn, __typeof__(xengnttab_map_domain_grant_refs)),
               "xmc_gt_map_refs_fn differs from xengnttab_map_domain_grant_refs");
_Static_assert(SAME_TYPE(xmc_gt_unmap_fn, __typeof__(xengnttab_unmap)),
               "xmc_gt_unmap_fn differs from xengnttab_unmap");
