/*
 * xtl.c - the quiet xentoollog logger and the error-text writer shared by the
 * Xen backends (see xmc_xtl.h).
 */
#include "xmc_internal.h"

#include "xmc_xtl.h"

void xmc_say(char *why, size_t why_size, const char *fmt, ...)
{
    va_list ap;

    if (!why || !why_size)
        return;
    va_start(ap, fmt);
    vsnprintf(why, why_size, fmt, ap);
    va_end(ap);
}

static void log_vmessage(struct xentoollog_logger *logger, unsigned level,
                         int errnoval, const char *context, const char *format,
                         va_list al)
{
    xmc_quiet_logger *l = (xmc_quiet_logger *)(void *)logger;
    size_t used;

    (void)context;
    if (!l->log || !format || level < XMC_XTL_WARN)
        return;
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#endif
    vsnprintf(l->log, XMC_XTL_LOG_SIZE, format, al);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
    used = strlen(l->log);
    if (errnoval > 0 && used < XMC_XTL_LOG_SIZE) {
        char buf[64];
        snprintf(l->log + used, XMC_XTL_LOG_SIZE - used, ": %s",
                 strerror_r(errnoval, buf, sizeof(buf)));
    }
}

static void log_progress(struct xentoollog_logger *logger, const char *context,
                         const char *doing_what, int percent, unsigned long done,
                         unsigned long total)
{
    (void)logger;
    (void)context;
    (void)doing_what;
    (void)percent;
    (void)done;
    (void)total;
}

static void log_destroy(struct xentoollog_logger *logger)
{
    (void)logger; /* the logger is part of its backend, freed with it */
}

void xmc_quiet_logger_init(xmc_quiet_logger *l)
{
    l->hooks = (xmc_xtl_logger){ .vmessage = log_vmessage, .progress = log_progress,
                                 .destroy = log_destroy };
    l->log = NULL;
}
