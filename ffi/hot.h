/*
 * hot.h - MapCache's hot methods on MapCache itself (CPython): its base
 * FastCache, which holds each cache's NativeCache, and a method descriptor
 * of MapCache for each hot method.
 *
 * `cache.map_ptr(p)` must cost the builtin's call and no more.  CPython
 * specialises a method descriptor of the object's exact type on an object
 * without an instance dict (MapCache has __slots__): the lookup makes no
 * object and the call is the C function's, given the cache.  That function
 * calls the C function of the cache's builtin on its NativeCache; a cache
 * without one (the reference's, or one made without the builtins) gets
 * MapCache's method of the same name.  So every cache is of its own class
 * (`type(cache) is MapCache`), a subclass's own method wins as any method
 * does, and `cache.read`, like any bound method, holds its cache.
 */
#ifndef XMC_PY_HOT_H
#define XMC_PY_HOT_H

#include "cache.h"

typedef struct {
    PyObject_HEAD
    PyObject *native; /* the cache's NativeCache, or NULL: no builtins */
} xmc_py_fast;

typedef PyObject *(*xmc_py_fastfn)(PyObject *self, PyObject *const *args, Py_ssize_t n,
                                   PyObject *kwnames);

static PyTypeObject *xmc_py_fast_type;
static PyObject *xmc_py_hot_funcs[XMC_PY_NHOT]; /* MapCache's methods, by xmc_py_hot_names */
static PyMethodDef xmc_py_hot_defs[XMC_PY_NHOT];

/* MapCache's method i, for a cache without builtins: self prepended. */
static PyObject *xmc_py_hot_method(int i, PyObject *self, PyObject *const *args, Py_ssize_t n,
                                   PyObject *kwnames)
{
    Py_ssize_t total = n + (kwnames ? PyTuple_Size(kwnames) : 0);
    PyObject *stack[8], **buf = stack, *r;

    if (total + 1 > (Py_ssize_t)(sizeof(stack) / sizeof(stack[0])) &&
        !(buf = PyMem_Malloc((size_t)(total + 1) * sizeof(*buf))))
        return PyErr_NoMemory();
    buf[0] = self;
    for (Py_ssize_t k = 0; k < total; k++)
        buf[k + 1] = args[k];
    r = PyObject_Vectorcall(xmc_py_hot_funcs[i], buf, (size_t)(n + 1), kwnames);
    if (buf != stack)
        PyMem_Free(buf);
    return r;
}

/* MapCache's hot method i on self (a FastCache: its descriptor checked it):
 * the builtin's C function on the cache's NativeCache (set once, it lives
 * as long as self), else the method. */
#define XMC_PY_HOT(i, builtin)                                                              \
    static PyObject *xmc_py_hot_##i(PyObject *self, PyObject *const *args, Py_ssize_t n,   \
                                    PyObject *kwnames)                                     \
    {                                                                                       \
        PyObject *native = ((xmc_py_fast *)self)->native;                                   \
                                                                                            \
        return native ? builtin(native, args, n, kwnames)                                   \
                      : xmc_py_hot_method(i, self, args, n, kwnames);                       \
    }
XMC_PY_HOT(XMC_PY_MAP_PTR, xmc_py_map_ptr_fast)
XMC_PY_HOT(XMC_PY_READ, xmc_py_read_fast)
XMC_PY_HOT(XMC_PY_READINTO, xmc_py_readinto_fast)
XMC_PY_HOT(XMC_PY_WRITE, xmc_py_write_fast)
XMC_PY_HOT(XMC_PY_RAM_ADDR, xmc_py_ram_addr_fast)
XMC_PY_HOT(XMC_PY_UNLOCK, xmc_py_unlock_fast)
XMC_PY_HOT(XMC_PY_MAP, xmc_py_map_fast)
XMC_PY_HOT(XMC_PY_MAP_SG, xmc_py_map_sg_fast)
#undef XMC_PY_HOT

static const xmc_py_fastfn xmc_py_hot_entry[XMC_PY_NHOT] = {
    [XMC_PY_MAP_PTR] = xmc_py_hot_XMC_PY_MAP_PTR,   [XMC_PY_READ] = xmc_py_hot_XMC_PY_READ,
    [XMC_PY_READINTO] = xmc_py_hot_XMC_PY_READINTO, [XMC_PY_WRITE] = xmc_py_hot_XMC_PY_WRITE,
    [XMC_PY_RAM_ADDR] = xmc_py_hot_XMC_PY_RAM_ADDR, [XMC_PY_UNLOCK] = xmc_py_hot_XMC_PY_UNLOCK,
    [XMC_PY_MAP] = xmc_py_hot_XMC_PY_MAP,           [XMC_PY_MAP_SG] = xmc_py_hot_XMC_PY_MAP_SG,
};

static int xmc_py_fast_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((xmc_py_fast *)op)->native);
    return 0;
}

static int xmc_py_fast_clear(PyObject *op)
{
    Py_CLEAR(((xmc_py_fast *)op)->native);
    return 0;
}

static void xmc_py_fast_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    freefunc free_fn = (freefunc)PyType_GetSlot(tp, Py_tp_free);

    PyObject_GC_UnTrack(op);
    xmc_py_fast_clear(op);
    free_fn(op);
    Py_DECREF(tp);
}

