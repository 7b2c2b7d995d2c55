/*
 * mapping.h - Mapping: one locked mapping of guest memory, and
 * NativeCache.map, which makes it.
 *
 * A Mapping exports the host memory itself (bf_getbuffer), counts its
 * exports (a memoryview and all its slices hold one), and refuses to be
 * released, or its cache closed, while one is alive.  Each works on its
 * state through m->seg: its own, or, for a member of a group, the group's
 * slot (objects.h).
 */
#ifndef XMC_PY_MAPPING_H
#define XMC_PY_MAPPING_H

#include "fallback.h"
#include "freelist.h"
#include "parser.h"
#include "registry.h"

/* The entry m is registered by (its own, or its group's), and its cache. */
static xmc_py_node *xmc_py_mapping_entry(xmc_py_mapping *m)
{
    return m->group ? &m->group->node : &m->node;
}

static xmc_py_cache *xmc_py_mapping_cache(const xmc_py_mapping *m)
{
    return m->group ? m->group->cache : m->cache;
}

/* Unlock the mapping at address in the core; the caller has marked it released. */
static int xmc_py_unlock_mapping(xmc_py_cache *cache, unsigned long long address, uint64_t id)
{
    const void *a = (const void *)(uintptr_t)address;
    int rc;

    XMC_PY_CALL(rc, xmc_unlock_tag_nowait(cache->c, a, id), xmc_unlock_tag(cache->c, a, id));
    return rc == XMC_ECLOSED ? XMC_OK : rc; /* closed meanwhile: unmapped already */
}

/* m.release(): unlock; a second call does nothing; BufferError while views live. */
static PyObject *xmc_py_mapping_release(PyObject *op, PyObject *unused)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;
    xmc_py_cache *cache = xmc_py_mapping_cache(m);
    xmc_py_node *entry = xmc_py_mapping_entry(m);
    PyObject *holder = entry->self, *r; /* m, or its group: kept until the end */
    xmc_py_seg *seg = m->seg;
    int rc;

    (void)unused;
    if (seg->released || !cache)
        Py_RETURN_NONE;
    if (seg->exports) {
        PyErr_Format(PyExc_BufferError, "%zd memoryview(s) of the mapping are still alive",
                     seg->exports);
        return NULL;
    }
    /* Released, but its entry is on the list until the core call returns:
     * its trace event finds the tag there.  close() may take it off meanwhile. */
    seg->released = 1;
    xmc_py_ref((PyObject *)cache);
    xmc_py_ref(holder);
    cache->releasing = entry; /* for its unlock event's tag_of */
    rc = xmc_py_unlock_mapping(cache, seg->address, entry->id);
    cache->releasing = NULL;
    if (rc != XMC_OK && rc != XMC_ESYS && !cache->closed) {
        /* Still locked (a call from a backend callback, say): as it was.
         * XMC_ESYS: unlocked, but a grant entry failed to unmap (reported once). */
        seg->released = 0;
    } else {
        xmc_py_entry_done(cache, entry, 1);
    }
    r = xmc_py_released(cache, rc != XMC_OK && !cache->closed, rc, "unlock", seg->address);
    xmc_py_unref(holder); /* a group going may make m stand alone (group.h) */
    return r;
}

static PyObject *xmc_py_mapping_enter(PyObject *op, PyObject *unused)
{
    (void)unused;
    return xmc_py_ref(op);
}

static int xmc_py_mapping_getbuffer(PyObject *op, Py_buffer *view, int flags)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;
    xmc_py_seg *seg = m->seg;

    if (seg->released || !xmc_py_mapping_cache(m)) {
        PyErr_SetString(PyExc_BufferError, "the mapping was released");
        view->obj = NULL;
        return -1;
    }
    /* PyBuffer_FillInfo()'s writable bytes, inline: one call fewer per export */
    view->obj = xmc_py_ref(op);
    view->buf = (void *)(uintptr_t)seg->address;
    view->len = (Py_ssize_t)seg->size;
    view->readonly = 0;
    view->itemsize = 1;
    view->format = (flags & PyBUF_FORMAT) == PyBUF_FORMAT ? (char *)"B" : NULL;
    view->ndim = 1;
    view->shape = (flags & PyBUF_ND) == PyBUF_ND ? &view->len : NULL;
    view->strides = (flags & PyBUF_STRIDES) == PyBUF_STRIDES ? &view->itemsize : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    seg->exports++;
    return 0;
}

