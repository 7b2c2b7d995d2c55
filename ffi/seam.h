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
 * CPython builtins for the four hot methods of one cache.
 *
 * cffi's own calls cost a Python frame around them, an argument tuple and a
 * cdata check per call, and release the GIL every time.  These are plain
 * vectorcall builtins, bound to one cache (a capsule is their `self`),
 * written against the stable ABI of 3.12: the common case converts exact
 * ints, given by position or by keyword, makes the core call (releasing the
 * GIL only when it would wait, see XMC_PY_CALL), and builds the result.
 * Anything else (another type, an unknown or repeated keyword, a value out
 * of range) goes to the Python closure of the same name, which validates
 * and raises as documented; a
 * failed core call goes to a Python `fail(rc, paddr, size)` that raises, so
 * that nothing is done twice.  Python gets them through xmc_py_fast_install().
 */
#ifdef Py_PYTHON_H

#define XMC_PY_FAST_READ_MAX ((Py_ssize_t)1 << 24)
#define XMC_PY_HOLD_GIL_MAX 4096 /* a read up to a page may keep the GIL */

/* The Python objects a binding holds, in fast_bind's argument order. */
enum {
    XMC_PY_KEEP,     /* the cffi handle: keeps the cache alive */
    XMC_PY_MAP_PTR,  /* the Python versions, for anything unusual */
    XMC_PY_READ,
    XMC_PY_RAM_ADDR,
    XMC_PY_UNLOCK,
    XMC_PY_FAIL_MAP, /* fail(rc, paddr, size): raises */
    XMC_PY_FAIL_READ,
    XMC_PY_NOBJ
};

typedef struct xmc_py_fast {
    xmc_cache *c;
    PyObject *obj[XMC_PY_NOBJ];
} xmc_py_fast;

static void xmc_py_fast_free(PyObject *capsule)
{
    xmc_py_fast *f = PyCapsule_GetPointer(capsule, NULL);

    if (!f)
        return;
    for (int i = 0; i < XMC_PY_NOBJ; i++)
        Py_XDECREF(f->obj[i]);
    PyMem_Free(f);
}

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

static PyObject *xmc_py_fail(PyObject *fail, int rc, uint64_t paddr, uint64_t size)
{
    return PyObject_CallFunction(fail, "iKK", rc, (unsigned long long)paddr,
                                 (unsigned long long)size);
}

/* The parameter names, interned by xmc_py_fast_install(): keyword names
 * written in Python code are the same objects, found without comparing. */
static const char *const xmc_py_names[] = { "paddr", "size", "lock", "dma", "n", "address" };
#define XMC_PY_NNAMES (sizeof(xmc_py_names) / sizeof(xmc_py_names[0]))
static PyObject *xmc_py_interned[XMC_PY_NNAMES];

static int xmc_py_name_is(PyObject *name, const char *want)
{
    for (size_t i = 0; i < XMC_PY_NNAMES; i++)
        if (name == xmc_py_interned[i])
            return xmc_py_names[i] == want;
    return PyUnicode_CompareWithASCIIString(name, want) == 0;
}

static int xmc_py_kwargs(PyObject *const *values, PyObject *kwnames,
                         const char *const *names, Py_ssize_t nnames, PyObject **slot)
{
    Py_ssize_t nkw = PyTuple_Size(kwnames);

    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GetItem(kwnames, k);
        Py_ssize_t i = 0;

        while (i < nnames && !xmc_py_name_is(name, names[i]))
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
 * repeats a parameter already given, or too many arguments: the Python
 * version then raises the TypeError.
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

/* map_ptr(paddr, size=0, lock=False, dma=False) -> int */
static PyObject *xmc_py_fast_map_ptr(PyObject *self, PyObject *const *args, Py_ssize_t n,
                                     PyObject *kwnames)
{
    xmc_py_fast *f = PyCapsule_GetPointer(self, NULL);
    uint64_t paddr, size = 0;
    int lock = 0, dma = 0, rc;
    PyObject *a[4];
    unsigned flags;
    void *p = NULL;

    if (!f)
        return NULL;
    if (!xmc_py_args(args, n, kwnames, xmc_py_names, 4, a) || !a[0] /* paddr size lock dma */ || !xmc_py_u64(a[0], &paddr) ||
        (a[1] && !xmc_py_u64(a[1], &size)) || (a[2] && (lock = xmc_py_flag(a[2])) < 0) ||
        (a[3] && (dma = xmc_py_flag(a[3])) < 0)) {
        PyErr_Clear();
        return PyObject_Vectorcall(f->obj[XMC_PY_MAP_PTR], args, (size_t)n, kwnames);
    }
    flags = lock ? XMC_LOCK | (dma ? XMC_DMA : 0u) : 0u;
    XMC_PY_CALL(rc, xmc_map_nowait(f->c, paddr, size, flags, 0, &p),
                xmc_map(f->c, paddr, size, flags, 0, &p));
    if (rc != XMC_OK || !p)
        return xmc_py_fail(f->obj[XMC_PY_FAIL_MAP], rc != XMC_OK ? rc : XMC_EMAP, paddr, size);
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)p);
}

