/*
 * xmc_gnttab.h - what gnttab.c uses of libxengnttab, declared here so that
 * building needs no Xen headers (the library is loaded with dlopen at run
 * time).  The function types name the same struct tag as Xen's xengnttab.h
 * (whose xengnttab_handle is struct xengntdev_handle), and
 * csrc/tests/xen_decls_check.c compiles every declaration here against Xen's
 * real headers, so they cannot drift.  Private: not installed, not API.
 */
#ifndef XMC_GNTTAB_H
#define XMC_GNTTAB_H

#include <stdint.h>

#define XMC_GNTTAB_LIBRARY "libxengnttab.so.1"

struct xengntdev_handle;
struct xentoollog_logger;

/* The four entry points, as typedefs of function types (xengnttab.h). */
typedef struct xengntdev_handle *xmc_gt_open_fn(struct xentoollog_logger *logger,
                                                unsigned open_flags);
typedef int xmc_gt_close_fn(struct xengntdev_handle *xgt);
typedef void *xmc_gt_map_refs_fn(struct xengntdev_handle *xgt, uint32_t count,
                                 uint32_t domid, uint32_t *refs, int prot);
typedef int xmc_gt_unmap_fn(struct xengntdev_handle *xgt, void *start_address,
                            uint32_t count);

#endif /* XMC_GNTTAB_H */
