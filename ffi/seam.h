/*
 * seam.h - the few entry points the cffi binding calls on hot paths.
 *
 * Not part of the C library: build_ffi.py includes this into the extension
 * only.  Each wraps a public function so that Python passes and gets plain
 * integers: no out-parameter to allocate per call (threads share a cache, so
 * a shared one would race) and no pointer cdata to build.  A map returns the
 * host address, or 0 on error (no mapping lives at address 0), with the
 * XMC_E* code in a thread-local that xmc_py_last_error() returns: each
 * Python thread is an OS thread, so no other call can overwrite it between
 * the failed call and the question.
 */
#ifndef XMC_PYSEAM_H
#define XMC_PYSEAM_H

#include "xenmapcache.h"

static _Thread_local int xmc_py_rc;

static uint64_t xmc_py_encode(int rc, const void *p)
{
    if (rc != XMC_OK || !p) {
        xmc_py_rc = rc != XMC_OK ? rc : XMC_EMAP;
        return 0;
    }
    return (uint64_t)(uintptr_t)p;
}

/* The error of this thread's last xmc_py_map*() call that returned 0. */
static int xmc_py_last_error(void)
{
    return xmc_py_rc;
}

/* A Mapping: locked, with the tag that names it. */
static uint64_t xmc_py_map(xmc_cache *c, uint64_t paddr, uint64_t size,
                           unsigned flags, uint64_t tag)
{
    void *p = NULL;
    int rc = xmc_map(c, paddr, size, flags, tag, &p);

    return xmc_py_encode(rc, p);
}

/* MapCache.map_ptr(paddr, size, lock, dma): a raw mapping (tag 0). */
static uint64_t xmc_py_map_ptr(xmc_cache *c, uint64_t paddr, uint64_t size, int lock,
                               int dma)
{
    return xmc_py_map(c, paddr, size, lock ? XMC_LOCK | (dma ? XMC_DMA : 0u) : 0u, 0);
}

/* The baseline of the hit benchmark: the same argument list, no work. */
static uint64_t xmc_py_noop(xmc_cache *c, uint64_t paddr, uint64_t size, int lock,
                            int dma)
{
    (void)c;
    (void)paddr;
    (void)size;
    (void)lock;
    (void)dma;
    return 0;
}

/* The guest address behind addr, or UINT64_MAX: then ask xmc_ram_addr() why
 * (UINT64_MAX can also be a real answer, for the last byte of guest space). */
static uint64_t xmc_py_ram_addr(xmc_cache *c, uintptr_t addr)
{
    uint64_t paddr;

    return xmc_ram_addr(c, (const void *)addr, &paddr) == XMC_OK ? paddr : UINT64_MAX;
}

static int xmc_py_unlock(xmc_cache *c, uintptr_t addr, uint64_t tag)
{
    return xmc_unlock_tag(c, (const void *)addr, tag);
}

/*
 * xmc_invalidate() in one call: the number of DMA mappings still in flight,
 * or an XMC_E* code.  Either way those mappings wait for this thread in
 * xmc_py_records_take() (count: xmc_py_records_count()); free them with
 * xmc_records_free().  With none in flight, that is the only call.
 */
static _Thread_local xmc_record *xmc_py_records;
static _Thread_local size_t xmc_py_nrecords;

static int64_t xmc_py_invalidate(xmc_cache *c)
{
    xmc_record *records = NULL;
    size_t n = 0;
    int rc = xmc_invalidate(c, &records, &n);

    xmc_records_free(xmc_py_records); /* any a failed caller left behind */
    xmc_py_records = records;
    xmc_py_nrecords = records ? n : 0;
    return rc != XMC_OK ? rc : (int64_t)xmc_py_nrecords;
}

static size_t xmc_py_records_count(void)
{
    return xmc_py_nrecords;
}

static xmc_record *xmc_py_records_take(void)
{
    xmc_record *records = xmc_py_records;

    xmc_py_records = NULL;
    xmc_py_nrecords = 0;
    return records;
}

/*
 * The CPython side of the binding: a cache object and Mapping, in C.
 *
 * cffi's own calls cost a Python frame around them, an argument tuple and a
 * cdata check per call, and release the GIL every time; a Mapping written in
 * Python costs a frame per method and per buffer export.  So, on CPython
 * (stable ABI of 3.12), the binding has two types of its own:
 *
 * - NativeCache owns one xmc_cache (xmc_py_adopt() hands it over from a
 *   typed cffi call: no entry point takes a raw address) and frees it when
 *   it goes.  Its methods map_ptr, read, readinto, ram_addr, unlock and map
 *   are vectorcall builtins: the common case converts exact ints, given by
 *   position or by keyword, makes the core call (releasing the GIL only
 *   when it would wait, see XMC_PY_CALL) and builds the result.  Anything
 *   else (another type, an unknown or repeated keyword, a value out of
 *   range) goes straight to MapCache's checked method of the same name,
 *   which validates and raises as documented; a failed core call goes to a
 *   Python `fail(rc, what, paddr, size)` that raises, so nothing is done
 *   twice.  It also holds the registry of live Mappings: a list, oldest
 *   first, of Mappings that each carry the tag id of their core record
 *   (no allocation to register or unregister one).
 * - Mapping exports the host memory itself (bf_getbuffer), counts its
 *   exports (a memoryview and all its slices hold one), and refuses to be
 *   released, or its cache closed, while one is alive.
 *
 * Every state change of a Mapping or of the registry happens with the GIL
 * held and no core call in between, so the GIL is their lock; core calls
 * that may wait release it.
 */
#ifdef Py_PYTHON_H

#define XMC_PY_FAST_READ_MAX ((Py_ssize_t)1 << 24)
#define XMC_PY_HOLD_GIL_MAX 4096 /* a copy up to a page may keep the GIL */

/* MapCache's checked methods, in bind()'s argument order. */
enum {
    XMC_PY_MAP_PTR,
    XMC_PY_READ,
    XMC_PY_READINTO,
    XMC_PY_WRITE,
    XMC_PY_RAM_ADDR,
    XMC_PY_UNLOCK,
    XMC_PY_MAP,
    XMC_PY_MAP_SG,
    XMC_PY_NCHECKED
};

typedef struct xmc_py_cache {
    PyObject_HEAD
    xmc_cache *c;
    PyObject *owner;    /* weakref to the MapCache */
    PyObject *fail;     /* fail(rc, what, paddr, size): raises */
    PyObject *checked[XMC_PY_NCHECKED];
    struct xmc_py_mapping *first, *last; /* the live Mappings, oldest first */
    PyObject *after_free; /* called once the core is freed (in no cycle: never cleared) */
    uint64_t next_id;
    uint64_t max_size;
    uint64_t bucket_size;
    int closed;
} xmc_py_cache;

typedef struct xmc_py_mapping {
    PyObject_HEAD
    xmc_py_cache *cache; /* NULL once cleared by the GC */
    struct xmc_py_mapping *prev, *next; /* in cache's list while registered */
    uint64_t id;         /* the tag of its core record */
    PyObject *tag;
    unsigned long long address, paddr, size;
    Py_ssize_t exports;
    char dma, released;
} xmc_py_mapping;

typedef struct xmc_py_group {
    PyObject_HEAD
    xmc_py_cache *cache;
    PyObject *items; /* tuple of its Mappings */
    uint64_t id;     /* the tag of all their core records */
} xmc_py_group;

/* Py_XSETREF is not in the limited API. */
#define Py_XSETREF_COMPAT(dst, src)                                           \
    do {                                                                      \
        PyObject *old_ = (PyObject *)(dst);                                   \
        (dst) = (src);                                                        \
        Py_XDECREF(old_);                                                     \
    } while (0)

static PyTypeObject *xmc_py_cache_type;
static PyTypeObject *xmc_py_mapping_type;
static PyTypeObject *xmc_py_group_type;
static PyObject *xmc_py_closed_error; /* xenmapcache.MapCacheError */

