/*
 * group.h - MappingGroup: the mappings of one map_sg() call, and
 * NativeCache.map_sg, which makes it.
 *
 * A group keeps its mappings' state in slots of its own (objects.h), is one
 * entry of the registry, and makes its member Mappings only when asked
 * (g[i], iteration, os.preadv(fd, g, offset)), once each: a member refers
 * to its slot and, borrowed, to the group, which holds it.  When the group
 * goes, a member held elsewhere is made to stand alone (its state copied, a
 * reference to the cache and tag of its own); the others stay with the
 * group, which is kept for reuse (up to XMC_PY_POOL of them), so a group
 * costs no allocation at all once its members were made.
 */
#ifndef XMC_PY_GROUP_H
#define XMC_PY_GROUP_H

#include "mapping.h"

#define XMC_PY_POOL 8           /* groups kept for reuse, their members with them */
#define XMC_PY_POOL_LARGEST 64  /* the most slots of a group kept */

static struct {
    xmc_py_group *items[XMC_PY_POOL];
    int n;
} xmc_py_pool;

/* A group of n slots, tracked, with no state set; NULL with an error set. */
static xmc_py_group *xmc_py_group_alloc(Py_ssize_t n)
{
    Py_ssize_t capacity = n;
    xmc_py_group *g;

    for (int k = xmc_py_pool.n; k-- > 0;) {
        g = xmc_py_pool.items[k];
        if (g->capacity < n)
            continue;
        xmc_py_pool.items[k] = xmc_py_pool.items[--xmc_py_pool.n];
        PyObject_Init((PyObject *)g, xmc_py_group_type);
        Py_SET_SIZE((PyVarObject *)g, n);
        PyObject_GC_Track((PyObject *)g);
        return g;
    }
    if (n <= XMC_PY_POOL_LARGEST) /* a size others can reuse */
        for (capacity = 4; capacity < n; capacity *= 2)
            ;
    g = (xmc_py_group *)PyType_GenericAlloc(xmc_py_group_type, capacity); /* zeroed */
    if (!g)
        return NULL;
    g->capacity = capacity;
    g->members = (xmc_py_mapping **)(g->segs + capacity);
    Py_SET_SIZE((PyVarObject *)g, n);
    return g;
}

/* Member i of g, made the first time it is asked for: a new reference. */
static PyObject *xmc_py_group_member_make(xmc_py_group *g, Py_ssize_t i)
{
    xmc_py_mapping *m = xmc_py_mapping_new(0);

    if (!m)
        return NULL;
    m->group = g;
    m->seg = &g->segs[i];
    g->members[i] = m;
    return xmc_py_ref((PyObject *)m);
}

/* Member i of g (a new reference), made the first time. */
static inline PyObject *xmc_py_group_member(xmc_py_group *g, Py_ssize_t i)
{
    xmc_py_mapping *m = g->members[i];

    return m ? xmc_py_ref((PyObject *)m) : xmc_py_group_member_make(g, i);
}

/* g is going and something else can reach its member m: m stands alone from
 * now on, its state copied, the cache and tag its own references. */
static void xmc_py_member_leave(xmc_py_group *g, xmc_py_mapping *m)
{
    m->own = *m->seg;
    m->seg = &m->own;
    m->cache = (xmc_py_cache *)Py_XNewRef((PyObject *)g->cache);
    m->node.self = (PyObject *)m;
    m->node.tag = Py_XNewRef(g->node.tag);
    m->node.id = g->node.id;
    m->node.live = !m->own.released;
    m->node.dma = g->node.dma;
    m->group = NULL;
    PyObject_GC_Track((PyObject *)m); /* it holds references now */
}

/*
 * g.release(): unlock every mapping of the group still locked, in one core
 * call, all or nothing: BufferError (nothing released) while a view of any
 * of them is alive.  A second call does nothing.
 */
