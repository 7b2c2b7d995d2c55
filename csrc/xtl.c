/*
 * xtl.c - the quiet xentoollog logger, the error-text writer and the library
 * loader shared by the Xen backends (see xmc_xtl.h).
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

int xmc_dl_load(const xmc_xen_lib *lib, const char *library, const xmc_dl_sym *syms,
                size_t n, void **dl, char *why, size_t why_size)
{
    *dl = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (!*dl) {
        const char *detail = dlerror();

        xmc_say(why, why_size, "%s cannot be loaded (Xen's %s is not installed?): %s",
                library, lib->name, detail ? detail : "unknown error");
        return XMC_EUNAVAIL;
    }
    for (size_t i = 0; i < n; i++) {
        void *sym = dlsym(*dl, syms[i].name);

        if (!sym) {
            xmc_say(why, why_size, "%s has no %s: not %s, or older than %s", library,
                    syms[i].name, lib->name, lib->since);
            return XMC_EUNAVAIL;
        }
        memcpy(syms[i].fn, &sym, sizeof(sym)); /* object pointer to function pointer */
    }
    return XMC_OK;
}

int xmc_xen_open_failed(const xmc_xen_lib *lib, int err, const char *log, char *why,
                        size_t why_size)
{
    char buf[64];

    if (err == ENOENT)
        xmc_say(why, why_size,
                "%s is missing: this is not a Xen domain with the %s driver (%s: %s%s)",
                lib->device, lib->driver, lib->name, log[0] ? log : lib->open,
                log[0] ? "" : " failed");
    else
        xmc_say(why, why_size, "%s failed: %s (%s: %s)", lib->open,
                strerror_r(err, buf, sizeof(buf)), lib->name, log[0] ? log : "no message");
    return XMC_EUNAVAIL;
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