/* An exact int in [0, 2**64) into *out; 0 (no error set) for anything else. */
static int xmc_py_u64(PyObject *o, uint64_t *out)
{
    unsigned long long v;

    if (!PyLong_CheckExact(o))
        return 0;
    v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

/* Raise through Python's fail(): the exception of the table, with its cause. */
static PyObject *xmc_py_fail(xmc_py_cache *self, int rc, const char *what, uint64_t paddr,
                             uint64_t size)
{
    PyObject *r;

    if (!self->fail) {
        PyErr_SetString(xmc_py_closed_error, "the cache is not bound");
        return NULL;
    }
    r = PyObject_CallFunction(self->fail, "isKK", rc, what, (unsigned long long)paddr,
                              (unsigned long long)size);
    Py_XDECREF(r); /* it always raises; a None would be a bug, not a result */
    if (r)
        PyErr_SetString(PyExc_SystemError, "xenmapcache: fail() returned");
    return NULL;
}

/* MapCache's checked method `which`, called with the MapCache prepended. */
static PyObject *xmc_py_checked(xmc_py_cache *self, int which, PyObject *const *args,
                                Py_ssize_t n, PyObject *kwnames)
{
    Py_ssize_t total = n + (kwnames ? PyTuple_Size(kwnames) : 0);
    PyObject *stack[8], **buf = stack, *owner, *out;

    if (!self->owner || !self->checked[which])
        return xmc_py_fail(self, XMC_ECLOSED, "call", 0, 0);
    owner = PyObject_CallNoArgs(self->owner);
    if (!owner)
        return NULL;
    if (owner == Py_None) {
        Py_DECREF(owner);
        return xmc_py_fail(self, XMC_ECLOSED, "call", 0, 0);
    }
    if (total + 1 > (Py_ssize_t)(sizeof(stack) / sizeof(stack[0])) &&
        !(buf = PyMem_Malloc((size_t)(total + 1) * sizeof(*buf)))) {
        Py_DECREF(owner);
        return PyErr_NoMemory();
    }
    buf[0] = owner;
    for (Py_ssize_t i = 0; i < total; i++)
        buf[i + 1] = args[i];
    out = PyObject_Vectorcall(self->checked[which], buf, (size_t)n + 1, kwnames);
    if (buf != stack)
        PyMem_Free(buf);
    Py_DECREF(owner);
    return out;
}

/* The parameter names, interned by xmc_py_fast_install(): keyword names
 * written in Python code are the same objects, found without comparing. */
static const char *const xmc_py_names[] = { "paddr", "size", "lock", "dma", "n",
                                            "address", "tag", "buffer", "segments", "data" };
#define XMC_PY_NNAMES (sizeof(xmc_py_names) / sizeof(xmc_py_names[0]))
static PyObject *xmc_py_interned[XMC_PY_NNAMES];

/* The entry of xmc_py_names that name is (interned), or NULL for another string. */
static const char *xmc_py_known_name(PyObject *name)
{
    for (size_t i = 0; i < XMC_PY_NNAMES; i++)
        if (name == xmc_py_interned[i])
            return xmc_py_names[i];
    return NULL;
}

static int xmc_py_kwargs(PyObject *const *values, PyObject *kwnames,
                         const char *const *names, Py_ssize_t nnames, PyObject **slot)
{
    Py_ssize_t nkw = PyTuple_Size(kwnames);

    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GetItem(kwnames, k);
        const char *known = xmc_py_known_name(name);
        Py_ssize_t i = 0;

        while (i < nnames && (known ? known != names[i]
                                    : PyUnicode_CompareWithASCIIString(name, names[i]) != 0))
            i++;
        if (i == nnames || slot[i])
            return 0;
        slot[i] = values[k];
    }
    return nkw >= 0;
}

/*
 * The arguments of a vectorcall by parameter: slot[i] for names[i], NULL
 * where not given.  0 (no error set) for a keyword that is unknown or
 * repeats a parameter already given, or too many arguments: the checked
 * method then raises the TypeError.
 */
static inline int xmc_py_args(PyObject *const *args, Py_ssize_t n, PyObject *kwnames,
                              const char *const *names, Py_ssize_t nnames, PyObject **slot)
{
    if (n > nnames)
        return 0;
    for (Py_ssize_t i = 0; i < nnames; i++)
        slot[i] = i < n ? args[i] : NULL;
    return !kwnames || xmc_py_kwargs(args + n, kwnames, names, nnames, slot);
}

/* A truth value: the bools without a call; -1 with an error set. */
static int xmc_py_flag(PyObject *o)
{
    return o == Py_True ? 1 : o == Py_False ? 0 : PyObject_IsTrue(o);
}

/*
 * rc = the core call, keeping the GIL when it cannot wait: first its _nowait
 * twin with the GIL held (a hit: tens of ns, never blocks), and only when
 * that answers XMC_EAGAIN (the mutex is busy, or a miss must reach the
 * backend, which may be Python) the waiting call with the GIL released.  No
 * thread ever waits for the cache's mutex while holding the GIL, so a
 * backend callback that needs the GIL under that mutex cannot deadlock.
 */
#define XMC_PY_CALL(rc, nowait_call, call)                                    \
    do {                                                                      \
        if (((rc) = (nowait_call)) == XMC_EAGAIN) {                           \
            Py_BEGIN_ALLOW_THREADS                                            \
            (rc) = (call);                                                    \
            Py_END_ALLOW_THREADS                                              \
        }                                                                     \
    } while (0)

/* The arguments of map_ptr(paddr, size=0, lock=False, dma=False) into
 * *paddr, *size, *flags; 0 (no error set) when the checked method must see them. */
static int xmc_py_map_ptr_args(PyObject *const *args, Py_ssize_t n, PyObject *kwnames,
                               uint64_t *paddr, uint64_t *size, unsigned *flags)
{
    int lock = 0, dma = 0;
    PyObject *a[4];

    *size = 0;
    if (!xmc_py_args(args, n, kwnames, xmc_py_names, 4, a) || !a[0] /* paddr size lock dma */ ||
        !xmc_py_u64(a[0], paddr) || (a[1] && !xmc_py_u64(a[1], size)) ||
        (a[2] && (lock = xmc_py_flag(a[2])) < 0) || (a[3] && (dma = xmc_py_flag(a[3])) < 0)) {
        PyErr_Clear();
        return 0;
    }
    *flags = lock ? XMC_LOCK | (dma ? XMC_DMA : 0u) : 0u;
    return 1;
}

/* map_ptr(paddr, size=0, lock=False, dma=False) -> int */
static PyObject *xmc_py_map_ptr_fast(PyObject *op, PyObject *const *args, Py_ssize_t n,
                                     PyObject *kwnames)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    uint64_t paddr, size;
    unsigned flags;
    void *p = NULL;
    int rc;

    if (!xmc_py_map_ptr_args(args, n, kwnames, &paddr, &size, &flags))
        return xmc_py_checked(self, XMC_PY_MAP_PTR, args, n, kwnames);
    XMC_PY_CALL(rc, xmc_map_nowait(self->c, paddr, size, flags, 0, &p),
                xmc_map(self->c, paddr, size, flags, 0, &p));
    if (rc != XMC_OK || !p)
        return xmc_py_fail(self, rc != XMC_OK ? rc : XMC_EMAP, "map", paddr, size);
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)p);
}

/* The baseline of the hit benchmark: map_ptr's builtin, arguments and result
 * (an int, here paddr) included, without the core call. */
static PyObject *xmc_py_noop_map_ptr(PyObject *op, PyObject *const *args, Py_ssize_t n,
                                     PyObject *kwnames)
{
    uint64_t paddr, size;
    unsigned flags;

    if (!xmc_py_map_ptr_args(args, n, kwnames, &paddr, &size, &flags))
        return xmc_py_checked((xmc_py_cache *)op, XMC_PY_MAP_PTR, args, n, kwnames);
    return PyLong_FromUnsignedLongLong((unsigned long long)paddr);
}

/* Copy guest [paddr, paddr + n) into buf; on an error buf is untouched
 * (a copy over several buckets goes through a bounce buffer). */
static int xmc_py_copy_out(xmc_py_cache *self, uint64_t paddr, char *buf, uint64_t n)
{
    uint64_t room = self->bucket_size - (paddr & (self->bucket_size - 1));
    char *bounce = NULL;
    int rc;

    if (n > room && !(bounce = PyMem_Malloc((size_t)n)))
        return XMC_ENOMEM;
    /* Longer copies are worth letting other threads run. */
    XMC_PY_CALL(rc, n <= XMC_PY_HOLD_GIL_MAX && !bounce
                        ? xmc_read_nowait(self->c, paddr, buf, (size_t)n) : XMC_EAGAIN,
                xmc_read(self->c, paddr, bounce ? bounce : buf, (size_t)n));
    if (bounce) {
        if (rc == XMC_OK)
            memcpy(buf, bounce, (size_t)n);
        PyMem_Free(bounce);
    }
    return rc;
}

/* read(paddr, n) -> bytes, filled in place before anyone sees it */
static PyObject *xmc_py_read_fast(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    const char *const names[] = { xmc_py_names[0], xmc_py_names[4] }; /* paddr, n */
    xmc_py_cache *self = (xmc_py_cache *)op;
    uint64_t paddr, n;
    PyObject *out, *a[2];
    char *buf;
    int rc;

    if (!xmc_py_args(args, nargs, kwnames, names, 2, a) || !a[0] || !a[1] ||
        !xmc_py_u64(a[0], &paddr) || !xmc_py_u64(a[1], &n) ||
        n > (uint64_t)XMC_PY_FAST_READ_MAX || (n && paddr > UINT64_MAX - (n - 1)))
        return xmc_py_checked(self, XMC_PY_READ, args, nargs, kwnames);
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (!out)
        return NULL;
    buf = PyBytes_AsString(out);
    if (!buf) {
        Py_DECREF(out);
        return NULL;
    }
    rc = n ? xmc_py_copy_out(self, paddr, buf, n) : XMC_OK;
    if (rc != XMC_OK) {
        Py_DECREF(out);
        return xmc_py_fail(self, rc, "read", paddr, n);
    }
    return out;
}

/*
 * The (paddr, buffer) of readinto and write, the buffer exported with flags
 * into *view; 0 (nothing held, no error set) when the checked method must
 * see them: a missing or unknown argument, not an int, not such a buffer, or
 * a range past 2**64.
 */