static PyObject *xmc_py_group_release(PyObject *op, PyObject *unused)
{
    xmc_py_group *g = (xmc_py_group *)op;
    xmc_py_cache *cache = g->cache;
    Py_ssize_t n = Py_SIZE(op), live = 0, busy = 0, istack[16], *idx = istack;
    void *astack[16], **addrs = astack;
    PyObject *r;
    int rc;

    (void)unused;
    if (!cache)
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < n; i++) {
        live += !g->segs[i].released;
        busy += !g->segs[i].released && g->segs[i].exports;
    }
    if (busy) {
        PyErr_Format(PyExc_BufferError, "memoryviews of %zd mapping(s) of the group are still alive",
                     busy);
        return NULL;
    }
    if (!live)
        Py_RETURN_NONE;
    if (live > 16) {
        addrs = PyMem_Malloc((size_t)live * sizeof(*addrs));
        idx = PyMem_Malloc((size_t)live * sizeof(*idx));
        if (!addrs || !idx) {
            PyMem_Free(addrs);
            PyMem_Free(idx);
            return PyErr_NoMemory();
        }
    }
    live = 0;
    for (Py_ssize_t i = 0; i < n; i++) { /* released; on the list until the call returns */
        if (g->segs[i].released)
            continue;
        g->segs[i].released = 1;
        addrs[live] = (void *)(uintptr_t)g->segs[i].address;
        idx[live++] = i;
    }
    xmc_py_ref((PyObject *)cache);
    xmc_py_ref(op);
    cache->releasing = &g->node; /* the batch's tag, for its unlock events */
    XMC_PY_CALL(rc, xmc_unlock_sg_nowait(cache->c, addrs, (size_t)live, g->node.id),
                xmc_unlock_sg(cache->c, addrs, (size_t)live, g->node.id));
    cache->releasing = NULL;
    if (rc == XMC_ECLOSED || cache->closed)
        rc = XMC_OK; /* closed meanwhile: unmapped already */
    if (rc != XMC_OK && rc != XMC_ESYS) { /* nothing was unlocked: as it was */
        for (Py_ssize_t i = 0; i < live; i++)
            g->segs[idx[i]].released = 0;
    } else {
        xmc_py_entry_done(cache, &g->node, live);
    }
    if (addrs != astack) {
        PyMem_Free(addrs);
        PyMem_Free(idx);
    }
    r = xmc_py_released(cache, rc != XMC_OK, rc, "unlock_sg", (uint64_t)live);
    xmc_py_unref(op);
    return r;
}

/* g.buffers() -> a list of one memoryview per Mapping, for os.preadv() and the like */
static PyObject *xmc_py_group_buffers(PyObject *op, PyObject *unused)
{
    Py_ssize_t n = Py_SIZE(op);
    PyObject *out = PyList_New(n), *m, *v;

    (void)unused;
    for (Py_ssize_t i = 0; out && i < n; i++) {
        v = (m = xmc_py_group_member((xmc_py_group *)op, i)) ? PyMemoryView_FromObject(m) : NULL;
        Py_XDECREF(m);
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

    (void)closure;
    for (Py_ssize_t i = 0; g->cache && i < Py_SIZE(op); i++)
        if (!g->segs[i].released)
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
    return xmc_py_group_member((xmc_py_group *)op, i);
}

/* A tuple of the group's Mappings (slices, repr: not hot). */
static PyObject *xmc_py_group_tuple(PyObject *op)
{
    Py_ssize_t n = Py_SIZE(op);
    PyObject *t = PyTuple_New(n), *m;

    for (Py_ssize_t i = 0; t && i < n; i++)
        if (!(m = xmc_py_group_item(op, i)) || PyTuple_SetItem(t, i, m) < 0) /* steals m */
            Py_CLEAR(t);
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

/* Its members hold nothing: they are in no cycle (and not tracked). */
static int xmc_py_group_traverse(PyObject *op, visitproc visit, void *arg)
{
    xmc_py_group *g = (xmc_py_group *)op;

    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)g->cache);
    Py_VISIT(g->node.tag);
    return 0;
}

static int xmc_py_group_clear(PyObject *op)
{
    xmc_py_group *g = (xmc_py_group *)op;

    XMC_PY_CLEAR(g->cache); /* first: release() and the rest then do nothing */
    XMC_PY_CLEAR(g->node.tag);
    return 0;
}