static void xmc_py_mapping_releasebuffer(PyObject *op, Py_buffer *view)
{
    (void)view;
    ((xmc_py_mapping *)op)->seg->exports--;
}

static PyObject *xmc_py_mapping_released(PyObject *op, void *closure)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;

    (void)closure;
    return PyBool_FromLong(m->seg->released || !xmc_py_mapping_cache(m));
}

/* The read-only attributes: a member's state is its group's. */
static PyObject *xmc_py_mapping_attr(PyObject *op, void *closure)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;
    const xmc_py_node *entry = xmc_py_mapping_entry(m);

    switch ((char)(intptr_t)closure) {
    case 'a':
        return PyLong_FromUnsignedLongLong(m->seg->address);
    case 'p':
        return PyLong_FromUnsignedLongLong(m->seg->paddr);
    case 's':
        return PyLong_FromUnsignedLongLong(m->seg->size);
    case 'd':
        return PyBool_FromLong(entry->dma);
    default:
        return Py_NewRef(entry->tag ? entry->tag : Py_None);
    }
}

static PyObject *xmc_py_mapping_repr(PyObject *op)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;
    const xmc_py_node *entry = xmc_py_mapping_entry(m);
    const xmc_py_seg *seg = m->seg;
    PyObject *state = seg->released ? PyUnicode_FromString("released")
                                    : PyUnicode_FromFormat("at 0x%llx", seg->address);
    PyObject *r = NULL;

    if (state)
        r = PyUnicode_FromFormat("<Mapping paddr=0x%llx size=0x%llx dma=%s tag=%R %U>",
                                 seg->paddr, seg->size, entry->dma ? "True" : "False",
                                 entry->tag ? entry->tag : Py_None, state);
    Py_XDECREF(state);
    return r;
}

/* A member holds nothing (and is not tracked); a standalone Mapping its cache and tag. */
static int xmc_py_mapping_traverse(PyObject *op, visitproc visit, void *arg)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;

    Py_VISIT(Py_TYPE(op));
    Py_VISIT((PyObject *)m->cache);
    Py_VISIT(m->node.tag);
    return 0;
}

static int xmc_py_mapping_clear(PyObject *op)
{
    xmc_py_mapping *m = (xmc_py_mapping *)op;

    XMC_PY_CLEAR(m->cache);
    XMC_PY_CLEAR(m->node.tag);
    return 0;
}

static xmc_py_freelist xmc_py_mapping_free;

/* A new Mapping, zeroed (tracked by the GC when track is), or NULL with an error set. */
static xmc_py_mapping *xmc_py_mapping_new(int track)
{
    return (xmc_py_mapping *)xmc_py_fl_new(&xmc_py_mapping_free, xmc_py_mapping_type,
                                           sizeof(xmc_py_mapping), track);
}

/* A Mapping's end; a member's comes only with its group's (group.h), which it never touches. */
static void xmc_py_mapping_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    if (((xmc_py_mapping *)op)->weakrefs)
        PyObject_ClearWeakRefs(op);
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
    { "__weaklistoffset__", Py_T_PYSSIZET, offsetof(xmc_py_mapping, weakrefs), Py_READONLY, NULL },
    { NULL, 0, 0, 0, NULL },
};