static int xmc_py_buffer_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                              const char *buffer_name, int flags, uint64_t *paddr,
                              Py_buffer *view)
{
    const char *const names[] = { xmc_py_names[0], buffer_name };
    PyObject *a[2];

    if (!xmc_py_args(args, nargs, kwnames, names, 2, a) || !a[0] || !a[1] ||
        !xmc_py_u64(a[0], paddr) || PyObject_GetBuffer(a[1], view, flags) < 0) {
        PyErr_Clear();
        return 0;
    }
    if (view->len && *paddr > UINT64_MAX - ((uint64_t)view->len - 1)) {
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* readinto(paddr, buffer) -> int: fills the whole writable buffer */
static PyObject *xmc_py_readinto_fast(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                      PyObject *kwnames)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    Py_buffer view;
    uint64_t paddr, n;
    int rc;

    if (!xmc_py_buffer_args(args, nargs, kwnames, xmc_py_names[7], PyBUF_WRITABLE, &paddr,
                            &view))
        return xmc_py_checked(self, XMC_PY_READINTO, args, nargs, kwnames);
    n = (uint64_t)view.len;
    rc = n ? xmc_py_copy_out(self, paddr, view.buf, n) : XMC_OK;
    PyBuffer_Release(&view);
    if (rc != XMC_OK)
        return xmc_py_fail(self, rc, "read", paddr, n);
    return PyLong_FromUnsignedLongLong((unsigned long long)n);
}

/* write(paddr, data) -> None: all of any C-contiguous buffer, all or nothing */
static PyObject *xmc_py_write_fast(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    Py_buffer view;
    uint64_t paddr, n;
    int rc;

    if (!xmc_py_buffer_args(args, nargs, kwnames, xmc_py_names[9], PyBUF_SIMPLE, &paddr, &view))
        return xmc_py_checked(self, XMC_PY_WRITE, args, nargs, kwnames);
    n = (uint64_t)view.len;
    /* The export is held across the call: the buffer cannot move or shrink. */
    XMC_PY_CALL(rc, n <= XMC_PY_HOLD_GIL_MAX
                        ? xmc_write_nowait(self->c, paddr, view.buf, (size_t)n) : XMC_EAGAIN,
                xmc_write(self->c, paddr, view.buf, (size_t)n));
    PyBuffer_Release(&view);
    if (rc != XMC_OK)
        return xmc_py_fail(self, rc, "write", paddr, n);
    Py_RETURN_NONE;
}

/* The host address that is the one argument of ram_addr and unlock, or NULL
 * when it is not an exact int given once (the checked method then raises). */
static const void *xmc_py_address(PyObject *const *args, Py_ssize_t n, PyObject *kwnames)
{
    PyObject *arg;
    uint64_t addr;

    if (!xmc_py_args(args, n, kwnames, &xmc_py_names[5], 1, &arg) || !arg ||
        !xmc_py_u64(arg, &addr) || addr > UINTPTR_MAX)
        return NULL;
    return (const void *)(uintptr_t)addr;
}

/* ram_addr(address) -> int */
static PyObject *xmc_py_ram_addr_fast(PyObject *op, PyObject *const *args, Py_ssize_t n,
                                      PyObject *kwnames)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    const void *a = xmc_py_address(args, n, kwnames);
    uint64_t paddr = 0;
    int rc;

    if (!a)
        return xmc_py_checked(self, XMC_PY_RAM_ADDR, args, n, kwnames);
    XMC_PY_CALL(rc, xmc_ram_addr_nowait(self->c, a, &paddr), xmc_ram_addr(self->c, a, &paddr));
    if (rc != XMC_OK)
        return xmc_py_fail(self, rc, "ram_addr", (uint64_t)(uintptr_t)a, 0);
    return PyLong_FromUnsignedLongLong((unsigned long long)paddr);
}

/* unlock(address) -> None */
static PyObject *xmc_py_unlock_fast(PyObject *op, PyObject *const *args, Py_ssize_t n,
                                    PyObject *kwnames)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    const void *a = xmc_py_address(args, n, kwnames);
    int rc = XMC_EINVAL;

    if (a)
        XMC_PY_CALL(rc, xmc_unlock_tag_nowait(self->c, a, 0), xmc_unlock_tag(self->c, a, 0));
    if (rc == XMC_ESYS) /* unlocked, but a grant entry failed to unmap: never retried */
        return xmc_py_fail(self, rc, "unlock", (uint64_t)(uintptr_t)a, 0);
    if (rc != XMC_OK) /* nothing done (no raw lock there, say): the checked method tries Mappings */
        return xmc_py_checked(self, XMC_PY_UNLOCK, args, n, kwnames);
    Py_RETURN_NONE;
}

/* ---- Mapping -------------------------------------------------------------- */

/* Put m at the end of the cache's list, which holds a reference to it. */
static void xmc_py_register(xmc_py_cache *cache, xmc_py_mapping *m)
{
    m->prev = cache->last;
    m->next = NULL;
    if (cache->last)
        cache->last->next = m;
    else
        cache->first = m;
    cache->last = m;
    Py_INCREF(m);
}

/* Whether m is on the cache's list. */
static int xmc_py_linked(const xmc_py_cache *cache, const xmc_py_mapping *m)
{
    return m->prev || m->next || cache->first == m;
}

/* Take m off the list; the caller gets the list's reference. */
static void xmc_py_unregister(xmc_py_cache *cache, xmc_py_mapping *m)
{
    if (m->prev)
        m->prev->next = m->next;
    else
        cache->first = m->next;
    if (m->next)
        m->next->prev = m->prev;
    else
        cache->last = m->prev;
    m->prev = m->next = NULL;
}

/* Unlock m in the core; the caller has marked it released and unregistered it. */
static int xmc_py_unlock_mapping(xmc_py_cache *cache, xmc_py_mapping *m, uint64_t id)
{
    const void *a = (const void *)(uintptr_t)m->address;
    int rc;

    XMC_PY_CALL(rc, xmc_unlock_tag_nowait(cache->c, a, id), xmc_unlock_tag(cache->c, a, id));
    return rc == XMC_ECLOSED ? XMC_OK : rc; /* closed meanwhile: unmapped already */
}

/* m.release(): unlock; a second call does nothing; BufferError while views live. */
static PyObject *xmc_py_mapping_release(PyObject *op, PyObject *unused)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;
    xmc_py_cache *cache = m->cache;
    int rc;

    (void)unused;
    if (m->released || !cache)
        Py_RETURN_NONE;
    if (m->exports) {
        PyErr_Format(PyExc_BufferError, "%zd memoryview(s) of the mapping are still alive",
                     m->exports);
        return NULL;
    }
    /* Released, but on the list until the core call returns: its trace
     * event finds its tag there.  close() may take it off meanwhile. */
    m->released = 1;
    Py_INCREF(cache);
    Py_INCREF(m);
    rc = xmc_py_unlock_mapping(cache, m, m->id);
    if (rc != XMC_OK && rc != XMC_ESYS && !cache->closed) {
        /* Still locked (a call from a backend callback, say): as it was.
         * XMC_ESYS: unlocked, but a grant entry failed to unmap (reported once). */
        m->released = 0;
    } else if (xmc_py_linked(cache, m)) {
        xmc_py_unregister(cache, m);
        Py_DECREF(m); /* the list's reference */
    }
    Py_DECREF(m);
    if (rc != XMC_OK && !cache->closed) {
        xmc_py_fail(cache, rc, "unlock", m->address, 0);
        Py_DECREF(cache);
        return NULL;
    }
    Py_DECREF(cache);
    Py_RETURN_NONE;
}

static PyObject *xmc_py_mapping_enter(PyObject *op, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(op);
}

/*
 * A short free list of the GC objects of one type: objects that come and go
 * at the rate of calls are kept, untracked and with their references
 * dropped, for the next ones, as CPython keeps its own small objects.  The
 * GIL guards it.
 */
#define XMC_PY_FREE_MAX 64

typedef struct {
    PyObject *items[XMC_PY_FREE_MAX];
    int n;
} xmc_py_freelist;

/* A new object of tp (size bytes), zeroed past its head and tracked; NULL
 * with an error set. */
static PyObject *xmc_py_fl_new(xmc_py_freelist *fl, PyTypeObject *tp, size_t size)
{
    PyObject *op;

    if (!fl->n)
        return PyType_GenericAlloc(tp, 0);
    op = fl->items[--fl->n];
    memset((char *)op + sizeof(PyObject), 0, size - sizeof(PyObject));
    PyObject_Init(op, tp);
    PyObject_GC_Track(op);
    return op;
}

/* The end of a tp_dealloc: op is untracked and cleared. */
static void xmc_py_fl_free(xmc_py_freelist *fl, PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);

    if (fl->n < XMC_PY_FREE_MAX)
        fl->items[fl->n++] = op;
    else
        PyObject_GC_Del(op);
    Py_DECREF(tp);
}

/*
 * __enter__ and __exit__ of Mapping and MappingGroup.  CPython before 3.14
 * looks both up at every with statement and binds each to the object in a
 * new builtin method object, made for the GC and freed at the end of the
 * statement: most of what a with statement costs.  These descriptors bind
 * with a method object of their own instead, from a free list.
 */
