/*
 * cache.h - NativeCache: one xmc_cache, the builtins of its hot methods, its
 * life cycle, and its handing over from cffi (xmc_py_adopt).
 *
 * map and map_sg are in mapping.h and group.h with the types they make; the
 * registry's methods are in registry.h.
 */
#ifndef XMC_PY_CACHE_H
#define XMC_PY_CACHE_H

#include "group.h"
#include "mapping.h"
#include "registry.h"

#define XMC_PY_FAST_READ_MAX ((Py_ssize_t)1 << 24) /* a longer read() goes to the checked method */
#define XMC_PY_HOLD_GIL_MAX 4096 /* a copy up to a page may keep the GIL */

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
    if (self->take_interrupt && xmc_py_interrupted(self, NULL, NULL, flags & XMC_LOCK ? p : NULL))
        return NULL;
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
    if (self->take_interrupt && xmc_py_interrupted(self, NULL, NULL, NULL)) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
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
    if (self->take_interrupt && xmc_py_interrupted(self, NULL, NULL, NULL))
        return NULL;
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
    if (self->take_interrupt && xmc_py_interrupted(self, NULL, NULL, NULL))
        return NULL;
    Py_RETURN_NONE;
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
    if (self->take_interrupt && xmc_py_interrupted(self, NULL, NULL, NULL))
        return NULL;
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
    if (rc == XMC_ESYS /* unlocked, but a grant entry failed to unmap: never retried */ ||
        rc == XMC_ECLOSED)
        return xmc_py_fail(self, rc, "unlock", (uint64_t)(uintptr_t)a, 0);
    if (rc != XMC_OK) /* nothing done (no raw lock there, say): the checked method tries Mappings */
        return xmc_py_checked(self, XMC_PY_UNLOCK, args, n, kwnames);
    if (self->take_interrupt && xmc_py_interrupted(self, NULL, NULL, NULL))
        return NULL;
    Py_RETURN_NONE;
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

static int xmc_py_document_hot(PyObject *const *checked); /* below the method table */

/*
 * bind(owner, fail, max_size, bucket_size, checked): owner(this cache) is
 * the MapCache, or its stand-in once it is gone; fail(rc, what, paddr, size)
 * raises; checked is {name: MapCache's checked method} for each name of
 * xmc_py_hot_names, no more.
 */
static PyObject *xmc_py_bind(PyObject *op, PyObject *args)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    PyObject *owner, *fail, *checked, *fn[XMC_PY_NHOT];
    unsigned long long max_size, bucket_size;

    if (!PyArg_ParseTuple(args, "OOKKO!", &owner, &fail, &max_size, &bucket_size, &PyDict_Type,
                          &checked))
        return NULL;
    if (self->owner || !bucket_size || (bucket_size & (bucket_size - 1))) {
        PyErr_SetString(PyExc_ValueError, "bind() once, with a power-of-two bucket size");
        return NULL;
    }
    for (int i = 0; i < XMC_PY_NHOT; i++)
        if (!(fn[i] = PyDict_GetItemString(checked, xmc_py_hot_names[i]))) { /* borrowed */
            PyErr_Format(PyExc_TypeError, "bind(): no checked method for %s", xmc_py_hot_names[i]);
            return NULL;
        }
    if (PyDict_Size(checked) != XMC_PY_NHOT) {
        PyErr_Format(PyExc_TypeError, "bind(): checked methods for other names than the builtins'");
        return NULL;
    }
    if (xmc_py_document_hot(fn) < 0)
        return NULL;
    self->owner = Py_NewRef(owner);
    self->fail = Py_NewRef(fail);
    for (int i = 0; i < XMC_PY_NHOT; i++)
        self->checked[i] = Py_NewRef(fn[i]);
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
    for (int i = 0; i < XMC_PY_NHOT; i++)
        Py_VISIT(self->checked[i]);
    for (xmc_py_node *e = self->first; e; e = e->next)
        Py_VISIT(e->self);
    Py_VISIT(self->tag_index);
    Py_VISIT(self->take_interrupt);
    return 0;
}

