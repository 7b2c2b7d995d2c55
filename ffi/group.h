/*
 * group.h - MappingGroup: the Mappings of one map_sg() call, and
 * NativeCache.map_sg, which makes it.
 */
#ifndef XMC_PY_GROUP_H
#define XMC_PY_GROUP_H

#include "mapping.h"

/*
 * g.release(): unlock every Mapping of the group still locked, in one core
 * call, all or nothing: BufferError (nothing released) while a view of any
 * of them is alive.  A second call does nothing.
 */
static PyObject *xmc_py_group_release(PyObject *op, PyObject *unused)
{
    xmc_py_group *g = (xmc_py_group *)op;
    xmc_py_cache *cache = g->cache;
    Py_ssize_t n = Py_SIZE(op), live = 0, busy = 0;
    void *stack[16], **addrs = stack;
    xmc_py_mapping **held;
    int rc;

    (void)unused;
    if (!cache || n <= 0)
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < n; i++) {
        xmc_py_mapping *m = g->items[i];
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
        xmc_py_mapping *m = g->items[i];
        if (m->released)
            continue;
        m->released = 1;
        Py_INCREF((PyObject *)m);
        addrs[live] = (void *)(uintptr_t)m->address;
        held[live++] = m;
    }
    Py_INCREF((PyObject *)cache);
    cache->releasing = live ? held[0] : NULL; /* the batch's tag, for its unlock events */
    XMC_PY_CALL(rc, xmc_unlock_sg_nowait(cache->c, addrs, (size_t)live, g->id),
                xmc_unlock_sg(cache->c, addrs, (size_t)live, g->id));
    cache->releasing = NULL;
    if (rc == XMC_ECLOSED || cache->closed)
        rc = XMC_OK; /* closed meanwhile: unmapped already */
    for (Py_ssize_t i = 0; i < live; i++) {
        if (rc != XMC_OK && rc != XMC_ESYS) { /* nothing was unlocked: as it was */
            held[i]->released = 0;
        } else if (xmc_py_linked(cache, held[i])) {
            xmc_py_unregister(cache, held[i]);
            Py_DECREF((PyObject *)held[i]); /* the list's reference */
        }
        Py_DECREF((PyObject *)held[i]);
    }
    if (addrs != stack)
        PyMem_Free(addrs);
    return xmc_py_released(cache, rc != XMC_OK, rc, "unlock_sg", (uint64_t)live);
}

/* g.buffers() -> a list of one memoryview per Mapping, for os.preadv() and the like */
static PyObject *xmc_py_group_buffers(PyObject *op, PyObject *unused)
{
    xmc_py_group *g = (xmc_py_group *)op;
    Py_ssize_t n = Py_SIZE(op);
    PyObject *out = PyList_New(n);

    (void)unused;
    for (Py_ssize_t i = 0; out && i < n; i++) {
        PyObject *v = PyMemoryView_FromObject((PyObject *)g->items[i]);
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
    Py_ssize_t n = Py_SIZE(op);

    (void)closure;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!g->items[i]->released)
            Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

static Py_ssize_t xmc_py_group_len(PyObject *op)
{
    return Py_SIZE(op);
}

/* g[i]: the sequence slot, which os.preadv(fd, g, offset) calls once per segment */
static PyObject *xmc_py_group_item(PyObject *op, Py_ssize_t i)
{
    if (i < 0 || i >= Py_SIZE(op)) {
        PyErr_SetString(PyExc_IndexError, "MappingGroup index out of range");
        return NULL;
    }
    return Py_NewRef((PyObject *)((xmc_py_group *)op)->items[i]);
}

/* A tuple of the group's Mappings (slices, repr: not hot). */
static PyObject *xmc_py_group_tuple(PyObject *op)
{
    Py_ssize_t n = Py_SIZE(op);
    PyObject *t = PyTuple_New(n);

    for (Py_ssize_t i = 0; t && i < n; i++)
        PyTuple_SetItem(t, i, xmc_py_group_item(op, i)); /* steals it */
    return t;
}

/* g[i], g[-1], g[a:b] (a tuple) */
static PyObject *xmc_py_group_getitem(PyObject *op, PyObject *key)
{
    PyObject *t, *r;

    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return NULL;
        return xmc_py_group_item(op, i < 0 ? i + Py_SIZE(op) : i);
    }
    if (!(t = xmc_py_group_tuple(op)))
        return NULL;
    r = PyObject_GetItem(t, key);
    Py_DECREF(t);
    return r;
}

