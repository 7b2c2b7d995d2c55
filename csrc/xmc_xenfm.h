/*
 * xmc_xenfm.h - what xen.c uses of libxenforeignmemory, declared here so that
 * building needs no Xen headers (the library is loaded with dlopen at run
 * time).  The function types name the same struct tags as Xen's
 * xenforeignmemory.h, and csrc/tests/xen_decls_check.c compiles every
 * declaration here against Xen's real headers, so they cannot drift.
 * Private: not installed, not part of the API.
 */
#ifndef XMC_XENFM_H
#define XMC_XENFM_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define XMC_XENFM_LIBRARY "libxenforeignmemory.so.1"

/* xen_pfn_t: unsigned long on x86 (xen/arch-x86/xen.h), uint64_t on Arm. */
#if defined(__i386__) || defined(__x86_64__)
typedef unsigned long xmc_xen_pfn_t;
#else
typedef uint64_t xmc_xen_pfn_t;
#endif

struct xenforeignmemory_handle;
struct xentoollog_logger;

/* The four entry points, as typedefs of function types (xenforeignmemory.h). */
typedef struct xenforeignmemory_handle *
xmc_fm_open_fn(struct xentoollog_logger *logger, unsigned open_flags);
typedef int xmc_fm_close_fn(struct xenforeignmemory_handle *fmem);
typedef void *xmc_fm_map2_fn(struct xenforeignmemory_handle *fmem, uint32_t dom,
                             void *addr, int prot, int flags, size_t pages,
                             const xmc_xen_pfn_t arr[], int err[]);
typedef int xmc_fm_unmap_fn(struct xenforeignmemory_handle *fmem, void *addr,
                            size_t pages);

/*
 * struct xentoollog_logger (xentoollog.h) under our own name: the library
 * calls these three hooks of the logger handed to xenforeignmemory_open().
 * `level` is a xentoollog_level, an enum whose values are all non-negative.
 */
#define XMC_XTL_WARN 7 /* XTL_WARN: the least level worth keeping */
typedef struct xmc_xtl_logger {
    void (*vmessage)(struct xentoollog_logger *logger, unsigned level, int errnoval,
                     const char *context, const char *format, va_list al);
    void (*progress)(struct xentoollog_logger *logger, const char *context,
                     const char *doing_what, int percent, unsigned long done,
                     unsigned long total);
    void (*destroy)(struct xentoollog_logger *logger);
} xmc_xtl_logger;

#endif /* XMC_XENFM_H */
