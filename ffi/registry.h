/*
 * registry.h - a NativeCache's registry of live Mappings, and its methods.
 *
 * A doubly linked list through the Mappings themselves, oldest first: no
 * allocation to register or unregister one.  The list holds a reference to
 * each Mapping on it; each Mapping carries the tag id of its core record.
 */
#ifndef XMC_PY_REGISTRY_H
#define XMC_PY_REGISTRY_H

#include "objects.h"
#include "parser.h"

static PyObject *xmc_py_mapping_release(PyObject *op, PyObject *unused); /* mapping.h */

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
    cache->version++;
    Py_INCREF((PyObject *)m);
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
    cache->version++;
}

/* Mark every Mapping released and drop the list's references. */
static void xmc_py_forget_all(xmc_py_cache *self)
{
    xmc_py_mapping *m;

    while ((m = self->first)) {
        m->released = 1;
        xmc_py_unregister(self, m);
        Py_DECREF((PyObject *)m);
    }
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
    if (self->releasing && self->releasing->id == id)
        return Py_NewRef(self->releasing->tag);
    if (self->last && self->last->id == id)
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
    PyObject *idle = NULL;
    int busy = 0;

    if (address == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (!address) /* a Mapping in flight: no address yet, never a match */
        Py_RETURN_FALSE;
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
    ((xmc_py_mapping *)args[0])->paddr = paddr;
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
    xmc_py_mapping *m;

    (void)unused;
    while ((m = self->first)) {
        xmc_py_unregister(self, m);
        Py_DECREF((PyObject *)m);
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

#endif /* XMC_PY_REGISTRY_H */