typedef struct {
    PyObject_HEAD
    PyObject *(*fn)(PyObject *self, PyObject *unused); /* release, or enter */
    PyTypeObject *owner; /* the type whose dict holds it (borrowed: lives as long) */
    Py_ssize_t nargs;    /* 0 for __enter__; -1: any (__exit__ ignores them) */
    PyObject *name;
} xmc_py_special;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    xmc_py_special *descr;
    PyObject *self;
} xmc_py_bound;

static PyTypeObject *xmc_py_special_type;
static PyTypeObject *xmc_py_bound_type;

static xmc_py_freelist xmc_py_bound_free;

static PyObject *xmc_py_special_call(xmc_py_special *d, PyObject *self, Py_ssize_t nargs,
                                     PyObject *kw)
{
    if ((d->nargs >= 0 && nargs != d->nargs) || kw) {
        PyErr_Format(PyExc_TypeError, "%U() takes no %sarguments", d->name,
                     d->nargs ? "keyword " : "");
        return NULL;
    }
    return d->fn(self, NULL);
}

static PyObject *xmc_py_bound_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                         PyObject *kwnames)
{
    xmc_py_bound *b = (xmc_py_bound *)op;

    (void)args;
    if (!b->self) { /* cleared by the GC */
        PyErr_SetString(PyExc_ReferenceError, "the method's object is gone");
        return NULL;
    }
    return xmc_py_special_call(b->descr, b->self, PyVectorcall_NARGS(nargsf),
                               kwnames && PyTuple_Size(kwnames) ? kwnames : NULL);
}

static int xmc_py_bound_traverse(PyObject *op, visitproc visit, void *arg)
{
    xmc_py_bound *b = (xmc_py_bound *)op;

    Py_VISIT(Py_TYPE(op));
    Py_VISIT(b->self);
    return 0;
}

static int xmc_py_bound_clear(PyObject *op)
{
    xmc_py_bound *b = (xmc_py_bound *)op;

    Py_CLEAR(b->self);
    Py_CLEAR(b->descr);
    return 0;
}

static void xmc_py_bound_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    xmc_py_bound_clear(op);
    xmc_py_fl_free(&xmc_py_bound_free, op);
}

static PyObject *xmc_py_bound_repr(PyObject *op)
{
    xmc_py_bound *b = (xmc_py_bound *)op;

    if (!b->descr || !b->self)
        return PyUnicode_FromString("<bound method, cleared>");
    return PyUnicode_FromFormat("<bound method %U of %R>", b->descr->name, b->self);
}

/* The TypeError of d given an object that is not of its type. */
static PyObject *xmc_py_special_misapplied(const xmc_py_special *d)
{
    PyObject *owner = PyType_GetName(d->owner);

    if (owner) {
        PyErr_Format(PyExc_TypeError, "%U() needs a %U object", d->name, owner);
        Py_DECREF(owner);
    }
    return NULL;
}

/* descr.__get__(obj, type): bound to obj, or the descriptor itself from the class */
static PyObject *xmc_py_special_get(PyObject *op, PyObject *obj, PyObject *type)
{
    xmc_py_special *d = (xmc_py_special *)op;
    xmc_py_bound *b;

    (void)type;
    if (!obj || obj == Py_None)
        return Py_NewRef(op);
    if (!PyObject_TypeCheck(obj, d->owner))
        return xmc_py_special_misapplied(d);
    b = (xmc_py_bound *)xmc_py_fl_new(&xmc_py_bound_free, xmc_py_bound_type, sizeof(*b));
    if (!b)
        return NULL;
    b->vectorcall = xmc_py_bound_vectorcall;
    b->descr = (xmc_py_special *)Py_NewRef(op);
    b->self = Py_NewRef(obj);
    return (PyObject *)b;
}

/* Mapping.__exit__(m, None, None, None): called from the class */
static PyObject *xmc_py_special_tpcall(PyObject *op, PyObject *args, PyObject *kwargs)
{
    xmc_py_special *d = (xmc_py_special *)op;
    Py_ssize_t n = PyTuple_Size(args);
    PyObject *self = n >= 1 ? PyTuple_GetItem(args, 0) : NULL;

    if (!self || !PyObject_TypeCheck(self, d->owner))
        return xmc_py_special_misapplied(d);
    return xmc_py_special_call(d, self, n - 1, kwargs && PyDict_Size(kwargs) ? kwargs : NULL);
}

static void xmc_py_special_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);

    Py_XDECREF(((xmc_py_special *)op)->name);
    PyObject_Free(op);
    Py_DECREF(tp);
}

static PyMemberDef xmc_py_bound_members[] = {
    { "__vectorcalloffset__", Py_T_PYSSIZET, offsetof(xmc_py_bound, vectorcall), Py_READONLY,
      NULL },
    { "__self__", Py_T_OBJECT_EX, offsetof(xmc_py_bound, self), Py_READONLY, NULL },
    { NULL, 0, 0, 0, NULL },
};

static PyType_Slot xmc_py_bound_slots[] = {
    { Py_tp_dealloc, xmc_py_bound_dealloc },
    { Py_tp_traverse, xmc_py_bound_traverse },
    { Py_tp_clear, xmc_py_bound_clear },
    { Py_tp_call, PyVectorcall_Call },
    { Py_tp_repr, xmc_py_bound_repr },
    { Py_tp_members, xmc_py_bound_members },
    { 0, NULL },
};

static PyType_Spec xmc_py_bound_spec = {
    "xenmapcache._core.bound_method", sizeof(xmc_py_bound), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
        Py_TPFLAGS_DISALLOW_INSTANTIATION,
    xmc_py_bound_slots,
};

static PyMemberDef xmc_py_special_members[] = {
    { "__name__", Py_T_OBJECT_EX, offsetof(xmc_py_special, name), Py_READONLY, NULL },
    { NULL, 0, 0, 0, NULL },
};

static PyType_Slot xmc_py_special_slots[] = {
    { Py_tp_dealloc, xmc_py_special_dealloc },
    { Py_tp_descr_get, xmc_py_special_get },
    { Py_tp_call, xmc_py_special_tpcall },
    { Py_tp_members, xmc_py_special_members },
    { 0, NULL },
};

static PyType_Spec xmc_py_special_spec = {
    "xenmapcache._core.special_method", sizeof(xmc_py_special), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, xmc_py_special_slots,
};

/* owner.<name> = a descriptor calling fn(self, NULL), given nargs positional arguments (-1: any). */
static int xmc_py_add_special(PyTypeObject *owner, const char *name,
                              PyObject *(*fn)(PyObject *, PyObject *), Py_ssize_t nargs)
{
    xmc_py_special *d = PyObject_Malloc(sizeof(*d));
    int rc;

    if (!d) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject_Init((PyObject *)d, xmc_py_special_type);
    d->fn = fn;
    d->owner = owner;
    d->nargs = nargs;
    d->name = PyUnicode_InternFromString(name);
    rc = d->name ? PyObject_SetAttrString((PyObject *)owner, name, (PyObject *)d) : -1;
    Py_DECREF(d);
    return rc;
}

/* Mapping and MappingGroup refuse pickling and copies through their Python
 * base (NoCopy); the cache object, never handed out, refuses here. */
static PyObject *xmc_py_refuse_copy(PyObject *op, PyObject *const *args, Py_ssize_t n)
{
    (void)args;
    (void)n;
    (void)op;
    PyErr_SetString(PyExc_TypeError, "NativeCache objects cannot be copied or pickled");
    return NULL;
}

static int xmc_py_mapping_getbuffer(PyObject *op, Py_buffer *view, int flags)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;

    if (m->released || !m->cache) {
        PyErr_SetString(PyExc_BufferError, "the mapping was released");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, op, (void *)(uintptr_t)m->address, (Py_ssize_t)m->size, 0,
                          flags) < 0)
        return -1;
    m->exports++;
    return 0;
}

static void xmc_py_mapping_releasebuffer(PyObject *op, Py_buffer *view)
{
    (void)view;
    ((xmc_py_mapping *)op)->exports--;
}

static PyObject *xmc_py_mapping_released(PyObject *op, void *closure)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;

    (void)closure;
    return PyBool_FromLong(m->released || !m->cache);
}

static PyObject *xmc_py_mapping_repr(PyObject *op)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;
    PyObject *state = m->released ? PyUnicode_FromString("released")
                                  : PyUnicode_FromFormat("at 0x%llx", m->address);
    PyObject *r = NULL;

    if (state)
        r = PyUnicode_FromFormat("<Mapping paddr=0x%llx size=0x%llx dma=%s tag=%R %U>",
                                 m->paddr, m->size, m->dma ? "True" : "False", m->tag, state);
    Py_XDECREF(state);
    return r;
}

static int xmc_py_mapping_traverse(PyObject *op, visitproc visit, void *arg)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;

    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)m->cache);
    Py_VISIT(m->tag);
    return 0;
}

static int xmc_py_mapping_clear(PyObject *op)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;

    Py_CLEAR(m->cache);
    Py_CLEAR(m->tag);
    return 0;
}

static xmc_py_freelist xmc_py_mapping_free;

