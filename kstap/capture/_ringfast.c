/*
 * kstap's one hand-written hot path: turn a retired TPACKET_V3 block into pcapng
 * Enhanced Packet Blocks in a single call, so the capture loop pays one Python call per
 * block instead of several per packet. The pure-Python twin is
 * kstap.capture.afpacket.AfPacketRing.read_blocks + kstap.sinks.pcapng.enhanced_packets;
 * tests check that both produce identical bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TP_STATUS_VLAN_VALID (1u << 4)
#define TP_STATUS_VLAN_TPID_VALID (1u << 6)

static inline uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t rd16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void wr32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }

/* encode_block(ring, block_offset, block_size, if_id, max_packets)
 *   -> (epb_bytes, packets, captured_bytes, last_ts_ns) */
static PyObject *encode_block(PyObject *self, PyObject *args) {
    Py_buffer ring;
    Py_ssize_t boff, bsize, maxp;
    unsigned int if_id;
    if (!PyArg_ParseTuple(args, "y*nnIn", &ring, &boff, &bsize, &if_id, &maxp))
        return NULL;
    if (boff < 0 || bsize < 48 || boff + bsize > ring.len) {
        PyBuffer_Release(&ring);
        PyErr_SetString(PyExc_ValueError, "block outside the ring");
        return NULL;
    }
    const unsigned char *blk = (const unsigned char *)ring.buf + boff;
    uint32_t num = rd32(blk + 12), first = rd32(blk + 16);
    if (maxp >= 0 && (Py_ssize_t)num > maxp) num = (uint32_t)maxp;

    /* pass 1: size the output and validate offsets */
    Py_ssize_t out_len = 0, off = first;
    for (uint32_t i = 0; i < num; i++) {
        if (off < 0 || off + 48 > bsize) goto corrupt;
        const unsigned char *h = blk + off;
        uint32_t next = rd32(h), snap = rd32(h + 12), status = rd32(h + 20);
        uint16_t mac = rd16(h + 24);
        if (off + mac + (Py_ssize_t)snap > bsize) goto corrupt;
        if (status & TP_STATUS_VLAN_VALID) snap += 4;
        out_len += 32 + ((snap + 3) & ~3u);
        if (i + 1 < num) { if (next == 0) goto corrupt; off += next; }
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, out_len);
    if (!out) { PyBuffer_Release(&ring); return NULL; }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);

    /* pass 2: write the EPBs */
    unsigned long long captured = 0, last_ts = 0;
    off = first;
    for (uint32_t i = 0; i < num; i++) {
        const unsigned char *h = blk + off;
        uint32_t next = rd32(h), sec = rd32(h + 4), nsec = rd32(h + 8);
        uint32_t snap = rd32(h + 12), len = rd32(h + 16), status = rd32(h + 20);
        uint16_t mac = rd16(h + 24);
        const unsigned char *data = h + mac;
        uint32_t cap = snap, orig = len;
        int vlan = (status & TP_STATUS_VLAN_VALID) != 0;
        if (vlan) { cap += 4; orig += 4; }
        uint32_t padded = (cap + 3) & ~3u, total = 32 + padded;
        unsigned long long ts = (unsigned long long)sec * 1000000000ull + nsec;
        wr32(o, 6); wr32(o + 4, total); wr32(o + 8, if_id);
        wr32(o + 12, (uint32_t)(ts >> 32)); wr32(o + 16, (uint32_t)ts);
        wr32(o + 20, cap); wr32(o + 24, orig);
        unsigned char *d = o + 28;
        if (vlan) {
            /* put back the 802.1Q tag after the MAC addresses, as libpcap does */
            uint16_t tci = (uint16_t)rd32(h + 28), tpid = rd16(h + 32);
            uint32_t head = snap < 12 ? snap : 12;
            if (!(status & TP_STATUS_VLAN_TPID_VALID)) tpid = 0x8100;
            memcpy(d, data, head);
            d[head] = tpid >> 8; d[head + 1] = tpid & 0xff; d[head + 2] = tci >> 8; d[head + 3] = tci & 0xff;
            memcpy(d + head + 4, data + head, snap - head);
        } else {
            memcpy(d, data, snap);
        }
        memset(d + cap, 0, padded - cap);
        wr32(d + padded, total);
        o += total;
        captured += cap;
        last_ts = ts;
        off += next;
    }
    PyBuffer_Release(&ring);
    return Py_BuildValue("(NIKK)", out, num, captured, last_ts);

corrupt:
    PyBuffer_Release(&ring);
    PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block");
    return NULL;
}

static PyMethodDef methods[] = {
    {"encode_block", encode_block, METH_VARARGS, "Encode one TPACKET_V3 block as pcapng EPBs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ringfast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ringfast(void) { return PyModule_Create(&module); }
