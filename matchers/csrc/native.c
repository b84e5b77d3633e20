/*
 * matchers._native: the C side of the trail matchers.
 *
 * Owns the Python bindings over artifact.h: building a hash table section (at compile time, from
 * trailsdb), and looking keys, domain suffixes and IPv4 roaring membership up in the read-only
 * sections of a loaded artifact. The Python reference matchers in matchers/ answer the same
 * questions with dicts and sets; tests require identical answers.
 *
 * Must not know about packets, protocols or files: it is handed buffers and keys.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>

#include "artifact.h"

/* ---- hash64(data) ------------------------------------------------------------------------- */

static PyObject *py_hash64(PyObject *self, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t h = mt_hash64((const uint8_t *)b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(h);
}

/* ---- build_hash_table(trails, strings, ids) -> bytes ------------------------------------- */

static int check_trails(const Py_buffer *trails, const Py_buffer *strings, uint32_t *ntrails)
{
    if (trails->len % sizeof(mt_trail) != 0) {
        PyErr_SetString(PyExc_ValueError, "trail table length is not a multiple of 12 bytes");
        return -1;
    }
    *ntrails = (uint32_t)(trails->len / sizeof(mt_trail));
    const mt_trail *t = (const mt_trail *)trails->buf;
    for (uint32_t i = 0; i < *ntrails; i++) {
        if ((uint64_t)t[i].str_off + t[i].str_len > (uint64_t)strings->len) {
            PyErr_Format(PyExc_ValueError, "trail %u points outside the string blob", i);
            return -1;
        }
    }
    return 0;
}

static PyObject *py_build_hash_table(PyObject *self, PyObject *args)
{
    Py_buffer trails, strings, ids;
    if (!PyArg_ParseTuple(args, "y*y*y*", &trails, &strings, &ids))
        return NULL;
    PyObject *result = NULL;
    uint32_t ntrails;
    if (check_trails(&trails, &strings, &ntrails) < 0)
        goto done;
    if (ids.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "ids must be a u32 array");
        goto done;
    }
    size_t n = (size_t)ids.len / 4;
    const uint32_t *idv = (const uint32_t *)ids.buf;
    /* load factor <= 0.6: short probe sequences and always an empty slot to stop at */
    uint64_t cap = 16;
    while (cap * 3 < (uint64_t)n * 5)
        cap <<= 1;
    if (cap > (1ULL << 31)) {
        PyErr_SetString(PyExc_ValueError, "too many keys for one hash table");
        goto done;
    }
    size_t total = MT_TABLE_HEADER_BYTES + (size_t)cap * 8;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!result)
        goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    memset(out, 0, total);
    uint32_t *tags = (uint32_t *)(out + MT_TABLE_HEADER_BYTES);
    uint32_t *slots = tags + cap;
    const mt_trail *tr = (const mt_trail *)trails.buf;
    const uint8_t *sb = (const uint8_t *)strings.buf;
    uint32_t mask = (uint32_t)(cap - 1), count = 0;
    for (size_t k = 0; k < n; k++) {
        uint32_t id = idv[k];
        if (id >= ntrails) {
            PyErr_Format(PyExc_ValueError, "trail id %u out of range", id);
            Py_CLEAR(result);
            goto done;
        }
        const uint8_t *key = sb + tr[id].str_off;
        size_t len = tr[id].str_len;
        uint64_t h = mt_hash64(key, len);
        uint32_t tag = (uint32_t)(h >> 32), i = (uint32_t)h & mask;
        int dup = 0;
        while (slots[i]) {
            const mt_trail *o = &tr[slots[i] - 1];
            if (tags[i] == tag && o->str_len == len && memcmp(sb + o->str_off, key, len) == 0) {
                dup = 1; /* first insertion wins; the compiler dedups keys, this is a backstop */
                break;
            }
            i = (i + 1) & mask;
        }
        if (dup)
            continue;
        tags[i] = tag;
        slots[i] = id + 1;
        count++;
    }
    uint32_t cap32 = (uint32_t)cap;
    memcpy(out, &cap32, 4);
    memcpy(out + 4, &count, 4);