/* A new Mapping, zeroed and tracked by the GC, or NULL with an error set. */
static xmc_py_mapping *xmc_py_mapping_new(void)
{
    return (xmc_py_mapping *)xmc_py_fl_new(&xmc_py_mapping_free, xmc_py_mapping_type,
                                           sizeof(xmc_py_mapping));
}

static void xmc_py_mapping_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    xmc_py_mapping_clear(op);
    xmc_py_fl_free(&xmc_py_mapping_free, op);
}

static PyMethodDef xmc_py_mapping_methods[] = {
    { "release", xmc_py_mapping_release, METH_NOARGS,
      "release()\n--\n\nUnlock the mapping; a second call does nothing.\n\n"
      "Raises BufferError (and keeps the mapping) while a memoryview of it is alive." },
    { NULL, NULL, 0, NULL },
};

static PyMemberDef xmc_py_mapping_members[] = {
    { "address", Py_T_ULONGLONG, offsetof(xmc_py_mapping, address), Py_READONLY,
      "The host address of the mapping's first byte." },
    { "paddr", Py_T_ULONGLONG, offsetof(xmc_py_mapping, paddr), Py_READONLY,
      "The guest-physical address mapped (follows replace())." },
    { "size", Py_T_ULONGLONG, offsetof(xmc_py_mapping, size), Py_READONLY, "Its length in bytes." },
    { "dma", Py_T_BOOL, offsetof(xmc_py_mapping, dma), Py_READONLY, "Whether it is a DMA mapping." },
    { "tag", Py_T_OBJECT_EX, offsetof(xmc_py_mapping, tag), Py_READONLY,
      "The caller's name for it, listed by locked() and invalidate()." },
    { NULL, 0, 0, 0, NULL },
};

static PyGetSetDef xmc_py_mapping_getset[] = {
    { "released", xmc_py_mapping_released, NULL,
      "Whether the mapping was released (or its cache closed).", NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyType_Slot xmc_py_mapping_slots[] = {
    { Py_tp_doc, "A locked mapping of guest memory made by the C core's binding." },
    { Py_tp_dealloc, xmc_py_mapping_dealloc },
    { Py_tp_traverse, xmc_py_mapping_traverse },
    { Py_tp_clear, xmc_py_mapping_clear },
    { Py_tp_repr, xmc_py_mapping_repr },
    { Py_tp_methods, xmc_py_mapping_methods },
    { Py_tp_members, xmc_py_mapping_members },
    { Py_tp_getset, xmc_py_mapping_getset },
    { Py_bf_getbuffer, xmc_py_mapping_getbuffer },
    { Py_bf_releasebuffer, xmc_py_mapping_releasebuffer },
    { 0, NULL },
};

static PyType_Spec xmc_py_mapping_spec = {
    "xenmapcache._core.Mapping", sizeof(xmc_py_mapping), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    xmc_py_mapping_slots,
};

/*
 * map(paddr, size, dma=False, tag=None) -> Mapping.  Registered before the
 * core call (invalidate() may list it at once); a failed call unregisters it.
 */
static PyObject *xmc_py_map_fast(PyObject *op, PyObject *const *args, Py_ssize_t n,
                                 PyObject *kwnames)
{
    const char *const names[] = { xmc_py_names[0], xmc_py_names[1], xmc_py_names[3],
                                  xmc_py_names[6] }; /* paddr, size, dma, tag */
    xmc_py_cache *self = (xmc_py_cache *)op;
    uint64_t paddr, size, id;
    PyObject *a[4];
    xmc_py_mapping *m;
    unsigned flags;
    int dma = 0, rc;
    void *p = NULL;

    if (!xmc_py_args(args, n, kwnames, names, 4, a) || !a[0] || !a[1] ||
        !xmc_py_u64(a[0], &paddr) || !xmc_py_u64(a[1], &size) || size > self->max_size ||
        (size && paddr > UINT64_MAX - (size - 1)) || (a[2] && (dma = xmc_py_flag(a[2])) < 0) ||
        self->closed) {
        PyErr_Clear();
        return xmc_py_checked(self, XMC_PY_MAP, args, n, kwnames);
    }
    m = xmc_py_mapping_new();
    if (!m)
        return NULL;
    m->id = id = ++self->next_id;
    m->cache = (xmc_py_cache *)Py_NewRef(op);
    m->tag = Py_NewRef(a[3] ? a[3] : Py_None);
    m->paddr = paddr;
    m->size = size;
    m->dma = (char)dma;
    xmc_py_register(self, m);
    flags = XMC_LOCK | (dma ? XMC_DMA : 0u);
    XMC_PY_CALL(rc, xmc_map_nowait(self->c, paddr, size, flags, id, &p),
                xmc_map(self->c, paddr, size, flags, id, &p));
    if (rc == XMC_OK && p && self->closed) /* closed while we mapped: unmapped already */
        rc = XMC_ECLOSED;
    if (rc != XMC_OK || !p) {
        if (!m->released) { /* else close_registry() took it off */
            m->released = 1;
            xmc_py_unregister(self, m);
            Py_DECREF(m);
        }
        Py_DECREF(m);
        if (rc == XMC_ECLOSED) {
            PyErr_SetString(xmc_py_closed_error, "the cache was closed");
            return NULL;
        }
        return xmc_py_fail(self, rc != XMC_OK ? rc : XMC_EMAP, "map", paddr, size);
    }
    m->address = (unsigned long long)(uintptr_t)p;
    return (PyObject *)m;
}

/* ---- MappingGroup: the Mappings of one map_sg() -------------------------------- */

/*
 * g.release(): unlock every Mapping of the group still locked, in one core
 * call, all or nothing: BufferError (nothing released) while a view of any
 * of them is alive.  A second call does nothing.
 */
static PyObject *xmc_py_group_release(PyObject *op, PyObject *unused)
{
    xmc_py_group *g = (xmc_py_group *)op;
    xmc_py_cache *cache = g->cache;
    Py_ssize_t n = PyTuple_Size(g->items), live = 0, busy = 0;
    void *stack[16], **addrs = stack;
    xmc_py_mapping **held;
    int rc;

    (void)unused;
    if (!cache || n <= 0)
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < n; i++) {
        xmc_py_mapping *m = (xmc_py_mapping *)PyTuple_GetItem(g->items, i);
        live += !m->released;
        busy += !m->released && m->exports;
    }
    if (busy) {
        PyErr_Format(PyExc_BufferError, "memoryviews of %zd mapping(s) of the group are still alive",
                     busy);
        return NULL;
    }
    if (!live)
        Py_RETURN_NONE;
    if ((size_t)live > sizeof(stack) / sizeof(stack[0]) / 2 &&
        !(addrs = PyMem_Malloc((size_t)live * 2 * sizeof(*addrs))))
        return PyErr_NoMemory();
    held = (xmc_py_mapping **)(addrs + live);
    live = 0;
    for (Py_ssize_t i = 0; i < n; i++) { /* released; on the list until the call returns */
        xmc_py_mapping *m = (xmc_py_mapping *)PyTuple_GetItem(g->items, i);
        if (m->released)
            continue;
        m->released = 1;
        Py_INCREF(m);
        addrs[live] = (void *)(uintptr_t)m->address;
        held[live++] = m;
    }
    Py_INCREF(cache);
    XMC_PY_CALL(rc, xmc_unlock_sg_nowait(cache->c, addrs, (size_t)live, g->id),
                xmc_unlock_sg(cache->c, addrs, (size_t)live, g->id));
    if (rc == XMC_ECLOSED || cache->closed)
        rc = XMC_OK; /* closed meanwhile: unmapped already */
    for (Py_ssize_t i = 0; i < live; i++) {
        if (rc != XMC_OK && rc != XMC_ESYS) { /* nothing was unlocked: as it was */
            held[i]->released = 0;
        } else if (xmc_py_linked(cache, held[i])) {
            xmc_py_unregister(cache, held[i]);
            Py_DECREF(held[i]); /* the list's reference */
        }
        Py_DECREF(held[i]);
    }
    if (addrs != stack)
        PyMem_Free(addrs);
    if (rc != XMC_OK) {
        xmc_py_fail(cache, rc, "unlock_sg", (uint64_t)live, 0);
        Py_DECREF(cache);
        return NULL;
    }
    Py_DECREF(cache);
    Py_RETURN_NONE;
}

/* g.buffers() -> a list of one memoryview per Mapping, for os.preadv() and the like */
static PyObject *xmc_py_group_buffers(PyObject *op, PyObject *unused)
{
    xmc_py_group *g = (xmc_py_group *)op;
    Py_ssize_t n = PyTuple_Size(g->items);
    PyObject *out = PyList_New(n);

    (void)unused;
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *v = PyMemoryView_FromObject(PyTuple_GetItem(g->items, i));
        if (!v)
            Py_CLEAR(out);
        else
            PyList_SetItem(out, i, v); /* steals v */
    }
    return out;
}

static PyObject *xmc_py_group_released(PyObject *op, void *closure)
{
    xmc_py_group *g = (xmc_py_group *)op;
    Py_ssize_t n = PyTuple_Size(g->items);

    (void)closure;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!((xmc_py_mapping *)PyTuple_GetItem(g->items, i))->released)
            Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

