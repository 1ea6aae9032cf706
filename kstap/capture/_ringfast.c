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

/* Copy one packet's frame from a tpacket3_hdr ``h`` to ``d``, putting back the 802.1Q tag the
 * kernel moved into metadata (as libpcap does) and zero-padding to 32 bits. Returns the captured
 * length; *orig gets the original length and *ts the timestamp in ns. */
static uint32_t copy_frame(const unsigned char *h, unsigned char *d, uint32_t *orig, unsigned long long *ts) {
    uint32_t sec = rd32(h + 4), nsec = rd32(h + 8);
    uint32_t snap = rd32(h + 12), len = rd32(h + 16), status = rd32(h + 20);
    const unsigned char *data = h + rd16(h + 24);
    uint32_t cap = snap;
    *orig = len;
    *ts = (unsigned long long)sec * 1000000000ull + nsec;
    if (status & TP_STATUS_VLAN_VALID) {
        uint16_t tci = (uint16_t)rd32(h + 28), tpid = rd16(h + 32);
        uint32_t head = snap < 12 ? snap : 12;
        if (!(status & TP_STATUS_VLAN_TPID_VALID)) tpid = 0x8100;
        memcpy(d, data, head);
        d[head] = tpid >> 8; d[head + 1] = tpid & 0xff; d[head + 2] = tci >> 8; d[head + 3] = tci & 0xff;
        memcpy(d + head + 4, data + head, snap - head);
        cap += 4;
        *orig += 4;
    } else {
        memcpy(d, data, snap);
    }
    memset(d + cap, 0, ((cap + 3) & ~3u) - cap);
    return cap;
}


/* --entries: which packets a dissector would take (kstap/dissect/stage.py): TCP segments (any port:
 * detection reads the payload), UDP to or from port 53, or whose payload passes dns.plausible().
 * Everything else only goes to the file, so it never becomes a Python object. Non-Ethernet link
 * types are all "wanted" (the Python stage decides). */
static int dissect_wants(const unsigned char *f, uint32_t len, int linktype);
static int append_wanted(PyObject *list, const unsigned char *d, uint32_t cap, uint32_t orig,
                         unsigned long long ts, unsigned int if_id);

static inline void epb_header(unsigned char *o, uint32_t total, uint32_t if_id, unsigned long long ts,
                              uint32_t cap, uint32_t orig) {
    wr32(o, 6); wr32(o + 4, total); wr32(o + 8, if_id);
    wr32(o + 12, (uint32_t)(ts >> 32)); wr32(o + 16, (uint32_t)ts);
    wr32(o + 20, cap); wr32(o + 24, orig);
}

/* encode_block(ring, block_offset, block_size, if_id, max_packets)
 *   -> (epb_bytes, packets, captured_bytes, last_ts_ns) */
static PyObject *encode_block(PyObject *self, PyObject *args) {
    Py_buffer ring;
    Py_ssize_t boff, bsize, maxp;
    unsigned int if_id;
    PyObject *wanted = NULL;
    int linktype = 1;
    if (!PyArg_ParseTuple(args, "y*nnIn|Oi", &ring, &boff, &bsize, &if_id, &maxp, &wanted, &linktype))
        return NULL;
    if (wanted == Py_None) wanted = NULL;
    if (wanted && !PyList_Check(wanted)) {
        PyBuffer_Release(&ring);
        PyErr_SetString(PyExc_TypeError, "wanted must be a list");
        return NULL;
    }
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
        uint32_t next = rd32(h), orig;
        unsigned long long ts;
        uint32_t cap = copy_frame(h, o + 28, &orig, &ts);
        if (wanted && dissect_wants(o + 28, cap, linktype) && append_wanted(wanted, o + 28, cap, orig, ts, if_id) < 0) {
            Py_DECREF(out);
            PyBuffer_Release(&ring);
            return NULL;
        }
        uint32_t padded = (cap + 3) & ~3u, total = 32 + padded;
        epb_header(o, total, if_id, ts, cap, orig);
        wr32(o + 28 + padded, total);
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


/* ---------------------------------------------------------------------------------------------
 * Percentage mode's fast path: the kernel already dropped unsampled flows; what is left to do per
 * packet is to notice each flow's first packet and put kstap's "flow" comment on it. The flow key
 * and the seeded flow hash are the same as kstap/sampling/flowkey.py and flowhash.py (tests check
 * the ids against the Python function). Seen flows live in a caller-owned open-addressing table:
 * 16-byte slots (64-bit key fingerprint, last-seen ns); slot 0 is the header (count, capacity).
 */
#define M32 0xFFFFFFFFu
static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16; return h;
}
static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint16_t be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static uint32_t endpoint_hash(uint32_t seed, const unsigned char *addr, int words, uint16_t port) {
    uint32_t h = seed ^ port;
    for (int i = 0; i < words; i++) {
        h = (h ^ (be32(addr + 4 * i) * 0xCC9E2D51u)) * 0x1B873593u;
        h ^= h >> 15;
    }
    return fmix32(h);
}