/* read(paddr, n) -> bytes, filled in place before anyone sees it */
static PyObject *xmc_py_fast_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    const char *const names[] = { xmc_py_names[0], xmc_py_names[4] }; /* paddr, n */
    xmc_py_fast *f = PyCapsule_GetPointer(self, NULL);
    uint64_t paddr, n;
    PyObject *out, *a[2];
    char *buf;
    int rc;

    if (!f)
        return NULL;
    if (!xmc_py_args(args, nargs, kwnames, names, 2, a) || !a[0] || !a[1] ||
        !xmc_py_u64(a[0], &paddr) || !xmc_py_u64(a[1], &n) ||
        n > (uint64_t)XMC_PY_FAST_READ_MAX || (n && paddr > UINT64_MAX - (n - 1)))
        return PyObject_Vectorcall(f->obj[XMC_PY_READ], args, (size_t)nargs, kwnames);
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (!out)
        return NULL;
    buf = PyBytes_AsString(out);
    if (!buf) {
        Py_DECREF(out);
        return NULL;
    }
    /* Longer copies are worth letting other threads run. */
    XMC_PY_CALL(rc, n <= XMC_PY_HOLD_GIL_MAX ? xmc_read_nowait(f->c, paddr, buf, (size_t)n)
                                             : XMC_EAGAIN,
                xmc_read(f->c, paddr, buf, (size_t)n));
    if (rc != XMC_OK) {
        Py_DECREF(out);
        return xmc_py_fail(f->obj[XMC_PY_FAIL_READ], rc, paddr, n);
    }
    return out;
}

/* The host address that is the one argument of ram_addr and unlock, or NULL
 * when it is not an exact int given once (the Python version then raises). */
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
static PyObject *xmc_py_fast_ram_addr(PyObject *self, PyObject *const *args, Py_ssize_t n,
                                      PyObject *kwnames)
{
    xmc_py_fast *f = PyCapsule_GetPointer(self, NULL);
    const void *a = f ? xmc_py_address(args, n, kwnames) : NULL;
    uint64_t paddr = 0;
    int rc = XMC_EINVAL;

    if (!f)
        return NULL;
    if (a)
        XMC_PY_CALL(rc, xmc_ram_addr_nowait(f->c, a, &paddr), xmc_ram_addr(f->c, a, &paddr));
    if (rc != XMC_OK) /* the Python version asks again and says why */
        return PyObject_Vectorcall(f->obj[XMC_PY_RAM_ADDR], args, (size_t)n, kwnames);
    return PyLong_FromUnsignedLongLong((unsigned long long)paddr);
}

/* unlock(address) -> None */
static PyObject *xmc_py_fast_unlock(PyObject *self, PyObject *const *args, Py_ssize_t n,
                                    PyObject *kwnames)
{
    xmc_py_fast *f = PyCapsule_GetPointer(self, NULL);
    const void *a = f ? xmc_py_address(args, n, kwnames) : NULL;
    int rc = XMC_EINVAL;

    if (!f)
        return NULL;
    if (a)
        XMC_PY_CALL(rc, xmc_unlock_tag_nowait(f->c, a, 0), xmc_unlock_tag(f->c, a, 0));
    if (rc != XMC_OK) /* nothing was unlocked: the Python version tries Mappings */
        return PyObject_Vectorcall(f->obj[XMC_PY_UNLOCK], args, (size_t)n, kwnames);
    Py_RETURN_NONE;
}