done:
    PyBuffer_Release(&trails);
    PyBuffer_Release(&strings);
    PyBuffer_Release(&ids);
    return result;
}

/* ---- key filters (artifact.h: mt_filter) ---------------------------------------------------- */

/* Opens hash table `sec` over trails and strings into *t; 0, or -1 with an exception set. */
static int open_table(mt_table *t, const Py_buffer *sec, const Py_buffer *trails, const Py_buffer *strings)
{
    if (trails->len % sizeof(mt_trail) != 0) {
        PyErr_SetString(PyExc_ValueError, "trail table length is not a multiple of 12 bytes");
        return -1;
    }
    const uint8_t *s = (const uint8_t *)sec->buf;
    uint32_t cap, count;
    if (sec->len < MT_TABLE_HEADER_BYTES)
        goto bad;
    memcpy(&cap, s, 4);
    memcpy(&count, s + 4, 4);
    if (cap == 0 || (cap & (cap - 1)) || count >= cap || (uint64_t)sec->len != MT_TABLE_HEADER_BYTES + (uint64_t)cap * 8)
        goto bad;
    t->tags = (const uint32_t *)(s + MT_TABLE_HEADER_BYTES);
    t->ids = t->tags + cap;
    t->mask = cap - 1;
    t->count = count;
    t->trails = (const mt_trail *)trails->buf;
    t->ntrails = (uint32_t)(trails->len / sizeof(mt_trail));
    t->strings = (const uint8_t *)strings->buf;
    t->strings_len = (uint64_t)strings->len;
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "hash table section header is inconsistent");
    return -1;
}

static PyObject *py_build_key_filter(PyObject *self, PyObject *args)
{
    Py_buffer sec, trails, strings;
    if (!PyArg_ParseTuple(args, "y*y*y*", &sec, &trails, &strings))
        return NULL;
    PyObject *result = NULL;
    mt_table t;
    if (open_table(&t, &sec, &trails, &strings) < 0)
        goto done;
    uint32_t log2_bits = mt_filter_log2_bits(t.count);
    uint64_t total = mt_filter_section_bytes(log2_bits);
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!result)
        goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    memset(out, 0, total);
    /* the words are filled in an aligned scratch array: a bytes object's payload is not 8-aligned */
    uint64_t nwords = ((uint64_t)1 << log2_bits) / 64;
    uint64_t *words = PyMem_Calloc(nwords, 8);
    if (!words) {
        Py_CLEAR(result);
        PyErr_NoMemory();
        goto done;
    }
    uint32_t added = mt_filter_fill(words, (uint32_t)(nwords - 1), &t);
    if (added != t.count) {
        PyMem_Free(words);
        Py_CLEAR(result);
        PyErr_SetString(PyExc_ValueError, "hash table holds keys outside its trails or strings");
        goto done;
    }
    uint32_t version = MT_FILTER_VERSION, set_bits = (uint32_t)mt_popcount_words(words, nwords);
    memcpy(out, &version, 4);
    memcpy(out + 4, &log2_bits, 4);
    memcpy(out + 8, &t.count, 4);
    memcpy(out + 12, &set_bits, 4);
    memcpy(out + MT_FILTER_HEADER_BYTES, words, nwords * 8);
    PyMem_Free(words);
done:
    PyBuffer_Release(&sec);
    PyBuffer_Release(&trails);
    PyBuffer_Release(&strings);
    return result;
}

/* A filter section's bytes where its u64 words can be read: the buffer itself when 8-byte
 * aligned (the mapped artifact always is), else a copy in *copy (the caller frees it). NULL with
 * MemoryError set when the copy cannot be made. */
static const uint8_t *aligned_words(const Py_buffer *buf, uint64_t **copy)
{
    const uint8_t *p = (const uint8_t *)buf->buf;
    if (!((uintptr_t)p & 7))
        return p;
    *copy = PyMem_Malloc(buf->len ? (size_t)buf->len : 1);
    if (!*copy) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(*copy, p, (size_t)buf->len);
    return (const uint8_t *)*copy;
}