static int xmc_py_cache_clear(PyObject *op)
{
    xmc_py_cache *self = (xmc_py_cache *)op;

    Py_CLEAR(self->owner);
    Py_CLEAR(self->fail);
    for (int i = 0; i < XMC_PY_NHOT; i++)
        Py_CLEAR(self->checked[i]);
    Py_CLEAR(self->tag_index);
    Py_CLEAR(self->take_interrupt);
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
    { "mapping", (PyCFunction)(void (*)(void))xmc_py_mapping_checked, METH_FASTCALL,
      "mapping(paddr, size, dma, tag)\n--\n\nMap for MapCache.map, its arguments checked." },
    { "group", (PyCFunction)(void (*)(void))xmc_py_group_checked, METH_FASTCALL,
      "group(segments, dma, tag)\n--\n\nMap for MapCache.map_sg, its arguments checked." },
    { "set_after_free", xmc_py_set_after_free, METH_O,
      "set_after_free(fn)\n--\n\nCall fn() once the core is freed." },
    { "set_take_interrupt", xmc_py_set_take_interrupt, METH_O,
      "set_take_interrupt(fn)\n--\n\nA traced cache: after each call, raise what fn() returns "
      "(an interrupt its trace hook raised), having given back what the call locked." },
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
      "bind(owner, fail, max_size, bucket_size, checked)\n--\n\n"
      "Set the MapCache and its checked methods, {name: method}." },
    { "__reduce__", (PyCFunction)(void (*)(void))xmc_py_refuse_copy, METH_FASTCALL, NULL },
    { NULL, NULL, 0, NULL },
};

/* The entry of xmc_py_cache_methods named name, or NULL. */
static PyMethodDef *xmc_py_cache_method(const char *name)
{
    for (PyMethodDef *def = xmc_py_cache_methods; def->ml_name; def++)
        if (!strcmp(def->ml_name, name))
            return def;
    return NULL;
}

/*
 * The doc of each hot method's builtin: its signature, then the whole
 * docstring of the checked method it falls back on, so that help(cache.map)
 * on an instance says what map raises.  Set once, by the first bind(), and
 * kept as long as the type (the process): a builtin's __doc__ is read from
 * its PyMethodDef at each access.
 */
static int xmc_py_document_hot(PyObject *const *checked)
{
    static int done;

    for (int i = 0; !done && i < XMC_PY_NHOT; i++) {
        PyMethodDef *def = xmc_py_cache_method(xmc_py_hot_names[i]);
        const char *end = def && def->ml_doc ? strstr(def->ml_doc, "\n--\n\n") : NULL;
        PyObject *doc = PyObject_GetAttrString(checked[i], "__doc__");
        const char *text;
        Py_ssize_t len;
        size_t sig;
        char *out;

        if (!doc)
            return -1;
        text = end && PyUnicode_Check(doc) ? PyUnicode_AsUTF8AndSize(doc, &len) : NULL;
        if (text) {
            sig = (size_t)(end - def->ml_doc) + 5; /* through "\n--\n\n" */
            if (!(out = PyMem_Malloc(sig + (size_t)len + 1))) {
                Py_DECREF(doc);
                PyErr_NoMemory();
                return -1;
            }
            memcpy(out, def->ml_doc, sig);
            memcpy(out + sig, text, (size_t)len + 1);
            def->ml_doc = out;
        }
        Py_DECREF(doc);
        if (!text && PyErr_Occurred())
            return -1;
    }
    done = 1;
    return 0;
}

static PyType_Slot xmc_py_cache_slots[] = {
    { Py_tp_doc, "One xmc_cache, its hot calls and its registry of Mappings (ffi/cache.h)." },
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

#endif /* XMC_PY_CACHE_H */