/* cache._set_fast(native): the NativeCache whose builtins the hot methods call; once. */
static PyObject *xmc_py_fast_set(PyObject *op, PyObject *native)
{
    xmc_py_fast *self = (xmc_py_fast *)op;

    if (!PyObject_TypeCheck(native, xmc_py_cache_type)) {
        PyErr_SetString(PyExc_TypeError, "_set_fast() takes a NativeCache");
        return NULL;
    }
    if (self->native) {
        PyErr_SetString(PyExc_AttributeError, "the cache's NativeCache is set already");
        return NULL;
    }
    self->native = Py_NewRef(native);
    Py_RETURN_NONE;
}

static PyMethodDef xmc_py_fast_methods[] = {
    { "_set_fast", xmc_py_fast_set, METH_O,
      "_set_fast(native)\n--\n\nThe NativeCache whose builtins the hot methods call (once)." },
    { NULL, NULL, 0, NULL },
};

static PyType_Slot xmc_py_fast_slots[] = {
    { Py_tp_doc, "The base of MapCache on CPython: where a cache keeps its NativeCache (ffi/hot.h)." },
    { Py_tp_new, PyType_GenericNew },
    { Py_tp_dealloc, xmc_py_fast_dealloc },
    { Py_tp_traverse, xmc_py_fast_traverse },
    { Py_tp_clear, xmc_py_fast_clear },
    { Py_tp_methods, xmc_py_fast_methods },
    { 0, NULL },
};

static PyType_Spec xmc_py_fast_spec = {
    "xenmapcache._core.FastCache", sizeof(xmc_py_fast), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, xmc_py_fast_slots,
};

/* cls.<name i> = a method descriptor of cls calling xmc_py_hot_<i>; 0 or -1 */
static int xmc_py_put_hot(PyObject *cls, int i)
{
    PyObject *d = PyDescr_NewMethod((PyTypeObject *)cls, &xmc_py_hot_defs[i]);
    int rc = d ? PyObject_SetAttrString(cls, xmc_py_hot_names[i], d) : -1;

    Py_XDECREF(d);
    return rc;
}

/* The first call, for MapCache: keep its methods, document the builtins and
 * the descriptors by them, and put the descriptors on it. */
static int xmc_py_make_hot_first(PyObject *cls)
{
    for (int i = 0; i < XMC_PY_NHOT; i++)
        if (!(xmc_py_hot_funcs[i] = PyObject_GetAttrString(cls, xmc_py_hot_names[i])))
            return -1;
    if (xmc_py_document_hot(xmc_py_hot_funcs) < 0)
        return -1;
    for (int i = 0; i < XMC_PY_NHOT; i++) {
        PyMethodDef *def = xmc_py_cache_method(xmc_py_hot_names[i]);
        size_t name = strlen(def->ml_name) + 1, len = strlen(def->ml_doc);
        char *doc = PyMem_Malloc(len + 8); /* "name($self, " + the rest and its NUL: kept for good */

        if (!doc) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(doc, def->ml_doc, name);  /* "name(" */
        memcpy(doc + name, "$self, ", 7); /* the signature of a method */
        memcpy(doc + name + 7, def->ml_doc + name, len - name + 1);
        xmc_py_hot_defs[i] = (PyMethodDef){ def->ml_name,
                                            (PyCFunction)(void (*)(void))xmc_py_hot_entry[i],
                                            METH_FASTCALL | METH_KEYWORDS, doc };
        if (xmc_py_put_hot(cls, i) < 0)
            return -1;
    }
    return 0;
}

/*
 * make_hot(cls, names): the first time (MapCache, a FastCache), replace
 * each hot method by a method descriptor of cls calling the builtin's C
 * function, documented as the builtin is (its signature, then the method's
 * docstring).  Then, for a subclass: the same descriptors, of the subclass,
 * for the hot methods of names (those it inherits).  CPython specialises
 * the call of a method descriptor only on an object of exactly its class:
 * so a subclass's caches are served as MapCache's are.
 */
static PyObject *xmc_py_make_hot(PyObject *unused, PyObject *const *args, Py_ssize_t n)
{
    PyObject *cls = n == 2 ? args[0] : NULL, *names = n == 2 ? args[1] : NULL;

    (void)unused;
    if (!cls || !PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, xmc_py_fast_type) ||
        !PyTuple_Check(names)) {
        PyErr_SetString(PyExc_TypeError, "make_hot(cls, names): cls subclasses FastCache, names a tuple");
        return NULL;
    }
    if (!xmc_py_hot_funcs[0]) {
        if (xmc_py_make_hot_first(cls) < 0)
            return NULL; /* half made: MapCache is unusable, and so is the import */
        Py_RETURN_NONE;
    }
    for (Py_ssize_t k = 0; k < PyTuple_Size(names); k++) {
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GetItem(names, k), NULL);
        int i = 0;

        if (!name)
            return NULL;
        while (i < XMC_PY_NHOT && strcmp(xmc_py_hot_names[i], name))
            i++;
        if (i == XMC_PY_NHOT) {
            PyErr_Format(PyExc_ValueError, "make_hot(): %s is not a hot method", name);
            return NULL;
        }
        if (xmc_py_put_hot(cls, i) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef xmc_py_make_hot_def = {
    "make_hot", (PyCFunction)(void (*)(void))xmc_py_make_hot, METH_FASTCALL,
    "make_hot(cls, names)\n--\n\nPut method descriptors calling the builtins over MapCache's hot "
    "methods (the first call), or a subclass's inherited ones, names.",
};

#endif /* XMC_PY_HOT_H */