/* How many keys of the table the filter answers "absent" for (0 for a good filter); ValueError
 * when the filter section is refused (mt_filter_open). The filter section is copied to aligned
 * memory when the buffer handed in is not 8-aligned (a bytes object). */
static PyObject *py_filter_misses(PyObject *self, PyObject *args)
{
    Py_buffer fsec, sec, trails, strings;
    if (!PyArg_ParseTuple(args, "y*y*y*y*", &fsec, &sec, &trails, &strings))
        return NULL;
    PyObject *result = NULL;
    uint64_t *copy = NULL;
    mt_table t;
    mt_filter f;
    const char *why = NULL;
    if (open_table(&t, &sec, &trails, &strings) < 0)
        goto done;
    const uint8_t *fb = aligned_words(&fsec, &copy);
    if (!fb)
        goto done;
    if (mt_filter_open(&f, fb, (size_t)fsec.len, &t, &why) < 0) {
        PyErr_SetString(PyExc_ValueError, why);
        goto done;
    }
    uint64_t misses = 0;
    const uint8_t *key;
    size_t len;
    for (uint64_t i = 0; i <= t.mask; i++)
        if (mt_table_key(&t, i, &key, &len) && mt_table_find_filtered(&t, &f, key, len) < 0)
            misses++;
    result = PyLong_FromUnsignedLongLong(misses);
done:
    PyMem_Free(copy);
    PyBuffer_Release(&fsec);
    PyBuffer_Release(&sec);
    PyBuffer_Release(&trails);
    PyBuffer_Release(&strings);
    return result;
}

/* filter_check(filter, table): None, or ValueError saying why the worker would refuse this key
 * filter for this hash table section (mt_filter_open: version, size, key count, bits set). Lets
 * whoever verifies a whole artifact refuse it before any worker is handed it. */
static PyObject *py_filter_check(PyObject *self, PyObject *args)
{
    Py_buffer fsec, sec;
    if (!PyArg_ParseTuple(args, "y*y*", &fsec, &sec))
        return NULL;
    PyObject *result = NULL;
    uint64_t *copy = NULL;
    mt_table t;
    memset(&t, 0, sizeof(t));
    if (sec.len < MT_TABLE_HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "hash table section too short");
        goto done;
    }
    memcpy(&t.count, (const uint8_t *)sec.buf + 4, 4);
    const uint8_t *fb = aligned_words(&fsec, &copy);
    if (!fb)
        goto done;
    mt_filter f;
    const char *why = NULL;
    if (mt_filter_open(&f, fb, (size_t)fsec.len, &t, &why) < 0) {
        PyErr_SetString(PyExc_ValueError, why);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(copy);
    PyBuffer_Release(&fsec);
    PyBuffer_Release(&sec);
    return result;
}

/* How many of `keys` (a list of bytes) the filter passes ("maybe"): the rest it answers absent
 * for. Checks the section as the worker does, but against the key count its own header gives. */
static PyObject *py_filter_passes(PyObject *self, PyObject *args)
{
    Py_buffer fsec;
    PyObject *keys;
    if (!PyArg_ParseTuple(args, "y*O!", &fsec, &PyList_Type, &keys))
        return NULL;
    PyObject *result = NULL;
    uint64_t *copy = PyMem_Malloc(fsec.len ? (size_t)fsec.len : 1);
    if (!copy) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(copy, fsec.buf, (size_t)fsec.len);
    mt_table t;
    memset(&t, 0, sizeof(t));
    if (fsec.len >= MT_FILTER_HEADER_BYTES)
        memcpy(&t.count, (const uint8_t *)copy + 8, 4);
    mt_filter f;
    const char *why = NULL;
    if (mt_filter_open(&f, (const uint8_t *)copy, (size_t)fsec.len, &t, &why) < 0) {
        PyErr_SetString(PyExc_ValueError, why);
        goto done;
    }
    Py_ssize_t passed = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        PyObject *k = PyList_GET_ITEM(keys, i);
        if (!PyBytes_Check(k)) {
            PyErr_SetString(PyExc_TypeError, "keys must be bytes");
            goto done;
        }
        passed += mt_filter_maybe(&f, mt_filter_hash((const uint8_t *)PyBytes_AS_STRING(k), (size_t)PyBytes_GET_SIZE(k)));
    }
    result = PyLong_FromSsize_t(passed);
