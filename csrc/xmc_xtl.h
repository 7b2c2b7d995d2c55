/*
 * xmc_xtl.h - what the two Xen backends (xen.c, gnttab.c) share: a quiet
 * xentoollog logger to hand their library, and the writer of error texts.
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

#endif /* XMC_XTL_H */