typedef struct {
    int proto, words;
    const unsigned char *a, *b;
    uint16_t ap, bp;
} Key;

/* 1 = IP flow found, 0 = no flow (non-IP or too short) */
static int parse_key(const unsigned char *f, uint32_t len, Key *k) {
    if (len < 14) return 0;
    uint32_t off = 14;
    uint16_t et = be16(f + 12);
    for (int i = 0; i < 2; i++) {
        if ((et == 0x8100 || et == 0x88A8) && len >= off + 4) { et = be16(f + off + 2); off += 4; }
    }
    const unsigned char *src, *dst;
    uint32_t l4;
    int proto, frag = 0, words;
    if (et == 0x0800) {
        if (len < off + 20) return 0;
        proto = f[off + 9];
        frag = be16(f + off + 6) & 0x3FFF;
        src = f + off + 12; dst = f + off + 16; words = 1;
        l4 = off + (f[off] & 0x0F) * 4;
    } else if (et == 0x86DD) {
        if (len < off + 40) return 0;
        proto = f[off + 6];
        src = f + off + 8; dst = f + off + 24; words = 4;
        l4 = off + 40;
    } else {
        return 0;
    }
    uint16_t sp = 0, dp = 0;
    if ((proto == 6 || proto == 17 || proto == 132) && !frag && len >= l4 + 4) {
        sp = be16(f + l4); dp = be16(f + l4 + 2);
    }
    int c = memcmp(src, dst, 4 * words);
    int src_first = c < 0 || (c == 0 && sp <= dp);
    k->proto = proto; k->words = words;
    if (src_first) { k->a = src; k->ap = sp; k->b = dst; k->bp = dp; }
    else { k->a = dst; k->ap = dp; k->b = src; k->bp = sp; }
    return 1;
}

static uint32_t flow_hash(const Key *k, uint32_t seed) {
    uint32_t e = endpoint_hash(seed, k->a, k->words, k->ap) + endpoint_hash(seed, k->b, k->words, k->bp);
    uint32_t s2 = fmix32(seed ^ 0x9E3779B1u);
    return fmix32(e ^ ((uint32_t)k->proto * 0x9E3779B1u) ^ s2);
}