done:
    PyMem_Free(copy);
    PyBuffer_Release(&fsec);
    return result;
}

/* ---- Table: lookups in one hash table section ---------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer section, trails, strings;
    int have_buffers;
    mt_table t;
} TableObject;

static void Table_dealloc(TableObject *self)
{
    if (self->have_buffers) {
        PyBuffer_Release(&self->section);
        PyBuffer_Release(&self->trails);
        PyBuffer_Release(&self->strings);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Table_init(TableObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *sec, *trs, *strs;
    if (!PyArg_ParseTuple(args, "OOO", &sec, &trs, &strs))
        return -1;
    if (self->have_buffers) {
        PyErr_SetString(PyExc_RuntimeError, "Table already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(sec, &self->section, PyBUF_SIMPLE) < 0)
        return -1;
    if (PyObject_GetBuffer(trs, &self->trails, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&self->section);
        return -1;
    }
    if (PyObject_GetBuffer(strs, &self->strings, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&self->section);
        PyBuffer_Release(&self->trails);
        return -1;
    }
    self->have_buffers = 1;
    if (self->trails.len % sizeof(mt_trail) != 0) {
        PyErr_SetString(PyExc_ValueError, "trail table length is not a multiple of 12 bytes");
        return -1;
    }
    uint32_t ntrails = (uint32_t)(self->trails.len / sizeof(mt_trail));
    const uint8_t *s = (const uint8_t *)self->section.buf;
    if (self->section.len < MT_TABLE_HEADER_BYTES) {
        PyErr_SetString(PyExc_ValueError, "hash table section too short");
        return -1;
    }
    uint32_t cap, count;
    memcpy(&cap, s, 4);
    memcpy(&count, s + 4, 4);
    if (cap == 0 || (cap & (cap - 1)) || count >= cap ||
        (uint64_t)self->section.len != MT_TABLE_HEADER_BYTES + (uint64_t)cap * 8) {
        PyErr_SetString(PyExc_ValueError, "hash table section header is inconsistent");
        return -1;
    }
    const uint32_t *tags = (const uint32_t *)(s + MT_TABLE_HEADER_BYTES);
    const uint32_t *ids = tags + cap;
    self->t.tags = tags;
    self->t.ids = ids;
    self->t.mask = cap - 1;
    self->t.count = count;
    self->t.trails = (const mt_trail *)self->trails.buf;
    self->t.ntrails = ntrails;
    self->t.strings = (const uint8_t *)self->strings.buf;
    self->t.strings_len = (uint64_t)self->strings.len;
    return 0;
}

static PyObject *Table_find(TableObject *self, PyObject *arg)
{
    Py_buffer k;
    if (PyObject_GetBuffer(arg, &k, PyBUF_SIMPLE) < 0)
        return NULL;
    int64_t id = mt_table_find(&self->t, (const uint8_t *)k.buf, (size_t)k.len);
    PyBuffer_Release(&k);
    return PyLong_FromLongLong(id);
}

/* Every key of the table that is the name itself or one of its parents at a label boundary, most
 * specific first: [(trail_id, start_offset), ...]. "a.b.c" probes "a.b.c", "b.c", "c". */
