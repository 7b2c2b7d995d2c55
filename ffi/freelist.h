/*
 * freelist.h - a short free list of the GC objects of one type: objects that
 * come and go at the rate of calls (Mappings, the bound methods of special.h)
 * are kept, untracked and with their references dropped, for the next ones,
 * as CPython keeps its own small objects.  The GIL guards it.  (A group keeps
 * its member Mappings itself: group.h.)
 */
#ifndef XMC_PY_FREELIST_H
#define XMC_PY_FREELIST_H

#define XMC_PY_FREE_MAX 64

typedef struct {
    PyObject *items[XMC_PY_FREE_MAX];
    int n;
} xmc_py_freelist;

/* A new object of tp (size bytes), zeroed past its head, tracked by the GC
 * when track is true; NULL with an error set. */
static PyObject *xmc_py_fl_new(xmc_py_freelist *fl, PyTypeObject *tp, size_t size, int track)
{
    PyObject *op;

    if (!fl->n) {
        op = PyType_GenericAlloc(tp, 0);
        if (op && !track)
            PyObject_GC_UnTrack(op);
        return op;
    }
    op = fl->items[--fl->n];
    memset((char *)op + sizeof(PyObject), 0, size - sizeof(PyObject));
    PyObject_Init(op, tp);
    if (track)
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
    xmc_py_unref((PyObject *)tp);
}

#endif /* XMC_PY_FREELIST_H */