static PyObject *xmc_py_group_iter(PyObject *op)
{
    return PySeqIter_New(op);
}

static PyObject *xmc_py_group_repr(PyObject *op)
{
    PyObject *t = xmc_py_group_tuple(op), *r;

    if (!t)
        return NULL;
    r = PyUnicode_FromFormat("<MappingGroup of %zd: %R>", Py_SIZE(op), t);
    Py_DECREF(t);
    return r;
}

static int xmc_py_group_traverse(PyObject *op, visitproc visit, void *arg)
{
    xmc_py_group *g = (xmc_py_group *)op;

    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)g->cache);
    for (Py_ssize_t i = 0; i < Py_SIZE(op); i++)
        Py_VISIT((PyObject *)g->items[i]);
    return 0;
}

static int xmc_py_group_clear(PyObject *op)
{
    xmc_py_group *g = (xmc_py_group *)op;

    Py_CLEAR(g->cache); /* first: release() and the rest then do nothing */
    for (Py_ssize_t i = 0; i < Py_SIZE(op); i++)
        Py_CLEAR(g->items[i]);
    Py_SET_SIZE((PyVarObject *)op, 0); /* an empty group, if anything still sees it */
    return 0;
}

static void xmc_py_group_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);

    PyObject_GC_UnTrack(op);
    if (((xmc_py_group *)op)->weakrefs)
        PyObject_ClearWeakRefs(op);
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

static PyMemberDef xmc_py_group_members[] = {
    { "__weaklistoffset__", Py_T_PYSSIZET, offsetof(xmc_py_group, weakrefs), Py_READONLY, NULL },
    { NULL, 0, 0, 0, NULL },
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
    { Py_tp_members, xmc_py_group_members },
    { Py_sq_length, xmc_py_group_len },
    { Py_sq_item, xmc_py_group_item }, /* a sequence of buffers: os.preadv(fd, g, offset) */
    { Py_mp_length, xmc_py_group_len },
    { Py_mp_subscript, xmc_py_group_getitem },
    { 0, NULL },
};

static PyType_Spec xmc_py_group_spec = {
    "xenmapcache._core.MappingGroup", sizeof(xmc_py_group), sizeof(xmc_py_mapping *),
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    xmc_py_group_slots,
};

/*
 * A new MappingGroup: one Mapping per (paddr, size) of segments, an exact
 * list or tuple of 1 to XMC_SG_MAX exact tuples of two ints in range, mapped
 * in one core call, all or nothing; NULL with an error set (a closed
 * cache's too).  They share one tag id (the core's batch takes one), so
 * locked() names each by the group's tag.  *refused (no error set) when
 * segments are not such a sequence: only the checked method says why.
 */