static PyObject *Table_suffixes(TableObject *self, PyObject *arg)
{
    Py_buffer k;
    if (PyObject_GetBuffer(arg, &k, PyBUF_SIMPLE) < 0)
        return NULL;
    const uint8_t *p = (const uint8_t *)k.buf;
    size_t n = (size_t)k.len;
    PyObject *out = PyList_New(0);
    if (!out)
        goto done;
    size_t start = 0;
    while (start < n) {
        int64_t id = mt_table_find(&self->t, p + start, n - start);
        if (id >= 0) {
            PyObject *item = Py_BuildValue("(Ln)", (long long)id, (Py_ssize_t)start);
            if (!item || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(out);
                goto done;
            }
            Py_DECREF(item);
        }
        const uint8_t *dot = memchr(p + start, '.', n - start);
        if (!dot)
            break;
        start = (size_t)(dot - p) + 1;
    }
done:
    PyBuffer_Release(&k);
    return out;
}

static PyObject *Table_len(TableObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLong(self->t.count);
}

static PyMethodDef Table_methods[] = {
    {"find", (PyCFunction)Table_find, METH_O, "find(key: bytes) -> trail id or -1"},
    {"suffixes", (PyCFunction)Table_suffixes, METH_O,
     "suffixes(name: bytes) -> [(trail_id, start)] for the name and its parents, most specific first"},
    {"count", (PyCFunction)Table_len, METH_NOARGS, "number of keys"},
    {NULL}};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "matchers._native.Table",
    .tp_basicsize = sizeof(TableObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Table(section, trails, strings): lookups in one hash table section of an artifact",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
};

/* ---- RoaringView: IPv4 membership read straight from a serialized bitmap ------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer buf;
    int have_buffer;
    mt_roaring r;
} RoaringObject;

static void Roaring_dealloc(RoaringObject *self)
{
    if (self->have_buffer)
        PyBuffer_Release(&self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Roaring_init(RoaringObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *o;
    if (!PyArg_ParseTuple(args, "O", &o))
        return -1;
    if (self->have_buffer) {
        PyErr_SetString(PyExc_RuntimeError, "RoaringView already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(o, &self->buf, PyBUF_SIMPLE) < 0)
        return -1;
    self->have_buffer = 1;
    if (mt_roaring_open(&self->r, (const uint8_t *)self->buf.buf, (size_t)self->buf.len) < 0) {
        PyErr_SetString(PyExc_ValueError, "not a valid portable roaring bitmap");
        return -1;
    }
    return 0;
}

static PyObject *Roaring_contains_py(RoaringObject *self, PyObject *arg)
{
    unsigned long v = PyLong_AsUnsignedLong(arg);
    if (v == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (v > 0xFFFFFFFFUL)
        Py_RETURN_FALSE;
    return PyBool_FromLong(mt_roaring_contains(&self->r, (uint32_t)v));
}

static int Roaring_sq_contains(RoaringObject *self, PyObject *arg)
{
    unsigned long v = PyLong_AsUnsignedLong(arg);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (v > 0xFFFFFFFFUL)
        return 0;
    return mt_roaring_contains(&self->r, (uint32_t)v);
}

static PySequenceMethods Roaring_as_sequence = {
    .sq_contains = (objobjproc)Roaring_sq_contains,
};

static PyMethodDef Roaring_methods[] = {
    {"contains", (PyCFunction)Roaring_contains_py, METH_O, "contains(x: int) -> bool"},
    {NULL}};

static PyTypeObject RoaringType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "matchers._native.RoaringView",
    .tp_basicsize = sizeof(RoaringObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RoaringView(buffer): membership in a portable-format roaring bitmap, read in place",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Roaring_init,
    .tp_dealloc = (destructor)Roaring_dealloc,
    .tp_methods = Roaring_methods,
    .tp_as_sequence = &Roaring_as_sequence,
};

/* ---- RoaringView64: 64-bit membership read straight from a serialized BitMap64 -------------- */

#define MT_MAX_BUCKETS (1u << 20)

typedef struct {
    PyObject_HEAD
    Py_buffer buf;
    int have_buffer;
    mt_roaring64 r;
} Roaring64Object;

