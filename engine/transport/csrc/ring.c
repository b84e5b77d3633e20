/*
 * engine._ring: the memory-ordering primitives of the shared-memory frame rings.
 *
 * Owns only what Python cannot express: publishing a ring's head or tail with release semantics
 * (every byte written before it is visible to the other process before the new position is) and
 * reading the other side's position with acquire semantics (no byte of the message is read before
 * the position that covers it). The ring layout and protocol live in engine/ring.py and
 * ARCHITECTURE.md; this module is handed a writable buffer and a byte offset.
 *
 * Must not know about frames, batches or processes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int get_slot(PyObject *buf, Py_ssize_t offset, Py_buffer *view, uint64_t **slot, int writable)
{
    if (PyObject_GetBuffer(buf, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return -1;
    if (offset < 0 || offset % 8 != 0 || offset + 8 > view->len) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "offset must be 8-byte aligned and inside the buffer");
        return -1;
    }
    *slot = (uint64_t *)((char *)view->buf + offset);
    return 0;
}

static PyObject *load_acquire(PyObject *self, PyObject *args)
{
    PyObject *buf;
    Py_ssize_t offset;
    Py_buffer view;
    uint64_t *slot;
    if (!PyArg_ParseTuple(args, "On", &buf, &offset) || get_slot(buf, offset, &view, &slot, 0) < 0)
        return NULL;
    uint64_t value = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(value);
}

static PyObject *store_release(PyObject *self, PyObject *args)
{
    PyObject *buf;
    Py_ssize_t offset;
    unsigned long long value;
    Py_buffer view;
    uint64_t *slot;
    if (!PyArg_ParseTuple(args, "OnK", &buf, &offset, &value) || get_slot(buf, offset, &view, &slot, 1) < 0)
        return NULL;
    __atomic_store_n(slot, (uint64_t)value, __ATOMIC_RELEASE);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"load_acquire", load_acquire, METH_VARARGS,
     "load_acquire(buffer, offset) -> int: 64-bit load with acquire ordering"},
    {"store_release", store_release, METH_VARARGS,
     "store_release(buffer, offset, value): 64-bit store with release ordering"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ring",
                                    "Acquire/release publication of ring positions", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ring(void) { return PyModule_Create(&module); }