static Py_ssize_t xmc_py_group_len(PyObject *op)
{
    return PyTuple_Size(((xmc_py_group *)op)->items);
}

static PyObject *xmc_py_group_getitem(PyObject *op, PyObject *key)
{
    return PyObject_GetItem(((xmc_py_group *)op)->items, key);
}

static PyObject *xmc_py_group_item(PyObject *op, Py_ssize_t i)
{
    return PySequence_GetItem(((xmc_py_group *)op)->items, i);
}

static PyObject *xmc_py_group_iter(PyObject *op)
{
    return PyObject_GetIter(((xmc_py_group *)op)->items);
}

static PyObject *xmc_py_group_repr(PyObject *op)
{
    xmc_py_group *g = (xmc_py_group *)op;

    return PyUnicode_FromFormat("<MappingGroup of %zd: %R>", PyTuple_Size(g->items), g->items);
}

static int xmc_py_group_traverse(PyObject *op, visitproc visit, void *arg)
{
    xmc_py_group *g = (xmc_py_group *)op;

    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)g->cache);
    Py_VISIT(g->items);
    return 0;
}

static int xmc_py_group_clear(PyObject *op)
{
    xmc_py_group *g = (xmc_py_group *)op;

    Py_CLEAR(g->cache);
    Py_CLEAR(g->items);
    return 0;
}

static void xmc_py_group_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);

    PyObject_GC_UnTrack(op);
    xmc_py_group_clear(op);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

static PyMethodDef xmc_py_group_methods[] = {
    { "release", xmc_py_group_release, METH_NOARGS,
      "release()\n--\n\nUnlock every mapping of the group still locked, in one core call.\n\n"
      "All or nothing: raises BufferError, releasing none, while a memoryview of any is alive." },
    { "buffers", xmc_py_group_buffers, METH_NOARGS,
      "buffers()\n--\n\nOne writable memoryview per mapping, in order (for os.preadv, "
      "os.pwritev, socket.recvmsg_into, socket.sendmsg)." },
    { NULL, NULL, 0, NULL },
};

static PyGetSetDef xmc_py_group_getset[] = {
    { "released", xmc_py_group_released, NULL, "Whether every mapping of the group was released.",
      NULL },
    { NULL, NULL, NULL, NULL, NULL },
};

static PyType_Slot xmc_py_group_slots[] = {
    { Py_tp_doc, "The Mappings of one map_sg() call, made by the C core's binding." },
    { Py_tp_dealloc, xmc_py_group_dealloc },
    { Py_tp_traverse, xmc_py_group_traverse },
    { Py_tp_clear, xmc_py_group_clear },
    { Py_tp_repr, xmc_py_group_repr },
    { Py_tp_iter, xmc_py_group_iter },
    { Py_tp_methods, xmc_py_group_methods },
    { Py_tp_getset, xmc_py_group_getset },
    { Py_sq_length, xmc_py_group_len },
    { Py_sq_item, xmc_py_group_item }, /* a sequence of buffers: os.preadv(fd, g, offset) */
    { Py_mp_length, xmc_py_group_len },
    { Py_mp_subscript, xmc_py_group_getitem },
    { 0, NULL },
};

static PyType_Spec xmc_py_group_spec = {
    "xenmapcache._core.MappingGroup", sizeof(xmc_py_group), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    xmc_py_group_slots,
};

/* One (paddr, size) segment: an exact tuple of two exact ints in range. */
static int xmc_py_segment(PyObject *o, uint64_t max_size, xmc_sg *out)
{
    if (!PyTuple_CheckExact(o) || PyTuple_Size(o) != 2 ||
        !xmc_py_u64(PyTuple_GetItem(o, 0), &out->paddr) ||
        !xmc_py_u64(PyTuple_GetItem(o, 1), &out->size) || out->size > max_size ||
        (out->size && out->paddr > UINT64_MAX - (out->size - 1)))
        return 0;
    return 1;
}

/*
 * map_sg(segments, dma=False, tag=None) -> MappingGroup: one Mapping per
 * (paddr, size) of a list or tuple, in one core call, all or nothing.  They
 * share one tag id (the core's batch takes one), so locked() names each by
 * the group's tag.
 */
static PyObject *xmc_py_map_sg_fast(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    const char *const names[] = { xmc_py_names[8], xmc_py_names[3],
                                  xmc_py_names[6] }; /* segments, dma, tag */
    xmc_py_cache *self = (xmc_py_cache *)op;
    xmc_sg segstack[16], *segs = segstack;
    void *outstack[16], **out = outstack;
    PyObject *a[3], *items = NULL, *tag;
    xmc_py_group *g = NULL;
    Py_ssize_t n = 0;
    int dma = 0, rc = XMC_OK, ok;
    uint64_t id;

    ok = xmc_py_args(args, nargs, kwnames, names, 3, a) && a[0] &&
         (PyList_CheckExact(a[0]) || PyTuple_CheckExact(a[0])) &&
         (n = PyObject_Length(a[0])) > 0 && n <= XMC_SG_MAX &&
         (!a[1] || (dma = xmc_py_flag(a[1])) >= 0) && !self->closed;
    if (ok && n > 16) {
        segs = PyMem_Malloc((size_t)n * sizeof(*segs));
        out = PyMem_Malloc((size_t)n * sizeof(*out));
        if (!segs || !out) {
            ok = 0;
            rc = XMC_ENOMEM;
        }
    }
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        PyObject *seg = PyList_CheckExact(a[0]) ? PyList_GetItem(a[0], i)
                                                : PyTuple_GetItem(a[0], i);
        ok = seg && xmc_py_segment(seg, self->max_size, &segs[i]);
    }
    if (!ok) {
        PyErr_Clear();
        if (segs != segstack)
            PyMem_Free(segs);
        if (out != outstack)
            PyMem_Free(out);
        if (rc == XMC_ENOMEM)
            return PyErr_NoMemory();
        if (self->closed) {
            PyErr_SetString(xmc_py_closed_error, "the cache is closed");
            return NULL;
        }
        return xmc_py_checked(self, XMC_PY_MAP_SG, args, nargs, kwnames);
    }
    tag = a[2] ? a[2] : Py_None;
    id = ++self->next_id;
    if (!(items = PyTuple_New(n)) ||
        !(g = (xmc_py_group *)PyType_GenericAlloc(xmc_py_group_type, 0)))
        goto out;
    for (Py_ssize_t i = 0; i < n; i++) {
        xmc_py_mapping *m = xmc_py_mapping_new();
        if (!m)
            goto out;
        m->id = id;
        m->cache = (xmc_py_cache *)Py_NewRef(op);
        m->tag = Py_NewRef(tag);
        m->paddr = segs[i].paddr;
        m->size = segs[i].size;
        m->dma = (char)dma;
        m->released = 1; /* until registered */
        PyTuple_SetItem(items, i, (PyObject *)m); /* steals m */
    }
    for (Py_ssize_t i = 0; i < n; i++) { /* before the call: invalidate() may list them */
        xmc_py_mapping *m = (xmc_py_mapping *)PyTuple_GetItem(items, i);
        m->released = 0;
        xmc_py_register(self, m);
    }
    XMC_PY_CALL(rc, xmc_map_sg_nowait(self->c, segs, (size_t)n, dma ? XMC_DMA : 0u, id, out),
                xmc_map_sg(self->c, segs, (size_t)n, dma ? XMC_DMA : 0u, id, out));
    if (rc == XMC_OK && self->closed)
        rc = XMC_ECLOSED; /* closed while we mapped: unmapped already */
    for (Py_ssize_t i = 0; i < n; i++) {
        xmc_py_mapping *m = (xmc_py_mapping *)PyTuple_GetItem(items, i);
        if (rc == XMC_OK) {
            m->address = (unsigned long long)(uintptr_t)out[i];
        } else if (!m->released) { /* else close_registry() took it off */
            m->released = 1;
            xmc_py_unregister(self, m);
            Py_DECREF(m);
        }
    }
    if (rc != XMC_OK) {
        if (rc == XMC_ECLOSED)
            PyErr_SetString(xmc_py_closed_error, "the cache was closed");
        else
            xmc_py_fail(self, rc, "map_sg", (uint64_t)n, 0);
        goto out;
    }
    g->cache = (xmc_py_cache *)Py_NewRef(op);
    g->items = items;
    g->id = id;
    items = NULL;
    if (segs != segstack)
        PyMem_Free(segs);
    if (out != outstack)
        PyMem_Free(out);
    return (PyObject *)g;
out:
    Py_XDECREF(items);
    Py_XDECREF(g);
    if (segs != segstack)
        PyMem_Free(segs);
    if (out != outstack)
        PyMem_Free(out);
    return NULL;
}

/* ---- NativeCache: the registry ----------------------------------------------- */

