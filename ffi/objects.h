/*
 * objects.h - the structs of the binding's Python objects, their types, and
 * how a builtin calls the core (XMC_PY_CALL).
 *
 * NativeCache (cache.h, registry.h), Mapping (mapping.h) and MappingGroup
 * (group.h) refer to each other, so their structs are all here.
 */
#ifndef XMC_PY_OBJECTS_H
#define XMC_PY_OBJECTS_H

#include "xenmapcache.h"

/*
 * The hot methods: NativeCache has a builtin for each (cache.h, mapping.h,
 * group.h), whose fallback is MapCache's checked method of the same name.
 * Python binds both by these names, from its own table
 * (xenmapcache._native.HOT_METHODS), which install() checks against this one
 * at import: a difference is an ImportError, never a wrong method.
 */
enum {
    XMC_PY_MAP_PTR,
    XMC_PY_READ,
    XMC_PY_READINTO,
    XMC_PY_WRITE,
    XMC_PY_RAM_ADDR,
    XMC_PY_UNLOCK,
    XMC_PY_MAP,
    XMC_PY_MAP_SG,
    XMC_PY_NHOT
};

static const char *const xmc_py_hot_names[XMC_PY_NHOT] = {
    [XMC_PY_MAP_PTR] = "map_ptr",   [XMC_PY_READ] = "read",     [XMC_PY_READINTO] = "readinto",
    [XMC_PY_WRITE] = "write",       [XMC_PY_RAM_ADDR] = "ram_addr", [XMC_PY_UNLOCK] = "unlock",
    [XMC_PY_MAP] = "map",           [XMC_PY_MAP_SG] = "map_sg",
};

/*
 * What the registry of a NativeCache lists: one entry per standalone Mapping
 * and one per MappingGroup (its Mappings are found through it), linked
 * through the objects themselves, oldest first.
 */
typedef struct xmc_py_node {
    struct xmc_py_node *prev, *next; /* in the cache's list while registered */
    PyObject *self;   /* the Mapping or MappingGroup this is the entry of */
    PyObject *tag;    /* the caller's name for its mappings (self's reference) */
    uint64_t id;      /* the tag id of its core records */
    Py_ssize_t live;  /* its mappings not yet released: off the list at 0 */
    char dma;
} xmc_py_node;

/* One locked mapping's state: a Mapping's own, or a slot of its group. */
typedef struct xmc_py_seg {
    unsigned long long address, paddr, size; /* address 0: in flight */
    Py_ssize_t exports; /* the buffers exported from it (memoryviews and slices) */
    char released;
} xmc_py_seg;

typedef struct xmc_py_cache {
    PyObject_HEAD
    xmc_cache *c;
    PyObject *owner;    /* owner(self): the MapCache, or its stand-in once it is gone */
    PyObject *fail;     /* fail(rc, what, paddr, size): raises */
    PyObject *checked[XMC_PY_NHOT]; /* MapCache's checked methods, by xmc_py_hot_names */
    xmc_py_node *first, *last; /* the registry: live Mappings and groups, oldest first */
    /* For tag_of: the entry being released (NULL otherwise), and {id: tag}
     * of the live entries as of registry version tag_index_version. */
    xmc_py_node *releasing;
    PyObject *tag_index;
    uint64_t version, tag_index_version;
    PyObject *after_free; /* called once the core is freed (in no cycle: never cleared) */
    PyObject *take_interrupt; /* traced: trace.take_interrupt, else NULL */
    uint64_t next_id;
    uint64_t max_size;
    uint64_t bucket_size;
    int closed;
} xmc_py_cache;

/*
 * A Mapping stands alone (made by map(): its own state, entry and cache
 * reference) or is a member of a group (made by indexing it): then its state
 * is the group's slot, and group is borrowed, since the group holds the
 * member until the group goes (see group.h), which makes a member held
 * elsewhere stand alone.  A member holds nothing, so it is never in a
 * reference cycle: it is not tracked by the GC.
 */