static PyObject *xmc_py_new_group(xmc_py_cache *self, PyObject *segments, int dma, PyObject *tag,
                                  int *refused)
{
    xmc_sg segstack[16], *segs = segstack;
    void *outstack[16], **out = outstack;
    xmc_py_group *g = NULL;
    Py_ssize_t n = 0;
    int rc = XMC_OK, ok;
    uint64_t id;

    *refused = 0;
    ok = (PyList_CheckExact(segments) || PyTuple_CheckExact(segments)) &&
         (n = PyObject_Length(segments)) > 0 && n <= XMC_SG_MAX;
    if (ok && n > 16) {
        segs = PyMem_Malloc((size_t)n * sizeof(*segs));
        out = PyMem_Malloc((size_t)n * sizeof(*out));
        if (!segs || !out) {
            PyErr_NoMemory();
            goto out;
        }
    }
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        PyObject *seg = PyList_CheckExact(segments) ? PyList_GetItem(segments, i)
                                                    : PyTuple_GetItem(segments, i);
        ok = seg && xmc_py_segment(seg, self->max_size, &segs[i]);
    }
    if (!ok) {
        *refused = 1;
        PyErr_Clear();
        goto out;
    }
    if (self->closed) {
        xmc_py_fail(self, XMC_ECLOSED, "map_sg", (uint64_t)n, 0);
        goto out;
    }
    id = ++self->next_id;
    if (!(g = (xmc_py_group *)PyType_GenericAlloc(xmc_py_group_type, n))) /* no cache: inert */
        goto out;
    for (Py_ssize_t i = 0; i < n; i++) {
        xmc_py_mapping *m = g->items[i] = xmc_py_mapping_new();
        if (!m)
            goto fail;
        m->id = id;
        m->cache = (xmc_py_cache *)Py_NewRef((PyObject *)self);
        m->tag = Py_NewRef(tag);
        m->paddr = segs[i].paddr;
        m->size = segs[i].size;
        m->dma = (char)dma;
        m->released = 1; /* until registered */
    }
    for (Py_ssize_t i = 0; i < n; i++) { /* before the call: invalidate() may list them */
        xmc_py_mapping *m = g->items[i];
        m->released = 0;
        xmc_py_register(self, m);
    }
    XMC_PY_CALL(rc, xmc_map_sg_nowait(self->c, segs, (size_t)n, dma ? XMC_DMA : 0u, id, out),
                xmc_map_sg(self->c, segs, (size_t)n, dma ? XMC_DMA : 0u, id, out));
    if (rc == XMC_OK && self->closed)
        rc = XMC_ECLOSED; /* closed while we mapped: unmapped already */
    for (Py_ssize_t i = 0; i < n; i++) {
        xmc_py_mapping *m = g->items[i];
        if (rc == XMC_OK) {
            m->address = (unsigned long long)(uintptr_t)out[i];
        } else if (!m->released) { /* else close_registry() took it off */
            m->released = 1;
            xmc_py_unregister(self, m);
            Py_DECREF((PyObject *)m);
        }
    }
    if (rc != XMC_OK) {
        xmc_py_fail(self, rc, "map_sg", (uint64_t)n, 0);
        goto fail;
    }
    g->cache = (xmc_py_cache *)Py_NewRef((PyObject *)self);
    g->id = id;
    goto out;
fail: /* not a group */
    Py_CLEAR(g);
out:
    if (segs != segstack)
        PyMem_Free(segs);
    if (out != outstack)
        PyMem_Free(out);
    if (g && self->take_interrupt &&
        xmc_py_interrupted(self, xmc_py_group_release, (PyObject *)g, NULL))
        Py_CLEAR(g);
    return (PyObject *)g;
}

/* map_sg(segments, dma=False, tag=None) -> MappingGroup */
static PyObject *xmc_py_map_sg_fast(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    const char *const names[] = { xmc_py_names[8], xmc_py_names[3],
                                  xmc_py_names[6] }; /* segments, dma, tag */
    xmc_py_cache *self = (xmc_py_cache *)op;
    PyObject *a[3], *g;
    int dma = 0, refused = 1;

    if (xmc_py_args(args, nargs, kwnames, names, 3, a) && a[0] &&
        (!a[1] || (dma = xmc_py_flag(a[1])) >= 0) &&
        ((g = xmc_py_new_group(self, a[0], dma, a[2] ? a[2] : Py_None, &refused)) || !refused))
        return g;
    PyErr_Clear();
    return xmc_py_checked(self, XMC_PY_MAP_SG, args, nargs, kwnames);
}

/* group(segments, dma, tag) -> MappingGroup: MapCache.map_sg's call, with
 * its arguments checked (a TypeError here is a bug of the caller). */
static PyObject *xmc_py_group_checked(PyObject *op, PyObject *const *args, Py_ssize_t n)
{
    PyObject *g = NULL;
    int refused = 1;

    if (n == 3 && PyBool_Check(args[1]) &&
        ((g = xmc_py_new_group((xmc_py_cache *)op, args[0], args[1] == Py_True, args[2],
                               &refused)) || !refused))
        return g;
    PyErr_SetString(PyExc_TypeError, "group(segments, dma, tag): checked arguments");
    return NULL;
}

#endif /* XMC_PY_GROUP_H */