/* tag_of(id) -> the tag of a live Mapping with that tag id, or None (for trace events) */
static PyObject *xmc_py_tag_of(PyObject *op, PyObject *arg)
{
    unsigned long long id = PyLong_AsUnsignedLongLong(arg);

    if (id == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    for (xmc_py_mapping *m = ((xmc_py_cache *)op)->first; m; m = m->next)
        if (m->id == id)
            return Py_NewRef(m->tag);
    Py_RETURN_NONE;
}

/* tags() -> {tag id: tag} of the live Mappings (for locked() and invalidate()) */
static PyObject *xmc_py_tags(PyObject *op, PyObject *unused)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    PyObject *out = PyDict_New();

    (void)unused;
    for (xmc_py_mapping *m = self->first; out && m; m = m->next) {
        PyObject *key = PyLong_FromUnsignedLongLong(m->id);

        if (!key || PyDict_SetItem(out, key, m->tag) < 0)
            Py_CLEAR(out);
        Py_XDECREF(key);
    }
    return out;
}

/*
 * release_at(address) -> bool: release the newest live Mapping at exactly
 * address that no view holds (False: there is none).  BufferError when
 * every Mapping there has views.  A scan of the live Mappings: this is
 * unlock() of a Mapping's address, not a hot path.
 */
static PyObject *xmc_py_release_at(PyObject *op, PyObject *arg)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    unsigned long long address = PyLong_AsUnsignedLongLong(arg);
    PyObject *idle = NULL;
    int busy = 0;

    if (address == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    for (xmc_py_mapping *m = self->first; m; m = m->next) {
        if (m->address != address || m->released)
            continue;
        if (m->exports)
            busy = 1;
        else
            idle = (PyObject *)m;
    }
    if (idle) {
        PyObject *r;

        Py_INCREF(idle);
        r = xmc_py_mapping_release(idle, NULL);
        Py_DECREF(idle);
        if (!r)
            return NULL;
        Py_DECREF(r);
        Py_RETURN_TRUE;
    }
    if (busy) {
        PyErr_Format(PyExc_BufferError, "every mapping at 0x%llx still has memoryviews alive",
                     address);
        return NULL;
    }
    Py_RETURN_FALSE;
}

/* mappings() -> list of the live Mappings, oldest first */
static PyObject *xmc_py_mappings(PyObject *op, PyObject *unused)
{
    PyObject *out = PyList_New(0);

    (void)unused;
    for (xmc_py_mapping *m = ((xmc_py_cache *)op)->first; out && m; m = m->next)
        if (PyList_Append(out, (PyObject *)m) < 0)
            Py_CLEAR(out);
    return out;
}

/* set_after_free(fn): fn() is called once the core is freed */
static PyObject *xmc_py_set_after_free(PyObject *op, PyObject *fn)
{
    xmc_py_cache *self = (xmc_py_cache *)op;

    Py_XSETREF_COMPAT(self->after_free, Py_NewRef(fn));
    Py_RETURN_NONE;
}

/* set_paddr(mapping, paddr): replace() moved the entry under it */
static PyObject *xmc_py_set_paddr(PyObject *op, PyObject *const *args, Py_ssize_t n)
{
    uint64_t paddr;

    (void)op;
    if (n != 2 || !PyObject_TypeCheck(args[0], xmc_py_mapping_type) ||
        !xmc_py_u64(args[1], &paddr)) {
        PyErr_SetString(PyExc_TypeError, "set_paddr(mapping, paddr)");
        return NULL;
    }
    ((xmc_py_mapping *)args[0])->paddr = paddr;
    Py_RETURN_NONE;
}

/* Mark every Mapping released and drop the list's references. */
static void xmc_py_forget_all(xmc_py_cache *self)
{
    xmc_py_mapping *m;

    while ((m = self->first)) {
        m->released = 1;
        xmc_py_unregister(self, m);
        Py_DECREF(m);
    }
}

/*
 * detach(): drop the list's references to the Mappings, leaving them as they
 * are.  Called when the MapCache itself is gone: the Mappings nobody holds
 * then go, and with them the cache (each holds it), at once instead of at
 * the garbage collector's next full pass.  One a caller still holds keeps
 * the cache, and its memory, alive, and can still be released.
 */
static PyObject *xmc_py_detach(PyObject *op, PyObject *unused)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    xmc_py_mapping *m;

    (void)unused;
    while ((m = self->first)) {
        xmc_py_unregister(self, m);
        Py_DECREF(m);
    }
    Py_RETURN_NONE;
}

/*
 * close_registry(): refuse (BufferError) while a Mapping has views; else
 * mark every Mapping released, empty the registry and refuse new maps.  The
 * caller then closes the core.
 */
static PyObject *xmc_py_close_registry(PyObject *op, PyObject *unused)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    Py_ssize_t busy = 0;

    (void)unused;
    for (xmc_py_mapping *m = self->first; m; m = m->next)
        busy += m->exports != 0;
    if (busy) {
        PyErr_Format(PyExc_BufferError, "%zd mapping(s) still have memoryviews alive", busy);
        return NULL;
    }
    self->closed = 1;
    xmc_py_forget_all(self);
    Py_RETURN_NONE;
}

/*
 * bind(owner, fail, max_size, bucket_size, map_ptr, read, readinto,
 *      ram_addr, unlock, map, map_sg): owner is a weakref to the MapCache,
 * the seven callables its checked methods (unbound), fail(rc, what, paddr,
 * size) raises.
 */
static PyObject *xmc_py_bind(PyObject *op, PyObject *args)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    PyObject *o[2 + XMC_PY_NCHECKED];
    unsigned long long max_size, bucket_size;

    if (!PyArg_ParseTuple(args, "OOKKOOOOOOOO", &o[0], &o[1], &max_size, &bucket_size, &o[2],
                          &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9]))
        return NULL;
    if (self->owner || !bucket_size || (bucket_size & (bucket_size - 1))) {
        PyErr_SetString(PyExc_ValueError, "bind() once, with a power-of-two bucket size");
        return NULL;
    }
    self->owner = Py_NewRef(o[0]);
    self->fail = Py_NewRef(o[1]);
    for (int i = 0; i < XMC_PY_NCHECKED; i++)
        self->checked[i] = Py_NewRef(o[2 + i]);
    self->max_size = max_size;
    self->bucket_size = bucket_size;
    Py_RETURN_NONE;
}

static int xmc_py_cache_traverse(PyObject *op, visitproc visit, void *arg)
{
    xmc_py_cache *self = (xmc_py_cache *)op;

    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->owner);
    Py_VISIT(self->fail);
    for (int i = 0; i < XMC_PY_NCHECKED; i++)
        Py_VISIT(self->checked[i]);
    for (xmc_py_mapping *m = self->first; m; m = m->next)
        Py_VISIT((PyObject *)m);
    return 0;
}

static int xmc_py_cache_clear(PyObject *op)
{
    xmc_py_cache *self = (xmc_py_cache *)op;

    Py_CLEAR(self->owner);
    Py_CLEAR(self->fail);
    for (int i = 0; i < XMC_PY_NCHECKED; i++)
        Py_CLEAR(self->checked[i]);
    xmc_py_forget_all(self);
    return 0;
}

/* Freed with the last reference: no thread is inside a call then (a call
 * holds one), and every Mapping is gone (each holds one). */
static void xmc_py_cache_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    xmc_py_cache *self = (xmc_py_cache *)op;

    PyObject *after = self->after_free, *exc, *r;

    PyObject_GC_UnTrack(op);
    xmc_py_cache_clear(op);
    exc = PyErr_GetRaisedException();
    if (self->c)
        xmc_cache_free(self->c); /* may call a CallbackBackend: the GIL is held */
    if (after) { /* say what a backend's unmap raised meanwhile */
        if (!(r = PyObject_CallNoArgs(after)))
            PyErr_WriteUnraisable(after);
        Py_XDECREF(r);
        Py_DECREF(after);
    }
    PyErr_SetRaisedException(exc);
    PyObject_GC_Del(op);
    Py_DECREF(tp);
}