typedef struct xmc_py_mapping {
    PyObject_HEAD
    xmc_py_cache *cache;        /* standalone: its cache (NULL once cleared by the GC) */
    struct xmc_py_group *group; /* a member: its group (borrowed), else NULL */
    xmc_py_seg *seg;            /* &own, or the group's slot */
    xmc_py_node node;           /* standalone: its registry entry */
    xmc_py_seg own;
    PyObject *weakrefs;         /* weakref.ref(m) */
} xmc_py_mapping;

typedef struct xmc_py_group {
    PyObject_VAR_HEAD /* ob_size: how many mappings */
    xmc_py_cache *cache;
    xmc_py_node node;
    PyObject *weakrefs;            /* weakref.ref(g) */
    Py_ssize_t capacity;           /* slots allocated (a pooled group is reused for fewer) */
    xmc_py_mapping **members;      /* [capacity], after segs: each a reference, NULL until made */
    xmc_py_seg segs[];             /* [capacity] */
} xmc_py_group;

/*
 * Py_INCREF and Py_DECREF, inline.  Under the stable ABI of 3.12 both are
 * calls into libpython, some 55 of them in one `with cache.map_sg(...) as g:
 * os.preadv(fd, g, 0)`; Py_SET_REFCNT is still inline there and, with the
 * GIL, does the same arithmetic (and leaves an immortal object as it is).
 * A debug build counts every reference in a total: there, the calls.
 */
#if defined(Py_LIMITED_API) && !defined(Py_REF_DEBUG)
static inline PyObject *xmc_py_ref(PyObject *o)
{
    Py_SET_REFCNT(o, Py_REFCNT(o) + 1);
    return o;
}

static inline void xmc_py_unref(PyObject *o)
{
    if (Py_REFCNT(o) > 1)
        Py_SET_REFCNT(o, Py_REFCNT(o) - 1);
    else
        Py_DECREF(o); /* the last reference: the call, which deallocates */
}
#else
#define xmc_py_ref Py_NewRef
#define xmc_py_unref Py_DECREF
#endif

/* Py_CLEAR through xmc_py_unref. */
#define XMC_PY_CLEAR(field)                                                   \
    do {                                                                      \
        PyObject *old_ = (PyObject *)(field);                                 \
        (field) = NULL;                                                       \
        if (old_)                                                             \
            xmc_py_unref(old_);                                               \
    } while (0)

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

typedef PyObject *(*xmc_py_undo_fn)(PyObject *, PyObject *);

/*
 * After a traced cache's successful call (self->take_interrupt set): when
 * its trace hook raised an interrupt meanwhile, give back what the call
 * locked (undo(arg), or the raw lock at `raw`), raise the interrupt and
 * return 1; else 0.
 */
static int xmc_py_interrupted(xmc_py_cache *self, xmc_py_undo_fn undo, PyObject *arg,
                              const void *raw)
{
    /* (undo || raw): no event of the undo is refused (see trace.take_interrupt) */
    PyObject *exc = PyObject_CallFunctionObjArgs(self->take_interrupt,
                                                 undo || raw ? Py_True : Py_False, NULL),
             *r;
    int rc;

    if (!exc)
        return 1;
    if (exc == Py_None) {
        Py_DECREF(exc);
        return 0;
    }
    if (undo && (r = undo(arg, NULL)))
        Py_DECREF(r);
    if (raw) {
        XMC_PY_CALL(rc, xmc_unlock_tag_nowait(self->c, raw, 0), xmc_unlock_tag(self->c, raw, 0));
        (void)rc;
    }
    PyErr_Clear(); /* the undo's own failure: the interrupt is what the caller sees */
    Py_XDECREF(r = PyObject_CallNoArgs(self->take_interrupt)); /* the undo's events' own */
    PyErr_Clear();
    PyErr_SetRaisedException(exc);
    return 1;
}

#endif /* XMC_PY_OBJECTS_H */