#define XMC_PY_ATTR(name, key, doc) { name, xmc_py_mapping_attr, NULL, doc, (void *)(intptr_t)key }
static PyGetSetDef xmc_py_mapping_getset[] = {
    XMC_PY_ATTR("address", 'a', "The host address of the mapping's first byte."),
    XMC_PY_ATTR("paddr", 'p', "The guest-physical address mapped (follows replace())."),
    XMC_PY_ATTR("size", 's', "Its length in bytes."),
    XMC_PY_ATTR("dma", 'd', "Whether it is a DMA mapping."),
    XMC_PY_ATTR("tag", 't', "The caller's name for it, listed by locked() and invalidate()."),
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
 * A new Mapping of [paddr, paddr + size), locked in the core; NULL with an
 * error set (a closed cache's too).  Registered before the core call
 * (invalidate() may list it at once); a failed call unregisters it.
 */
static PyObject *xmc_py_new_mapping(xmc_py_cache *self, uint64_t paddr, uint64_t size, int dma,
                                    PyObject *tag)
{
    unsigned flags = XMC_LOCK | (dma ? XMC_DMA : 0u);
    xmc_py_mapping *m;
    void *p = NULL;
    int rc;

    if (self->closed)
        return xmc_py_fail(self, XMC_ECLOSED, "map", paddr, size);
    if (!(m = xmc_py_mapping_new(1)))
        return NULL;
    m->cache = (xmc_py_cache *)xmc_py_ref((PyObject *)self);
    m->seg = &m->own;
    m->own.paddr = paddr;
    m->own.size = size;
    m->node.self = (PyObject *)m;
    m->node.tag = xmc_py_ref(tag);
    m->node.id = ++self->next_id;
    m->node.live = 1;
    m->node.dma = (char)dma;
    xmc_py_register(self, &m->node);
    XMC_PY_CALL(rc, xmc_map_nowait(self->c, paddr, size, flags, m->node.id, &p),
                xmc_map(self->c, paddr, size, flags, m->node.id, &p));
    if (rc == XMC_OK && p && self->closed) /* closed while we mapped: unmapped already */
        rc = XMC_ECLOSED;
    if (rc != XMC_OK || !p) {
        m->own.released = 1;
        xmc_py_entry_done(self, &m->node, 1); /* unless close_registry() took it off */
        Py_DECREF((PyObject *)m);
        return xmc_py_fail(self, rc != XMC_OK ? rc : XMC_EMAP, "map", paddr, size);
    }
    m->own.address = (unsigned long long)(uintptr_t)p;
    if (self->take_interrupt &&
        xmc_py_interrupted(self, xmc_py_mapping_release, (PyObject *)m, NULL)) {
        Py_DECREF((PyObject *)m);
        return NULL;
    }
    return (PyObject *)m;
}

/* map(paddr, size, dma=False, tag=None) -> Mapping */
static PyObject *xmc_py_map_fast(PyObject *op, PyObject *const *args, Py_ssize_t n,
                                 PyObject *kwnames)
{
    const char *const names[] = { xmc_py_names[0], xmc_py_names[1], xmc_py_names[3],
                                  xmc_py_names[6] }; /* paddr, size, dma, tag */
    xmc_py_cache *self = (xmc_py_cache *)op;
    uint64_t paddr, size;
    PyObject *a[4];
    int dma = 0;

    if (!xmc_py_args(args, n, kwnames, names, 4, a) || !a[0] || !a[1] ||
        !xmc_py_u64(a[0], &paddr) || !xmc_py_u64(a[1], &size) || size > self->max_size ||
        (size && paddr > UINT64_MAX - (size - 1)) || (a[2] && (dma = xmc_py_flag(a[2])) < 0)) {
        PyErr_Clear();
        return xmc_py_checked(self, XMC_PY_MAP, args, n, kwnames);
    }
    return xmc_py_new_mapping(self, paddr, size, dma, a[3] ? a[3] : Py_None);
}

/* mapping(paddr, size, dma, tag) -> Mapping: MapCache.map's call, with its
 * arguments checked (a TypeError here is a bug of the caller). */
static PyObject *xmc_py_mapping_checked(PyObject *op, PyObject *const *args, Py_ssize_t n)
{
    uint64_t paddr, size;

    if (n != 4 || !xmc_py_u64(args[0], &paddr) || !xmc_py_u64(args[1], &size) ||
        !PyBool_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "mapping(paddr, size, dma, tag): checked arguments");
        return NULL;
    }
    return xmc_py_new_mapping((xmc_py_cache *)op, paddr, size, args[2] == Py_True, args[3]);
}

#endif /* XMC_PY_MAPPING_H */
