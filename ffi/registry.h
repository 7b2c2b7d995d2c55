/*
 * registry.h - a NativeCache's registry of live Mappings, and its methods.
 *
 * A doubly linked list of entries (objects.h: xmc_py_node) kept in the
 * objects themselves, oldest first: one per standalone Mapping and one per
 * MappingGroup, whose member Mappings are found through it.  No allocation
 * to register or unregister one; the list holds a reference to each object
 * on it, and each entry carries the tag id of its core records.
 */
#ifndef XMC_PY_REGISTRY_H
#define XMC_PY_REGISTRY_H

#include "objects.h"
#include "parser.h"

static PyObject *xmc_py_mapping_release(PyObject *op, PyObject *unused); /* mapping.h */
static inline PyObject *xmc_py_group_member(xmc_py_group *g, Py_ssize_t i); /* group.h */

/* The group whose entry e is, or NULL (a standalone Mapping's). */
static xmc_py_group *xmc_py_entry_group(const xmc_py_node *e)
{
    return Py_TYPE(e->self) == xmc_py_group_type ? (xmc_py_group *)e->self : NULL;
}

/* The mappings of entry e, *n of them: its group's slots, or the Mapping's own. */
static xmc_py_seg *xmc_py_entry_segs(const xmc_py_node *e, Py_ssize_t *n)
{
    xmc_py_group *g = xmc_py_entry_group(e);

    *n = g ? Py_SIZE((PyObject *)g) : 1;
    return g ? g->segs : ((xmc_py_mapping *)e->self)->seg;
}

/* Put e at the end of the cache's list, which holds a reference to its object. */
static void xmc_py_register(xmc_py_cache *cache, xmc_py_node *e)
{
    e->prev = cache->last;
    e->next = NULL;
    if (cache->last)
        cache->last->next = e;
    else
        cache->first = e;
    cache->last = e;
    cache->version++;
    xmc_py_ref(e->self);
}

/* Whether e is on the cache's list. */
static int xmc_py_linked(const xmc_py_cache *cache, const xmc_py_node *e)
{
    return e->prev || e->next || cache->first == e;
}

/* Take e off the list; the caller gets the list's reference. */
static void xmc_py_unregister(xmc_py_cache *cache, xmc_py_node *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        cache->first = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        cache->last = e->prev;
    e->prev = e->next = NULL;
    cache->version++;
}

/* n mappings of entry e were released (or refused): on the list, the entry
 * goes once none of its mappings is left, and with it the list's reference. */
static inline void xmc_py_entry_done(xmc_py_cache *cache, xmc_py_node *e, Py_ssize_t n)
{
    if (xmc_py_linked(cache, e) && (e->live -= n) <= 0) {
        xmc_py_unregister(cache, e);
        xmc_py_unref(e->self);
    }
}

/* Mark every mapping released and drop the list's references. */
static void xmc_py_forget_all(xmc_py_cache *self)
{
    xmc_py_node *e;
    xmc_py_seg *segs;
    Py_ssize_t n;

    while ((e = self->first)) {
        segs = xmc_py_entry_segs(e, &n);
        for (Py_ssize_t i = 0; i < n; i++)
            segs[i].released = 1;
        e->live = 0;
        xmc_py_unregister(self, e);
        Py_DECREF(e->self);
    }
}

/* tags() -> {tag id: tag} of the live Mappings (for locked() and invalidate()) */
static PyObject *xmc_py_tags(PyObject *op, PyObject *unused)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    PyObject *out = PyDict_New();

    (void)unused;
    for (xmc_py_node *e = self->first; out && e; e = e->next) {
        PyObject *key = PyLong_FromUnsignedLongLong(e->id);

        if (!key || PyDict_SetItem(out, key, e->tag ? e->tag : Py_None) < 0)
            Py_CLEAR(out);
        Py_XDECREF(key);
    }
    return out;
}

/*
 * tag_of(id) -> the tag of a live Mapping with that tag id, or None (for
 * trace events).  O(1) per event: a map's Mapping (or batch) is the newest,
 * a release's is the one being released, and the events of one call that
 * name others (invalidate's, one per DMA mapping in flight) share one index
 * of the registry, rebuilt only when it changed.
 */