static PyMethodDef xmc_py_fast_defs[] = {
    { "map_ptr", (PyCFunction)(void (*)(void))xmc_py_fast_map_ptr, METH_FASTCALL | METH_KEYWORDS,
      "map_ptr(paddr, size=0, lock=False, dma=False)\n--\n\n"
      "Map like QEMU's ``xen_map_cache``: returns the host address as an int." },
    { "read", (PyCFunction)(void (*)(void))xmc_py_fast_read, METH_FASTCALL | METH_KEYWORDS,
      "read(paddr, n)\n--\n\nRead ``n`` bytes of guest memory through the cache (unlocked)." },
    { "ram_addr", (PyCFunction)(void (*)(void))xmc_py_fast_ram_addr, METH_FASTCALL | METH_KEYWORDS,
      "ram_addr(address)\n--\n\n"
      "The guest-physical address behind a host address inside a mapped entry." },
    { "unlock", (PyCFunction)(void (*)(void))xmc_py_fast_unlock, METH_FASTCALL | METH_KEYWORDS,
      "unlock(address)\n--\n\n"
      "Drop one locked mapping at exactly ``address`` (QEMU's invalidate_map_cache_entry)." },
    { NULL, NULL, 0, NULL },
};

/*
 * fast_bind(address, keep, map_ptr, read, ram_addr, unlock, fail_map, fail_read)
 * -> (map_ptr, read, ram_addr, unlock) builtins over the cache at address.
 */
static PyObject *xmc_py_fast_bind(PyObject *self, PyObject *args)
{
    xmc_py_fast *f;
    PyObject *capsule, *out;
    unsigned long long address;

    (void)self;
    if (!(f = PyMem_Calloc(1, sizeof(*f))))
        return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "KOOOOOOO", &address, &f->obj[0], &f->obj[1], &f->obj[2],
                          &f->obj[3], &f->obj[4], &f->obj[5], &f->obj[6])) {
        PyMem_Free(f);
        return NULL;
    }
    f->c = (xmc_cache *)(uintptr_t)address;
    for (int i = 0; i < XMC_PY_NOBJ; i++)
        Py_INCREF(f->obj[i]);
    if (!(capsule = PyCapsule_New(f, NULL, xmc_py_fast_free))) {
        PyMem_Free(f); /* the references leak only on this out-of-memory path */
        return NULL;
    }
    out = PyTuple_New(4);
    for (int i = 0; out && i < 4; i++) {
        PyObject *fn = PyCFunction_NewEx(&xmc_py_fast_defs[i], capsule, NULL);
        if (!fn) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SetItem(out, i, fn); /* steals fn */
    }
    Py_DECREF(capsule);
    return out;
}

static PyMethodDef xmc_py_fast_bind_def = {
    "fast_bind", xmc_py_fast_bind, METH_VARARGS,
    "fast_bind(address, keep, map_ptr, read, ram_addr, unlock, fail_map, fail_read)\n--\n\n"
    "Builtins for the hot methods of the cache at address (see ffi/seam.h).",
};

/* Put fast_bind on the module xenmapcache._core; 0 on success. */
static int xmc_py_fast_install(void)
{
    PyGILState_STATE gil = PyGILState_Ensure(); /* cffi released it for this call */
    PyObject *module = PyImport_ImportModule("xenmapcache._core");
    PyObject *fn = module ? PyCFunction_NewEx(&xmc_py_fast_bind_def, NULL, NULL) : NULL;
    int rc = fn ? PyObject_SetAttrString(module, "fast_bind", fn) : -1;

    for (size_t i = 0; rc == 0 && i < XMC_PY_NNAMES; i++)
        if (!xmc_py_interned[i])
            xmc_py_interned[i] = PyUnicode_InternFromString(xmc_py_names[i]);

    if (rc)
        PyErr_Clear(); /* the caller falls back to the cffi closures */
    Py_XDECREF(fn);
    Py_XDECREF(module);
    PyGILState_Release(gil);
    return rc;
}

#else /* not built by cffi for CPython */

static int xmc_py_fast_install(void)
{
    return -1;
}

#endif /* Py_PYTHON_H */

#endif /* XMC_PYSEAM_H */