/*
 * Members someone else can reach (held, or through a weak reference) stand
 * alone first, before any Python code can run (a weak reference's callback, a
 * tag's or the cache's end), so that none of that code finds g going; the
 * rest, which only g holds, stay with it into the pool, or go with it.
 */
static void xmc_py_group_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    xmc_py_group *g = (xmc_py_group *)op;
    xmc_py_mapping *m;
    int left = 0; /* whether a member stands alone now */

    PyObject_GC_UnTrack(op);
    for (Py_ssize_t i = 0; i < g->capacity; i++)
        if ((m = g->members[i]) && (Py_REFCNT((PyObject *)m) > 1 || m->weakrefs)) {
            xmc_py_member_leave(g, m);
            left = 1;
        }
    for (Py_ssize_t i = 0; left && i < g->capacity; i++)
        if ((m = g->members[i]) && !m->group) {
            g->members[i] = NULL;
            Py_DECREF((PyObject *)m);
        }
    if (g->weakrefs)
        PyObject_ClearWeakRefs(op);
    xmc_py_group_clear(op);
    if (g->capacity <= XMC_PY_POOL_LARGEST && xmc_py_pool.n < XMC_PY_POOL) {
        xmc_py_pool.items[xmc_py_pool.n++] = g;
    } else {
        for (Py_ssize_t i = 0; i < g->capacity; i++)
            Py_CLEAR(g->members[i]);
        PyObject_GC_Del(op);
    }
    xmc_py_unref((PyObject *)tp);
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
    "xenmapcache._core.MappingGroup", sizeof(xmc_py_group),
    sizeof(xmc_py_seg) + sizeof(xmc_py_mapping *), /* per slot: its state and its member */
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

    *refused = 0;
    ok = (PyList_CheckExact(segments) || PyTuple_CheckExact(segments)) &&
         (n = Py_SIZE(segments)) > 0 && n <= XMC_SG_MAX; /* their length, inline */
    if (ok && n > 16) {
        segs = PyMem_Malloc((size_t)n * sizeof(*segs));
        out = PyMem_Malloc((size_t)n * sizeof(*out));
        if (!segs || !out) {
            PyErr_NoMemory();
            goto out;
        }
    }
    if (!ok || !xmc_py_segments(segments, n, self->max_size, segs)) {
        *refused = 1;
        PyErr_Clear();
        goto out;
    }
    if (self->closed) {
        xmc_py_fail(self, XMC_ECLOSED, "map_sg", (uint64_t)n, 0);
        goto out;
    }
    if (!(g = xmc_py_group_alloc(n)))
        goto out;
    g->cache = (xmc_py_cache *)xmc_py_ref((PyObject *)self);
    g->weakrefs = NULL;
    g->node = (xmc_py_node){ .self = (PyObject *)g, .tag = xmc_py_ref(tag), .id = ++self->next_id,
                             .live = n, .dma = (char)dma };
    for (Py_ssize_t i = 0; i < n; i++)
        g->segs[i] = (xmc_py_seg){ .paddr = segs[i].paddr, .size = segs[i].size };
    xmc_py_register(self, &g->node); /* before the call: invalidate() may list them */
    XMC_PY_CALL(rc, xmc_map_sg_nowait(self->c, segs, (size_t)n, dma ? XMC_DMA : 0u, g->node.id, out),
                xmc_map_sg(self->c, segs, (size_t)n, dma ? XMC_DMA : 0u, g->node.id, out));
    if (rc == XMC_OK && self->closed)
        rc = XMC_ECLOSED; /* closed while we mapped: unmapped already */
    if (rc != XMC_OK) {
        for (Py_ssize_t i = 0; i < n; i++)
            g->segs[i].released = 1;
        xmc_py_entry_done(self, &g->node, n); /* unless close_registry() took it off */
        Py_CLEAR(g);
        xmc_py_fail(self, rc, "map_sg", (uint64_t)n, 0);
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        g->segs[i].address = (unsigned long long)(uintptr_t)out[i];
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