#define XMC_PY_FAST (METH_FASTCALL | METH_KEYWORDS)
static PyMethodDef xmc_py_cache_methods[] = {
    { "map_ptr", (PyCFunction)(void (*)(void))xmc_py_map_ptr_fast, XMC_PY_FAST,
      "map_ptr(paddr, size=0, lock=False, dma=False)\n--\n\n"
      "Map like QEMU's ``xen_map_cache``: returns the host address as an int." },
    { "read", (PyCFunction)(void (*)(void))xmc_py_read_fast, XMC_PY_FAST,
      "read(paddr, n)\n--\n\nRead ``n`` bytes of guest memory through the cache (unlocked)." },
    { "readinto", (PyCFunction)(void (*)(void))xmc_py_readinto_fast, XMC_PY_FAST,
      "readinto(paddr, buffer)\n--\n\n"
      "Fill the writable ``buffer`` with guest memory from ``paddr``; returns its length." },
    { "write", (PyCFunction)(void (*)(void))xmc_py_write_fast, XMC_PY_FAST,
      "write(paddr, data)\n--\n\nWrite all of ``data`` into guest memory at ``paddr``." },
    { "ram_addr", (PyCFunction)(void (*)(void))xmc_py_ram_addr_fast, XMC_PY_FAST,
      "ram_addr(address)\n--\n\n"
      "The guest-physical address behind a host address inside a mapped entry." },
    { "unlock", (PyCFunction)(void (*)(void))xmc_py_unlock_fast, XMC_PY_FAST,
      "unlock(address)\n--\n\n"
      "Drop one locked mapping at exactly ``address`` (QEMU's invalidate_map_cache_entry)." },
    { "map", (PyCFunction)(void (*)(void))xmc_py_map_fast, XMC_PY_FAST,
      "map(paddr, size, dma=False, tag=None)\n--\n\n"
      "Map ``[paddr, paddr + size)`` locked; returns a :class:`Mapping`." },
    { "noop_map_ptr", (PyCFunction)(void (*)(void))xmc_py_noop_map_ptr, XMC_PY_FAST,
      "noop_map_ptr(paddr, size=0, lock=False, dma=False)\n--\n\n"
      "map_ptr's builtin without the core call: the baseline of the hit benchmark." },
    { "map_sg", (PyCFunction)(void (*)(void))xmc_py_map_sg_fast, XMC_PY_FAST,
      "map_sg(segments, dma=False, tag=None)\n--\n\n"
      "Map every ``(paddr, size)`` of ``segments`` locked, in one call; all or nothing." },
    { "set_after_free", xmc_py_set_after_free, METH_O,
      "set_after_free(fn)\n--\n\nCall fn() once the core is freed." },
    { "tag_of", xmc_py_tag_of, METH_O,
      "tag_of(id)\n--\n\nThe tag of a live Mapping with that tag id, or None." },
    { "tags", xmc_py_tags, METH_NOARGS, "tags()\n--\n\n{tag id: tag} of the live Mappings." },
    { "release_at", xmc_py_release_at, METH_O,
      "release_at(address)\n--\n\nRelease the newest idle Mapping at address; False if none." },
    { "mappings", xmc_py_mappings, METH_NOARGS, "mappings()\n--\n\nThe live Mappings." },
    { "set_paddr", (PyCFunction)(void (*)(void))xmc_py_set_paddr, METH_FASTCALL,
      "set_paddr(mapping, paddr)\n--\n\nrecord that replace() moved a Mapping." },
    { "detach", xmc_py_detach, METH_NOARGS,
      "detach()\n--\n\nDrop the references to the Mappings (the MapCache is gone)." },
    { "close_registry", xmc_py_close_registry, METH_NOARGS,
      "close_registry()\n--\n\nRelease every Mapping (BufferError while views live)." },
    { "bind", xmc_py_bind, METH_VARARGS,
      "bind(owner, fail, max_size, bucket_size, map_ptr, read, readinto, ram_addr, unlock, "
      "map, map_sg)\n--\n\nSet the MapCache and its checked methods." },
    { "__reduce__", (PyCFunction)(void (*)(void))xmc_py_refuse_copy, METH_FASTCALL, NULL },
    { NULL, NULL, 0, NULL },
};

static PyType_Slot xmc_py_cache_slots[] = {
    { Py_tp_doc, "One xmc_cache, its hot calls and its registry of Mappings (ffi/seam.h)." },
    { Py_tp_dealloc, xmc_py_cache_dealloc },
    { Py_tp_traverse, xmc_py_cache_traverse },
    { Py_tp_clear, xmc_py_cache_clear },
    { Py_tp_methods, xmc_py_cache_methods },
    { 0, NULL },
};

static PyType_Spec xmc_py_cache_spec = {
    "xenmapcache._core.NativeCache", sizeof(xmc_py_cache), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    xmc_py_cache_slots,
};

/* This thread's NativeCache just made by xmc_py_adopt(), for adopted(). */
static _Thread_local PyObject *xmc_py_adopted;

/*
 * Hand the cache c to a new NativeCache, which frees it when it goes; take
 * it with _core.adopted().  XMC_ENOMEM (c not taken) when it cannot be made.
 */
static int xmc_py_adopt(xmc_cache *c)
{
    PyGILState_STATE gil;
    xmc_py_cache *self = NULL;
    int rc = XMC_EUNAVAIL;

    if (!c)
        return XMC_EINVAL;
    gil = PyGILState_Ensure(); /* cffi released it for this call */
    if (xmc_py_cache_type) {
        rc = XMC_ENOMEM;
        self = (xmc_py_cache *)PyType_GenericAlloc(xmc_py_cache_type, 0);
        if (self) {
            self->c = c;
            Py_XDECREF(xmc_py_adopted); /* one a failed caller left behind */
            xmc_py_adopted = (PyObject *)self;
            rc = XMC_OK;
        }
        PyErr_Clear();
    }
    PyGILState_Release(gil);
    return rc;
}

/* adopted() -> the NativeCache this thread's last xmc_py_adopt() made (once) */
static PyObject *xmc_py_take_adopted(PyObject *module, PyObject *unused)
{
    PyObject *got = xmc_py_adopted;

    (void)module;
    (void)unused;
    xmc_py_adopted = NULL;
    if (!got)
        PyErr_SetString(PyExc_LookupError, "no cache was adopted by this thread");
    return got;
}

static PyMethodDef xmc_py_adopted_def = {
    "adopted", xmc_py_take_adopted, METH_NOARGS,
    "adopted()\n--\n\nThe NativeCache made by this thread's last xmc_py_adopt() call.",
};

/*
 * Make the three types, Mapping and MappingGroup as subclasses of those of
 * xenmapcache.cache, and put them and adopted() on the module
 * xenmapcache._core; 0 on success.
 */
static int xmc_py_fast_install(void)
{
    PyGILState_STATE gil = PyGILState_Ensure(); /* cffi released it for this call */
    PyObject *module = NULL, *api = NULL, *base = NULL, *bases = NULL, *fn = NULL;
    PyObject *gbase = NULL, *gbases = NULL;
    PyObject *errors = NULL;
    int rc = -1;

    if (xmc_py_cache_type) {
        rc = 0;
        goto out;
    }
    if (!(module = PyImport_ImportModule("xenmapcache._core")) ||
        !(api = PyImport_ImportModule("xenmapcache.cache")) ||
        !(errors = PyImport_ImportModule("xenmapcache.errors")) ||
        !(base = PyObject_GetAttrString(api, "Mapping")) || !(bases = PyTuple_Pack(1, base)) ||
        !(gbase = PyObject_GetAttrString(api, "MappingGroup")) ||
        !(gbases = PyTuple_Pack(1, gbase)) ||
        !(xmc_py_closed_error = PyObject_GetAttrString(errors, "MapCacheError")))
        goto out;
    for (size_t i = 0; i < XMC_PY_NNAMES; i++)
        if (!xmc_py_interned[i] && !(xmc_py_interned[i] = PyUnicode_InternFromString(xmc_py_names[i])))
            goto out;
    xmc_py_mapping_type = (PyTypeObject *)PyType_FromSpecWithBases(&xmc_py_mapping_spec, bases);
    xmc_py_group_type = (PyTypeObject *)PyType_FromSpecWithBases(&xmc_py_group_spec, gbases);
    xmc_py_cache_type = (PyTypeObject *)PyType_FromSpec(&xmc_py_cache_spec);
    if (!xmc_py_special_type)
        xmc_py_special_type = (PyTypeObject *)PyType_FromSpec(&xmc_py_special_spec);
    if (!xmc_py_bound_type)
        xmc_py_bound_type = (PyTypeObject *)PyType_FromSpec(&xmc_py_bound_spec);
    if (!xmc_py_mapping_type || !xmc_py_group_type || !xmc_py_cache_type ||
        !xmc_py_special_type || !xmc_py_bound_type ||
        xmc_py_add_special(xmc_py_mapping_type, "__enter__", xmc_py_mapping_enter, 0) ||
        xmc_py_add_special(xmc_py_mapping_type, "__exit__", xmc_py_mapping_release, -1) ||
        xmc_py_add_special(xmc_py_group_type, "__enter__", xmc_py_mapping_enter, 0) ||
        xmc_py_add_special(xmc_py_group_type, "__exit__", xmc_py_group_release, -1) ||
        !(fn = PyCFunction_NewEx(&xmc_py_adopted_def, NULL, NULL)) ||
        PyObject_SetAttrString(module, "adopted", fn) < 0 ||
        PyObject_SetAttrString(module, "Mapping", (PyObject *)xmc_py_mapping_type) < 0 ||
        PyObject_SetAttrString(module, "MappingGroup", (PyObject *)xmc_py_group_type) < 0 ||
        PyObject_SetAttrString(module, "NativeCache", (PyObject *)xmc_py_cache_type) < 0) {
        Py_CLEAR(xmc_py_mapping_type);
        Py_CLEAR(xmc_py_group_type);
        Py_CLEAR(xmc_py_cache_type);
        goto out;
    }
    rc = 0;
out:
    if (rc)
        PyErr_Clear(); /* the caller falls back to cffi calls and the Python Mapping */
    Py_XDECREF(fn);
    Py_XDECREF(bases);
    Py_XDECREF(base);
    Py_XDECREF(gbases);
    Py_XDECREF(gbase);
    Py_XDECREF(errors);
    Py_XDECREF(api);
    Py_XDECREF(module);
    PyGILState_Release(gil);
    return rc;
}

#else /* not built by cffi for CPython */

static int xmc_py_fast_install(void)
{
    return -1;
}

static int xmc_py_adopt(xmc_cache *c)
{
    (void)c;
    return XMC_EUNAVAIL;
}

#endif /* Py_PYTHON_H */

#endif /* XMC_PYSEAM_H */