static inline uint64_t mix64(uint64_t x) {
    /* MurmurHash3's 64-bit finaliser */
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static uint64_t fingerprint(const Key *k) {
    /* 64 bits of the canonical key, a word pair at a time (table-internal, never stored outside the
     * process: it only has to be fast and collide rarely); 0 is reserved for empty slots */
    uint64_t h = mix64(0x9E3779B97F4A7C15ull ^ ((uint64_t)k->proto << 32 | (uint64_t)k->ap << 16 | k->bp));
    for (int i = 0; i < k->words; i++) {
        uint32_t wa, wb;
        memcpy(&wa, k->a + 4 * i, 4);
        memcpy(&wb, k->b + 4 * i, 4);
        h = mix64(h ^ ((uint64_t)wa << 32 | wb));
    }
    return h ? h : 1;
}

/* 1 when the flow was not in the table (now inserted), 0 when seen; -1 when the table is full.
 * *before gets the last-seen time the slot had (0 for a new flow). */
static int table_touch_was(uint64_t *t, uint64_t fp, uint64_t now, uint64_t *before) {
    uint64_t cap = t[1];
    uint64_t mask = cap - 1;
    uint64_t i = fp & mask;
    *before = 0;
    for (uint64_t probes = 0; probes < cap; probes++) {
        uint64_t *slot = t + 2 * (1 + i);
        if (slot[0] == fp) { *before = slot[1]; slot[1] = now; return 0; }
        if (slot[0] == 0) {
            if ((t[0] + 1) * 4 > cap * 3) return -1;
            slot[0] = fp; slot[1] = now; t[0]++;
            return 1;
        }
        i = (i + 1) & mask;
    }
    return -1;
}

static int table_touch(uint64_t *t, uint64_t fp, uint64_t now) {
    uint64_t before;
    return table_touch_was(t, fp, now, &before);
}

/* encode_block_sampled(ring, boff, bsize, if_id, maxp, table, seed, suffix
 *                      [, wanted, linktype, shed_threshold, shed_ns, shed_suffix])
 *   -> (epb_bytes, packets, captured_bytes, new_flows, table_full, shed_marked)
 * After an emergency shed in the kernel flow table (kstap/sampling/kernel_table.py) the kernel lets
 * exactly one more packet of each shed flow through: the first packet at or after shed_ns of a flow
 * this table last saw before shed_ns whose hash is >= shed_threshold. It gets the "shed" comment. */
static PyObject *encode_block_sampled(PyObject *self, PyObject *args) {
    Py_buffer ring, table;
    Py_ssize_t boff, bsize, maxp;
    unsigned int if_id, seed;
    const char *suffix;
    Py_ssize_t suffix_len;
    PyObject *wanted = NULL;
    int linktype = 1;
    unsigned long long shed_threshold = 1ull << 32, shed_ns = 0;
    const char *shed_suffix = "";
    Py_ssize_t shed_suffix_len = 0;
    if (!PyArg_ParseTuple(args, "y*nnInw*Is#|OiKKs#", &ring, &boff, &bsize, &if_id, &maxp, &table, &seed,
                          &suffix, &suffix_len, &wanted, &linktype, &shed_threshold, &shed_ns, &shed_suffix,
                          &shed_suffix_len))
        return NULL;
    if (wanted == Py_None) wanted = NULL;
    PyObject *result = NULL;
    unsigned char *out = NULL;
    PyObject *bytes = NULL;
    uint64_t *fps = NULL;
    if (wanted && !PyList_Check(wanted)) {
        PyErr_SetString(PyExc_TypeError, "wanted must be a list");
        goto done;
    }
    if (boff < 0 || bsize < 48 || boff + bsize > ring.len || table.len < 32 || suffix_len > 200 ||
        shed_suffix_len > 200) {
        PyErr_SetString(PyExc_ValueError, "bad ring, table or suffix");
        goto done;
    }
    uint64_t *t = (uint64_t *)table.buf;
    if (t[1] == 0 || (t[1] & (t[1] - 1)) || (Py_ssize_t)((t[1] + 1) * 16) > table.len) {
        PyErr_SetString(PyExc_ValueError, "table header is not a power-of-two capacity");
        goto done;
    }
    const unsigned char *blk = (const unsigned char *)ring.buf + boff;
    uint32_t num = rd32(blk + 12), first = rd32(blk + 16);
    if (maxp >= 0 && (Py_ssize_t)num > maxp) num = (uint32_t)maxp;
    /* one comment option: 4-byte header + "kstap: flow id=XXXXXXXX " (24) + suffix, padded, + endofopt */
    Py_ssize_t longest = suffix_len > shed_suffix_len ? suffix_len : shed_suffix_len;
    Py_ssize_t note_max = 4 + ((24 + longest + 3) & ~3) + 4;
    Py_ssize_t out_cap = 0, off = first;
    fps = PyMem_Malloc(num ? (size_t)num * sizeof(uint64_t) : 1);
    if (!fps) { PyErr_NoMemory(); goto done; }
    for (uint32_t i = 0; i < num; i++) {
        if (off < 0 || off + 48 > bsize) { PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block"); goto done; }
        const unsigned char *h = blk + off;
        uint32_t next = rd32(h), snap = rd32(h + 12), status = rd32(h + 20);
        uint16_t mac = rd16(h + 24);
        if (off + mac + (Py_ssize_t)snap > bsize) { PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block"); goto done; }
        fps[i] = 0;
        {
            /* Fetch this flow's slot now: the second pass then finds it in cache (a random slot
             * per packet otherwise costs a memory access each; skipping this pass for small tables
             * measured slower too: 0.16 -> 0.25-0.33 us per packet at rate 1). A VLAN tag the
             * kernel stripped is not part of the key, so the ring's frame gives it (the second
             * pass parses the copy when a tag was put back). */
            Key pk;
            if (parse_key(h + mac, snap, &pk)) {
                uint64_t fp = fingerprint(&pk);
                __builtin_prefetch(t + 2 * (1 + (fp & (t[1] - 1))), 1, 1);
                if (!(status & TP_STATUS_VLAN_VALID)) fps[i] = fp;
            }
        }
        if (status & TP_STATUS_VLAN_VALID) snap += 4;
        out_cap += 32 + ((snap + 3) & ~3u) + note_max;
        if (i + 1 < num) {
            if (next == 0) { PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block"); goto done; }
            off += next;
        }
    }
    /* written in place and shrunk at the end: no second copy of the block */
    bytes = PyBytes_FromStringAndSize(NULL, out_cap ? out_cap : 1);
    if (!bytes) goto done;
    out = (unsigned char *)PyBytes_AS_STRING(bytes);
    unsigned char *o = out;
    unsigned long long captured = 0;
    unsigned int new_flows = 0, shed_marked = 0;
    int full = 0;
    off = first;
    for (uint32_t i = 0; i < num; i++) {
        const unsigned char *h = blk + off;
        uint32_t next = rd32(h), orig;
        unsigned long long ts;
        unsigned char *d = o + 28;
        uint32_t cap = copy_frame(h, d, &orig, &ts);
        uint32_t padded = (cap + 3) & ~3u;
        if (wanted && dissect_wants(d, cap, linktype) && append_wanted(wanted, d, cap, orig, ts, if_id) < 0)
            goto done;
        /* the flow: first packet → comment */
        uint32_t optlen = 0;
        Key k;
        uint64_t fp = fps[i];
        if (!fp && parse_key(d, cap, &k)) fp = fingerprint(&k);
        if (fp) {
            uint64_t before;
            int fresh = table_touch_was(t, fp, ts, &before);
            if (fresh < 0) full = 1;
            /* a flow seen before the shed, back after it: the one packet the kernel lets through? */
            int maybe_shed = fresh == 0 && shed_threshold < (1ull << 32) && ts >= shed_ns && before < shed_ns;
            int shed = 0;
            uint32_t fh = 0;
            if (fresh == 1 || maybe_shed) {
                if (fps[i]) parse_key(d, cap, &k);  /* the key, for the comment's flow hash */
                fh = flow_hash(&k, seed);
                shed = maybe_shed && fh >= shed_threshold;
            }
            if (fresh == 1 || shed) {
                /* "kstap: flow id=%08x <suffix>", without snprintf (one per new flow adds up) */
                static const char prefix[] = "kstap: flow id=", shed_prefix[] = "kstap: shed id=",
                                  hex[] = "0123456789abcdef";
                char note[256];
                int n = (int)sizeof prefix - 1;
                memcpy(note, shed ? shed_prefix : prefix, n);
                for (int sh = 28; sh >= 0; sh -= 4) note[n++] = hex[(fh >> sh) & 0xf];
                note[n++] = ' ';
                /* suffix lengths <= 200: checked on entry */
                memcpy(note + n, shed ? shed_suffix : suffix, shed ? shed_suffix_len : suffix_len);
                n += (int)(shed ? shed_suffix_len : suffix_len);
                if (4 + ((n + 3) & ~3) + 4 <= note_max) {
                    unsigned char *p = d + padded;
                    p[0] = 1; p[1] = 0; p[2] = (unsigned char)(n & 0xff); p[3] = (unsigned char)(n >> 8);
                    memcpy(p + 4, note, n);
                    uint32_t npad = ((uint32_t)n + 3) & ~3u;
                    memset(p + 4 + n, 0, npad - n);
                    memset(p + 4 + npad, 0, 4); /* opt_endofopt */
                    optlen = 4 + npad + 4;
                    if (shed) shed_marked++; else new_flows++;
                }
            }
        }
        uint32_t total = 32 + padded + optlen;
        epb_header(o, total, if_id, ts, cap, orig);
        wr32(d + padded + optlen, total);
        o += total;
        captured += cap;
        off += next;
    }
    if (_PyBytes_Resize(&bytes, o - out) == 0) {
        result = Py_BuildValue("(NIKIiI)", bytes, num, captured, new_flows, full, shed_marked);
        bytes = NULL;  /* the tuple holds it now */
    }
done:
    Py_XDECREF(bytes);
    PyMem_Free(fps);
    PyBuffer_Release(&ring);
    PyBuffer_Release(&table);
    return result;
}

static int dns_plausible(const unsigned char *p, uint32_t n) {
    /* kstap/dissect/dns.py plausible(): one question and sane counts */
    if (n < 17) return 0;
    uint16_t flags = be16(p + 2), qd = be16(p + 4);
    int opcode = (flags >> 11) & 0xF;
    if (qd != 1 || !(opcode == 0 || opcode == 1 || opcode == 2 || opcode == 4 || opcode == 5) || p[12] > 63)
        return 0;
    if (!(flags & 0x8000))
        return p[6] == 0 && p[7] == 0 && p[8] == 0 && p[9] == 0 && be16(p + 10) <= 2;
    return 1;
}

static int dissect_wants(const unsigned char *f, uint32_t n, int linktype) {
    if (linktype != 1) return 1;
    if (n < 14) return 0;
    uint32_t off = 14;
    uint16_t et = be16(f + 12);
    for (int i = 0; i < 2; i++)
        if ((et == 0x8100 || et == 0x88A8) && n >= off + 4) { et = be16(f + off + 2); off += 4; }
    uint32_t l4, end;
    int proto;
    if (et == 0x0800) {
        if (n < off + 20) return 0;
        uint32_t ihl = (f[off] & 0x0F) * 4u, total = be16(f + off + 2);
        if ((be16(f + off + 6) & 0x3FFF) || ihl < 20) return 0;  /* fragments are not reassembled */
        proto = f[off + 9];
        l4 = off + ihl;
        end = total >= ihl ? off + total : n;
    } else if (et == 0x86DD) {
        if (n < off + 40) return 0;
        uint32_t plen = be16(f + off + 4);
        proto = f[off + 6];
        l4 = off + 40;
        end = plen ? l4 + plen : n;
        for (int hops = 0; (proto == 0 || proto == 43 || proto == 60) && hops < 4 && n >= l4 + 2; hops++) {
            proto = f[l4];
            l4 += (f[l4 + 1] + 1u) * 8;
        }
    } else {
        return 0;
    }
    if (proto == 6) return n >= l4 + 20;
    if (proto != 17 || n < l4 + 8) return 0;
    if (be16(f + l4) == 53 || be16(f + l4 + 2) == 53) return 1;
    if (end > n) end = n;
    return end > l4 + 8 && dns_plausible(f + l4 + 8, end - l4 - 8);
}

static int append_wanted(PyObject *list, const unsigned char *d, uint32_t cap, uint32_t orig,
                         unsigned long long ts, unsigned int if_id) {
    /* a PacketRecord: (ts_ns, caplen, origlen, data, if_id, worker) */
    PyObject *rec = Py_BuildValue("(KIIy#Ii)", ts, cap, orig, (const char *)d, (Py_ssize_t)cap, if_id, 0);
    if (!rec) return -1;
    int rc = PyList_Append(list, rec);
    Py_DECREF(rec);
    return rc;
}

/* table_compact(old, new, cutoff_ns) -> count: copy the slots seen at or after cutoff */
static PyObject *table_compact(PyObject *self, PyObject *args) {
    Py_buffer a, b;
    unsigned long long cutoff;
    if (!PyArg_ParseTuple(args, "w*w*K", &a, &b, &cutoff)) return NULL;
    uint64_t *src = (uint64_t *)a.buf, *dst = (uint64_t *)b.buf;
    PyObject *res = NULL;
    if (a.len < 32 || b.len < 32 || dst[1] == 0 || (dst[1] & (dst[1] - 1)) ||
        (Py_ssize_t)((dst[1] + 1) * 16) > b.len || (Py_ssize_t)((src[1] + 1) * 16) > a.len) {
        PyErr_SetString(PyExc_ValueError, "bad tables");
        goto out;
    }
    dst[0] = 0;
    for (uint64_t i = 0; i < src[1]; i++) {
        uint64_t *slot = src + 2 * (1 + i);
        if (slot[0] && slot[1] >= cutoff) {
            if (table_touch(dst, slot[0], slot[1]) < 0) break;
        }
    }
    res = PyLong_FromUnsignedLongLong(dst[0]);
out:
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return res;
}

/* ---------------------------------------------------------------------------------------------
 * -i any's fast path: a TPACKET_V3 block of a cooked (SOCK_DGRAM) socket → EPBs of LINUX_SLL2
 * frames, with the copies one packet leaves on several interfaces removed. The twin is
 * kstap.capture.cooked.CookedSource._read_blocks + kstap.dedup (same rule: the same
 * network bytes, IPv4 TTL/checksum and IPv6 hop limit masked, on another interface within the
 * window; tests check both give the same packets). Seen packets live in a caller-owned table of
 * 24-byte slots (64-bit digest, timestamp ns, ifindex); slot 0 is the header (unused, capacity).
 * A slot older than the window counts as free; when the probes find none, the oldest is
 * replaced (a copy of that packet may then be kept: never a packet lost). */
#define COOKED_PROBES 8
#define SLL2_LEN 20

static uint64_t packet_digest(uint16_t proto, const unsigned char *p, uint32_t n, uint32_t origlen) {
    unsigned char head[16] = {0};
    uint32_t h16 = n < 16 ? n : 16;
    memcpy(head, p, h16);
    if (proto == 0x0800 && n >= 20 && (p[0] >> 4) == 4) { head[8] = 0; head[10] = 0; head[11] = 0; }
    else if (proto == 0x86DD && n >= 40 && (p[0] >> 4) == 6) head[7] = 0;
    uint64_t h = mix64(0x9E3779B97F4A7C15ull ^ ((uint64_t)proto << 32 | origlen));
    uint64_t w;
    memcpy(&w, head, 8); h = mix64(h ^ w);
    memcpy(&w, head + 8, 8); h = mix64(h ^ w);
    uint32_t i = 16;
    for (; i + 8 <= n; i += 8) { memcpy(&w, p + i, 8); h = mix64(h ^ w); }
    if (i < n) { w = 0; memcpy(&w, p + i, n - i); h = mix64(h ^ w ^ ((uint64_t)(n - i) << 56)); }
    return h ? h : 1;
}

/* 1 when (key, another ifindex) was seen within the window: a copy; else records it, returns 0 */
static int cooked_seen(uint64_t *t, uint64_t key, uint64_t ts, uint32_t ifindex, uint64_t window) {
    uint64_t mask = t[1] - 1, i = key & mask, victim = i, oldest = UINT64_MAX;
    for (int probe = 0; probe < COOKED_PROBES; probe++, i = (i + 1) & mask) {
        uint64_t *slot = t + 3 * (1 + i);
        int live = slot[0] && (ts < slot[1] || ts - slot[1] <= window);
        if (live && slot[0] == key) {
            if ((uint32_t)slot[2] != ifindex) return 1;
            slot[1] = ts;
            return 0;
        }
        if (!live) { victim = i; oldest = 0; break; }
        if (slot[1] < oldest) { oldest = slot[1]; victim = i; }
    }
    uint64_t *slot = t + 3 * (1 + victim);
    slot[0] = key; slot[1] = ts; slot[2] = ifindex;
    return 0;
}

/* encode_cooked_block(ring, boff, bsize, if_id, maxp, table, window_ns)
 *   -> (epb_bytes, packets_written, captured_bytes, packets_read, duplicates) */
static PyObject *encode_cooked_block(PyObject *self, PyObject *args) {
    Py_buffer ring, table;
    Py_ssize_t boff, bsize, maxp;
    unsigned int if_id;
    unsigned long long window;
    if (!PyArg_ParseTuple(args, "y*nnInw*K", &ring, &boff, &bsize, &if_id, &maxp, &table, &window))
        return NULL;
    PyObject *result = NULL;
    unsigned char *out = NULL;
    uint64_t *t = (uint64_t *)table.buf;
    if (boff < 0 || bsize < 48 || boff + bsize > ring.len || table.len < 48 || !t[1] || (t[1] & (t[1] - 1)) ||
        (Py_ssize_t)((t[1] + 1) * 24) > table.len) {
        PyErr_SetString(PyExc_ValueError, "bad ring or table");
        goto done;
    }
    const unsigned char *blk = (const unsigned char *)ring.buf + boff;
    uint32_t num = rd32(blk + 12), first = rd32(blk + 16);
    if (maxp >= 0 && (Py_ssize_t)num > maxp) num = (uint32_t)maxp;
    Py_ssize_t cap_out = 0, off = first;
    for (uint32_t i = 0; i < num; i++) {  /* pass 1: validate, size the output */
        if (off < 0 || off + 48 + 20 > bsize) { PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block"); goto done; }
        const unsigned char *h = blk + off;
        uint32_t next = rd32(h), snap = rd32(h + 12);
        uint16_t mac = rd16(h + 24);
        if (off + mac + (Py_ssize_t)snap > bsize) { PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block"); goto done; }
        cap_out += 32 + ((SLL2_LEN + 4 + snap + 3) & ~3u);
        if (i + 1 < num) {
            if (next == 0) { PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block"); goto done; }
            off += next;
        }
    }
    out = PyMem_Malloc(cap_out ? cap_out : 1);
    if (!out) { PyErr_NoMemory(); goto done; }
    unsigned char *o = out;
    unsigned long long captured = 0;
    unsigned int written = 0, dups = 0;
    off = first;
    for (uint32_t i = 0; i < num; i++) {
        const unsigned char *h = blk + off;
        const unsigned char *ll = h + 48;  /* struct sockaddr_ll after TPACKET_ALIGN(sizeof(tpacket3_hdr)) */
        uint32_t next = rd32(h), sec = rd32(h + 4), nsec = rd32(h + 8), snap = rd32(h + 12), len = rd32(h + 16);
        uint32_t status = rd32(h + 20);
        const unsigned char *data = h + rd16(h + 24);
        uint16_t proto = be16(ll + 2);
        uint32_t ifindex = rd32(ll + 4);
        unsigned long long ts = (unsigned long long)sec * 1000000000ull + nsec;
        off += next;
        if (window && cooked_seen(t, packet_digest(proto, data, snap, len), ts, ifindex, window)) { dups++; continue; }
        unsigned char *d = o + 28;
        uint16_t hatype = rd16(ll + 8), outer = proto;
        uint32_t extra = 0;
        if (status & TP_STATUS_VLAN_VALID) {
            outer = (status & TP_STATUS_VLAN_TPID_VALID) ? rd16(h + 32) : 0x8100;
            uint16_t tci = (uint16_t)rd32(h + 28);
            d[SLL2_LEN] = tci >> 8; d[SLL2_LEN + 1] = tci & 0xff;
            d[SLL2_LEN + 2] = proto >> 8; d[SLL2_LEN + 3] = proto & 0xff;
            extra = 4;
        }
        d[0] = outer >> 8; d[1] = outer & 0xff; d[2] = 0; d[3] = 0;
        d[4] = ifindex >> 24; d[5] = (ifindex >> 16) & 0xff; d[6] = (ifindex >> 8) & 0xff; d[7] = ifindex & 0xff;
        d[8] = hatype >> 8; d[9] = hatype & 0xff; d[10] = ll[10]; d[11] = ll[11];
        memcpy(d + 12, ll + 12, 8);
        memcpy(d + SLL2_LEN + extra, data, snap);
        uint32_t cap = SLL2_LEN + extra + snap, padded = (cap + 3) & ~3u, total = 32 + padded;
        memset(d + cap, 0, padded - cap);
        epb_header(o, total, if_id, ts, cap, len + SLL2_LEN + extra);
        wr32(d + padded, total);
        o += total;
        captured += cap;
        written++;
    }
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)out, o - out);
    if (bytes) result = Py_BuildValue("(NIKII)", bytes, written, captured, num, dups);
done:
    PyMem_Free(out);
    PyBuffer_Release(&ring);
    PyBuffer_Release(&table);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_block", encode_block, METH_VARARGS, "Encode one TPACKET_V3 block as pcapng EPBs."},
    {"encode_block_sampled", encode_block_sampled, METH_VARARGS,
     "Encode one block as EPBs, commenting each flow's first packet (percentage mode)."},
    {"table_compact", table_compact, METH_VARARGS, "Copy the flows seen since a cutoff into a new table."},
    {"encode_cooked_block", encode_cooked_block, METH_VARARGS,
     "Encode one cooked-socket block as LINUX_SLL2 EPBs, removing copies seen on other interfaces (-i any)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ringfast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ringfast(void) { return PyModule_Create(&module); }