static void Roaring64_dealloc(Roaring64Object *self)
{
    if (self->have_buffer)
        PyBuffer_Release(&self->buf);
    PyMem_Free(self->r.keys);
    PyMem_Free(self->r.maps);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Roaring64_init(Roaring64Object *self, PyObject *args, PyObject *kwds)
{
    PyObject *o;
    if (!PyArg_ParseTuple(args, "O", &o))
        return -1;
    if (self->have_buffer) {
        PyErr_SetString(PyExc_RuntimeError, "RoaringView64 already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(o, &self->buf, PyBUF_SIMPLE) < 0)
        return -1;
    self->have_buffer = 1;
    const uint8_t *p = (const uint8_t *)self->buf.buf;
    uint64_t n = self->buf.len >= 8 ? ((uint64_t)mt_rd32(p) | ((uint64_t)mt_rd32(p + 4) << 32)) : 0;
    /* every bucket takes at least 4 + 8 bytes, which bounds the allocation by the buffer */
    if (n > MT_MAX_BUCKETS || n * 12 > (uint64_t)self->buf.len) {
        PyErr_SetString(PyExc_ValueError, "not a valid 64-bit portable roaring bitmap");
        return -1;
    }
    self->r.keys = PyMem_Malloc(sizeof(uint32_t) * (n ? n : 1));
    self->r.maps = PyMem_Malloc(sizeof(mt_roaring) * (n ? n : 1));
    if (!self->r.keys || !self->r.maps) {
        PyErr_NoMemory();
        return -1;
    }
    if (mt_roaring64_open(&self->r, p, (size_t)self->buf.len, (uint32_t)n) < 0) {
        PyErr_SetString(PyExc_ValueError, "not a valid 64-bit portable roaring bitmap");
        return -1;
    }
    return 0;
}

static int Roaring64_sq_contains(Roaring64Object *self, PyObject *arg)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(arg);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return mt_roaring64_contains(&self->r, (uint64_t)v);
}

static PySequenceMethods Roaring64_as_sequence = {
    .sq_contains = (objobjproc)Roaring64_sq_contains,
};

static PyTypeObject Roaring64Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "matchers._native.RoaringView64",
    .tp_basicsize = sizeof(Roaring64Object),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RoaringView64(buffer): membership in a 64-bit portable roaring bitmap, read in place",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Roaring64_init,
    .tp_dealloc = (destructor)Roaring64_dealloc,
    .tp_as_sequence = &Roaring64_as_sequence,
};

/* ---- module ---------------------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"hash64", py_hash64, METH_O, "hash64(data: bytes) -> int: the artifact's key hash"},
    {"build_hash_table", py_build_hash_table, METH_VARARGS,
     "build_hash_table(trails, strings, ids) -> bytes: a hash table section over the given trail ids"},
    {"build_key_filter", py_build_key_filter, METH_VARARGS,
     "build_key_filter(table, trails, strings) -> bytes: the key filter section for a hash table section"},
    {"filter_check", py_filter_check, METH_VARARGS,
     "filter_check(filter, table) -> None: ValueError when the key filter is not one for this table"},
    {"filter_passes", py_filter_passes, METH_VARARGS,
     "filter_passes(filter, keys) -> int: how many of the keys (bytes) the filter does not rule out"},
    {"filter_misses", py_filter_misses, METH_VARARGS,
     "filter_misses(filter, table, trails, strings) -> int: keys of the table the filter says are absent"},
    {NULL}};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native",
    "C lookups over compiled trail artifacts (see matchers/csrc/artifact.h)", -1, module_methods,
    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&TableType) < 0 || PyType_Ready(&RoaringType) < 0 || PyType_Ready(&Roaring64Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m)
        return NULL;
    Py_INCREF(&TableType);
    if (PyModule_AddObject(m, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(&TableType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RoaringType);
    if (PyModule_AddObject(m, "RoaringView", (PyObject *)&RoaringType) < 0) {
        Py_DECREF(&RoaringType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&Roaring64Type);
    if (PyModule_AddObject(m, "RoaringView64", (PyObject *)&Roaring64Type) < 0) {
        Py_DECREF(&Roaring64Type);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "TRAIL_RECORD_BYTES", (long)sizeof(mt_trail)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