static PyObject *xmc_py_tag_of(PyObject *op, PyObject *arg)
{
    xmc_py_cache *self = (xmc_py_cache *)op;
    unsigned long long id = PyLong_AsUnsignedLongLong(arg);
    PyObject *tag;

    if (id == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (self->releasing && self->releasing->id == id && self->releasing->tag)
        return Py_NewRef(self->releasing->tag);
    if (self->last && self->last->id == id && self->last->tag)
        return Py_NewRef(self->last->tag);
    if (!self->tag_index || self->tag_index_version != self->version) {
        PyObject *index = xmc_py_tags(op, NULL);

        if (!index)
            return NULL;
        Py_XSETREF_COMPAT(self->tag_index, index);
        self->tag_index_version = self->version;
    }
    tag = PyDict_GetItemWithError(self->tag_index, arg); /* borrowed */
    if (!tag && PyErr_Occurred())
        return NULL;
    return Py_NewRef(tag ? tag : Py_None);
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
    xmc_py_node *idle = NULL;
    Py_ssize_t at = 0, n;
    PyObject *m, *r;
    int busy = 0;

    if (address == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (!address) /* a Mapping in flight: no address yet, never a match */
        Py_RETURN_FALSE;
    for (xmc_py_node *e = self->first; e; e = e->next) {
        xmc_py_seg *segs = xmc_py_entry_segs(e, &n);

        for (Py_ssize_t i = 0; i < n; i++) {
            if (segs[i].address != address || segs[i].released)
                continue;
            if (segs[i].exports) {
                busy = 1;
            } else {
                idle = e;
                at = i;
            }
        }
    }
    if (idle) {
        xmc_py_group *g = xmc_py_entry_group(idle);
        PyObject *holder = Py_NewRef(idle->self); /* making a member may run any code */

        m = g ? xmc_py_group_member(g, at) : Py_NewRef(holder);
        Py_DECREF(holder);
        if (!m)
            return NULL;
        r = xmc_py_mapping_release(m, NULL);
        Py_DECREF(m);
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

/*
 * mappings() -> list of the live Mappings, oldest first (a group's: each not
 * released).  Making a group's members may run the GC, and so any code:
 * the entries are taken (and held) first, their members made after.
 */
static PyObject *xmc_py_mappings(PyObject *op, PyObject *unused)
{
    PyObject *entries = PyList_New(0), *out = NULL, *m;
    Py_ssize_t n;

    (void)unused;
    for (xmc_py_node *e = ((xmc_py_cache *)op)->first; entries && e; e = e->next)
        if (PyList_Append(entries, e->self) < 0)
            Py_CLEAR(entries);
    if (!entries || !(out = PyList_New(0)))
        goto done;
    for (Py_ssize_t k = 0; out && k < PyList_Size(entries); k++) {
        PyObject *self = PyList_GetItem(entries, k);
        xmc_py_group *g = Py_TYPE(self) == xmc_py_group_type ? (xmc_py_group *)self : NULL;

        n = g ? Py_SIZE(self) : 1;
        for (Py_ssize_t i = 0; out && i < n; i++) {
            if (g && g->segs[i].released)
                continue;
            if (!(m = g ? xmc_py_group_member(g, i) : Py_NewRef(self)) || PyList_Append(out, m) < 0)
                Py_CLEAR(out);
            Py_XDECREF(m);
        }
    }
done:
    Py_XDECREF(entries);
    return out;
}

/* set_after_free(fn): fn() is called once the core is freed */
static PyObject *xmc_py_set_after_free(PyObject *op, PyObject *fn)
{
    xmc_py_cache *self = (xmc_py_cache *)op;

    Py_XSETREF_COMPAT(self->after_free, Py_NewRef(fn));
    Py_RETURN_NONE;
}

/* set_take_interrupt(fn): see xmc_py_interrupted() */
static PyObject *xmc_py_set_take_interrupt(PyObject *op, PyObject *fn)
{
    Py_XSETREF_COMPAT(((xmc_py_cache *)op)->take_interrupt, Py_NewRef(fn));
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
    ((xmc_py_mapping *)args[0])->seg->paddr = paddr;
    Py_RETURN_NONE;
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
    xmc_py_node *e;

    (void)unused;
    while ((e = self->first)) {
        xmc_py_unregister(self, e);
        Py_DECREF(e->self);
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
    Py_ssize_t busy = 0, n;

    (void)unused;
    for (xmc_py_node *e = self->first; e; e = e->next) {
        xmc_py_seg *segs = xmc_py_entry_segs(e, &n);

        for (Py_ssize_t i = 0; i < n; i++)
            busy += segs[i].exports != 0;
    }
    if (busy) {
        PyErr_Format(PyExc_BufferError, "%zd mapping(s) still have memoryviews alive", busy);
        return NULL;
    }
    self->closed = 1;
    xmc_py_forget_all(self);
    Py_RETURN_NONE;
}

#endif /* XMC_PY_REGISTRY_H */
