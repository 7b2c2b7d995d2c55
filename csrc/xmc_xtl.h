/*
 * xmc_xtl.h - what the two Xen backends (xen.c, gnttab.c) share: a quiet
 * xentoollog logger to hand their library, the writer of error texts, and
 * the loading of their library and its device with the reason of a failure.
 *
 * Xen's libraries print through their default logger when given none; ours
 * prints nothing.  While a backend opens its library it points `log` at a
 * buffer, where the last message of warning level or worse is kept (with its
 * errno) for the error text; otherwise every message is dropped.
 * Private: not installed, not part of the API.
 */
#ifndef XMC_XTL_H
#define XMC_XTL_H

#include "xmc_xenfm.h"

#define XMC_XTL_LOG_SIZE 160

typedef struct xmc_quiet_logger {
    xmc_xtl_logger hooks; /* first: the library is given &hooks */
    char *log;            /* NULL, or XMC_XTL_LOG_SIZE bytes for the last message */
} xmc_quiet_logger;

void xmc_quiet_logger_init(xmc_quiet_logger *l);

/* The logger as the libraries take it. */
static inline struct xentoollog_logger *xmc_xtl(xmc_quiet_logger *l)
{
    return (struct xentoollog_logger *)(void *)&l->hooks;
}

/* snprintf into why[why_size], when there is room for a reason. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void xmc_say(char *why, size_t why_size, const char *fmt, ...);

/* A backend's Xen library, as its error texts name it. */
typedef struct xmc_xen_lib {
    const char *name;   /* "libxengnttab" */
    const char *since;  /* the oldest Xen with every symbol: "Xen 4.7" */
    const char *device; /* "/dev/xen/gntdev" */
    const char *driver; /* "gntdev" */
    const char *open;   /* the opening function: "xengnttab_open" */
} xmc_xen_lib;

/* One symbol to resolve: its name and where its address goes (a pointer
 * to a function pointer). */
typedef struct xmc_dl_sym {
    const char *name;
    void *fn;
} xmc_dl_sym;

/*
 * dlopen() `library` into *dl and resolve the n symbols of syms.  Fails with
 * XMC_EUNAVAIL, saying in why which library cannot be loaded or which symbol
 * it lacks; *dl is then the handle or NULL, for the caller's release to close.
 */
int xmc_dl_load(const xmc_xen_lib *lib, const char *library, const xmc_dl_sym *syms,
                size_t n, void **dl, char *why, size_t why_size);

/*
 * After lib's open function returned NULL with errno err while l kept the
 * library's last message in log: say why (the device missing, or the errno
 * and the message) and return XMC_EUNAVAIL.
 */
int xmc_xen_open_failed(const xmc_xen_lib *lib, int err, const char *log, char *why,
                        size_t why_size);

#endif /* XMC_XTL_H */
