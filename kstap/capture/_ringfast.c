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
/* tpacket3_hdr.hv1 (linux/if_packet.h): tp_rxhash at 28, tp_vlan_tci at 32, tp_vlan_tpid at 36 */
#define HV1_VLAN_TCI 32
#define HV1_VLAN_TPID 36

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
        uint16_t tci = (uint16_t)rd32(h + HV1_VLAN_TCI), tpid = rd16(h + HV1_VLAN_TPID);
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
    if (cap & 3) memset(d + cap, 0, 4 - (cap & 3));
    return cap;
}


/* --entries: which packets a dissector would take (kstap/dissect/stage.py): TCP segments (any port:
 * detection reads the payload), UDP to or from port 53, or whose payload passes dns.plausible().
 * Everything else only goes to the file, so it never becomes a Python object. Link types other
 * than Ethernet and LINUX_SLL2 are all "wanted" (the Python stage decides). */
static int dissect_wants(const unsigned char *f, uint32_t len, int linktype);
static int append_wanted(PyObject *list, const unsigned char *d, uint32_t cap, uint32_t orig,
                         unsigned long long ts, unsigned int if_id);

/* The first pass over a block walks its packets one header at a time; the kernel wrote them on
 * another CPU, so each is a cache miss. Ask for the bytes a little ahead (packets sit in order;
 * a prefetch never faults, past the block's end too). */
static inline void ring_ahead(const unsigned char *h) {
    __builtin_prefetch(h + 1024, 0, 3);
    __builtin_prefetch(h + 1088, 0, 3);
}

/* A ring packet's stamp (tpacket3_hdr's tp_sec, tp_nsec) in nanoseconds. */
static inline uint64_t ring_ts(const unsigned char *h) { return (uint64_t)rd32(h + 4) * 1000000000ull + rd32(h + 8); }

static inline void epb_header(unsigned char *o, uint32_t total, uint32_t if_id, unsigned long long ts,
                              uint32_t cap, uint32_t orig) {
    wr32(o, 6); wr32(o + 4, total); wr32(o + 8, if_id);
    wr32(o + 12, (uint32_t)(ts >> 32)); wr32(o + 16, (uint32_t)ts);
    wr32(o + 20, cap); wr32(o + 24, orig);
}

/* ---------------------------------------------------------------------------------------------
 * Where an encoder writes its n output bytes. Without the caller's buffer (*obj NULL): a new bytes
 * object. With one (*obj a bytearray, written from pos on): that bytearray, grown to fit (to
 * twice its size at least: it never shrinks), or, while a view of it is still alive, a new one
 * holding its first pos bytes (what a view shows never changes under it). *owned says whether
 * *obj is a new reference. Reusing one buffer keeps the output's memory mapped and in cache: a new
 * object per block larger than glibc's mmap threshold is a fresh mapping, page faults and zeroing
 * included, and the threshold moves with every larger block (docs/benchmarks.md). Returns where to
 * write, or NULL with an exception set. */
static unsigned char *output_at(PyObject **obj, int *owned, Py_ssize_t pos, Py_ssize_t n) {
    *owned = 0;
    if (*obj == NULL) {
        *obj = PyBytes_FromStringAndSize(NULL, n);
        if (!*obj) return NULL;
        *owned = 1;
        return (unsigned char *)PyBytes_AS_STRING(*obj);
    }
    if (!PyByteArray_CheckExact(*obj) || pos < 0 || pos > PyByteArray_GET_SIZE(*obj)) {
        PyErr_SetString(PyExc_ValueError, "out must be a bytearray holding at least pos bytes");
        *obj = NULL;
        return NULL;
    }
    Py_ssize_t size = PyByteArray_GET_SIZE(*obj), want = pos + n;
    Py_ssize_t grown = size >= want ? size : (want > 2 * size ? want : 2 * size);
    if (((PyByteArrayObject *)*obj)->ob_exports > 0) {
        PyObject *fresh = PyByteArray_FromStringAndSize(NULL, grown);
        if (!fresh) { *obj = NULL; return NULL; }
        memcpy(PyByteArray_AS_STRING(fresh), PyByteArray_AS_STRING(*obj), pos);
        *obj = fresh;
        *owned = 1;
    } else if (grown > size && PyByteArray_Resize(*obj, grown) < 0) {
        *obj = NULL;
        return NULL;
    }
    return (unsigned char *)PyByteArray_AS_STRING(*obj) + pos;
}

/* The result tuple's first item: the output object (a new reference either way). */
static PyObject *output_ref(PyObject *obj, int owned) {
    if (!owned) Py_INCREF(obj);
    return obj;
}

/* encode_block(ring, block_offset, block_size, if_id, max_packets[, wanted, linktype, out, pos])
 *   -> (epb_bytes, packets, captured_bytes, last_ts_ns)
 * With out (a bytearray): the EPBs go into it at pos (output_at), and the result is
 *   (the bytearray written, packets, captured_bytes, last_ts_ns, end). */
static PyObject *encode_block(PyObject *self, PyObject *args) {
    Py_buffer ring;
    Py_ssize_t boff, bsize, maxp;
    unsigned int if_id;
    PyObject *wanted = NULL, *out_obj = NULL;
    int linktype = 1;
    Py_ssize_t pos = 0;
    if (!PyArg_ParseTuple(args, "y*nnIn|OiOn", &ring, &boff, &bsize, &if_id, &maxp, &wanted, &linktype,
                          &out_obj, &pos))
        return NULL;
    if (out_obj == Py_None) out_obj = NULL;
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
        ring_ahead(h);
        uint32_t next = rd32(h), snap = rd32(h + 12), status = rd32(h + 20);
        uint16_t mac = rd16(h + 24);
        if (off + mac + (Py_ssize_t)snap > bsize) goto corrupt;
        if (status & TP_STATUS_VLAN_VALID) snap += 4;
        out_len += 32 + ((snap + 3) & ~3u);
        if (i + 1 < num) { if (next == 0) goto corrupt; off += next; }
    }
    int owned;
    PyObject *out = out_obj;
    unsigned char *o = output_at(&out, &owned, pos, out_len);
    if (!o) { PyBuffer_Release(&ring); return NULL; }

    /* pass 2: write the EPBs */
    unsigned long long captured = 0, last_ts = 0;
    off = first;
    for (uint32_t i = 0; i < num; i++) {
        const unsigned char *h = blk + off;
        uint32_t next = rd32(h), orig;
        unsigned long long ts;
        uint32_t cap = copy_frame(h, o + 28, &orig, &ts);
        if (wanted && dissect_wants(o + 28, cap, linktype) && append_wanted(wanted, o + 28, cap, orig, ts, if_id) < 0) {
            if (owned) Py_DECREF(out);
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
    if (out_obj)
        return Py_BuildValue("(NIKKn)", output_ref(out, owned), num, captured, last_ts, pos + out_len);
    return Py_BuildValue("(NIKK)", out, num, captured, last_ts);

corrupt:
    PyBuffer_Release(&ring);
    PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block");
    return NULL;
}


/* ---------------------------------------------------------------------------------------------
 * Percentage mode's fast path: the kernel already dropped unsampled flows; what is left to do per
 * packet is to notice each flow's first packet and put kstap's "flow" comment on it. The flow key
 * (VXLAN/Geneve followed to the inner packet, as kstap/linklayer.py does) and the seeded flow hash
 * are the same as kstap/sampling/flowkey.py and flowhash.py, so the comment names the flow the
 * kernel decided (tests check the ids against the Python function). Seen flows live in a
 * caller-owned open-addressing table: 16-byte slots (64-bit key fingerprint, last-seen ns); slot 0
 * is the header (count, capacity); after the slots, one u32 per slot: the flow's hash (the kernel
 * flow table's key for it).
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

/* A frame being keyed: its captured bytes and the packet's real length. The kernel's filter keyed
 * the whole packet; a key that needs a byte the snaplen cut off (past n, before len) may not be the
 * kernel's, and says so in cut. Offsets are the ring's (without a tag the kernel moved to metadata). */
typedef struct {
    const unsigned char *f;
    uint32_t n, len;
    int cut;
} View;

/* Are the bytes before end captured? (Noting a header the snaplen cut.) */
static inline int has(View *v, uint32_t end) {
    if (end <= v->n) return 1;
    if (end <= v->len) v->cut = 1;
    return 0;
}

static inline int is_vlan(uint16_t et) { return et == 0x8100 || et == 0x88A8; }

/* The Ethernet header at start and up to `tags` VLAN tags after it (kstap.linklayer._ethernet):
 * the offset of what follows, *et its ethertype; 0 when a header is cut short. */
static uint32_t ethernet(View *v, uint32_t start, int tags, uint16_t *et) {
    if (!has(v, start + 14)) return 0;
    uint32_t off = start + 14;
    *et = be16(v->f + start + 12);
    for (int i = 0; i < tags && is_vlan(*et); i++) {
        if (!has(v, off + 4)) return 0;
        *et = be16(v->f + off + 2);
        off += 4;
    }
    return off;
}

#define MAX_TUNNELS 2   /* kstap.linklayer.MAX_TUNNELS */
#define ETH_TRANSPARENT 0x6558
static inline int is_tunnel_port(uint16_t port) { return port == 4789 || port == 8472 || port == 6081; }

/* When the IP packet at *off is a VXLAN or Geneve datagram kstap follows, move *et and *off to its
 * inner packet and return 1; else 0 (plain UDP, or not UDP). Test for test the rule of
 * kstap.linklayer._tunnel, which the kernel's tail applies too: to port 4789/8472, the I flag and a
 * whole inner Ethernet header (tags included); to 6081, version 0, options ending inside the packet
 * and Ethernet (whole) or IPv4/IPv6 (one byte at least); never an outer IPv4 fragment. */
static int tunnel(View *v, uint16_t *et, uint32_t *off) {
    const unsigned char *f = v->f;
    uint32_t o = *off, l4, inner;
    if (*et == 0x0800) {
        if (!has(v, o + 20) || f[o + 9] != 17 || (be16(f + o + 6) & 0x3FFF)) return 0;
        l4 = o + (f[o] & 0x0Fu) * 4;
    } else {
        if (!has(v, o + 40) || f[o + 6] != 17) return 0;
        l4 = o + 40;
    }
    if (l4 + 4 <= v->n && !is_tunnel_port(be16(f + l4 + 2))) return 0;  /* not cut: any length says no */
    if (!has(v, l4 + 8)) return 0;
    uint16_t dport = be16(f + l4 + 2), e;
    uint32_t body = l4 + 8;
    if (dport == 4789 || dport == 8472) {
        if (!has(v, body + 8 + 14) || !(f[body] & 0x08)) return 0;
        inner = ethernet(v, body + 8, 2, &e);
    } else if (dport == 6081) {
        if (!has(v, body + 8) || f[body] >> 6) return 0;
        uint32_t start = body + 8 + (f[body] & 0x3Fu) * 4;
        e = be16(f + body + 2);
        if (e == ETH_TRANSPARENT) inner = ethernet(v, start, 2, &e);
        else inner = (e == 0x0800 || e == 0x86DD) && has(v, start + 1) ? start : 0;
    } else {
        return 0;
    }
    if (!inner) return 0;
    *et = e;
    *off = inner;
    return 1;
}

/* The innermost network header (kstap.linklayer.network): its offset (0: none), *et its ethertype.
 * `tagged`: the kernel moved the outer 802.1Q tag into metadata; it counts as the first of the two
 * tags read (the file has it back in place, where Python reads it). */
static uint32_t network(View *v, int tagged, uint16_t *et) {
    uint32_t off = ethernet(v, 0, tagged ? 1 : 2, et);
    for (int i = 0; off && i < MAX_TUNNELS && (*et == 0x0800 || *et == 0x86DD); i++)
        if (!tunnel(v, et, &off)) break;
    return off;
}

/* *k for the endpoints (src, sp) and (dst, dp) in the canonical order: the lower address
 * (bytewise, as memcmp) first, then the lower port */
static inline void set_key(Key *k, int proto, int words, const unsigned char *src, uint16_t sp,
                           const unsigned char *dst, uint16_t dp) {
    int c = 0;
    for (int i = 0; i < words && !c; i++) {
        uint32_t x = be32(src + 4 * i), y = be32(dst + 4 * i);
        c = (x > y) - (x < y);
    }
    int src_first = c < 0 || (c == 0 && sp <= dp);
    k->proto = proto; k->words = words;
    if (src_first) { k->a = src; k->ap = sp; k->b = dst; k->bp = dp; }
    else { k->a = dst; k->ap = dp; k->b = src; k->bp = sp; }
}

/* 1 = IP flow found, 0 = no flow (non-IP or a truncated header): kstap.sampling.flowkey.key_tuple */
static int parse_key(View *v, int tagged, Key *k) {
    uint16_t et;
    uint32_t off = network(v, tagged, &et);
    if (!off) return 0;
    const unsigned char *f = v->f, *src, *dst;
    uint32_t l4;
    int proto, frag = 0, words;
    if (et == 0x0800) {
        if (!has(v, off + 20)) return 0;
        proto = f[off + 9];
        frag = be16(f + off + 6) & 0x3FFF;
        src = f + off + 12; dst = f + off + 16; words = 1;
        l4 = off + (f[off] & 0x0F) * 4;
    } else if (et == 0x86DD) {
        if (!has(v, off + 40)) return 0;
        proto = f[off + 6];
        src = f + off + 8; dst = f + off + 24; words = 4;
        l4 = off + 40;
    } else {
        return 0;
    }
    uint16_t sp = 0, dp = 0;
    if ((proto == 6 || proto == 17 || proto == 132) && !frag && has(v, l4 + 4)) {
        sp = be16(f + l4); dp = be16(f + l4 + 2);
    }
    set_key(k, proto, words, src, sp, dst, dp);
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

static inline uint64_t fingerprint(const Key *k) {
    /* 64 bits of the canonical key, a word pair at a time (table-internal, never stored outside the
     * process: it only has to be fast and collide rarely); 0 is reserved for empty slots */
    uint64_t h = ((uint64_t)k->proto << 32 | (uint64_t)k->ap << 16 | k->bp) * 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < k->words; i++) {
        uint32_t wa, wb;
        memcpy(&wa, k->a + 4 * i, 4);
        memcpy(&wb, k->b + 4 * i, 4);
        h = mix64(h ^ ((uint64_t)wa << 32 | wb));
    }
    return h ? h : 1;
}

/* 1 when the flow was not in the table (now inserted), 0 when seen; -1 when the table is full.
 * *before gets the last-seen time the slot had (0 for a new flow), *index the slot's number. */
static int table_touch_was(uint64_t *t, uint64_t fp, uint64_t now, uint64_t *before, uint64_t *index) {
    uint64_t cap = t[1];
    uint64_t mask = cap - 1;
    uint64_t i = fp & mask;
    *before = 0;
    for (uint64_t probes = 0; probes < cap; probes++) {
        uint64_t *slot = t + 2 * (1 + i);
        if (slot[0] == fp) { *before = slot[1]; slot[1] = now; *index = i; return 0; }
        if (slot[0] == 0) {
            if ((t[0] + 1) * 4 > cap * 3) return -1;
            slot[0] = fp; slot[1] = now; t[0]++;
            *index = i;
            return 1;
        }
        i = (i + 1) & mask;
    }
    return -1;
}

/* After the slots: one 32-bit flow hash per slot (what the kernel flow table keys the flow by). */
static inline uint32_t *table_hashes(uint64_t *t) { return (uint32_t *)(t + 2 * (1 + t[1])); }
static inline Py_ssize_t table_bytes(uint64_t cap) { return (Py_ssize_t)((cap + 1) * 16 + cap * 4); }

/* A table buffer whose header holds a power-of-two capacity that fits it. */
static int check_table(const Py_buffer *b) {
    const uint64_t *t = (const uint64_t *)b->buf;
    return b->len >= 32 && t[1] && !(t[1] & (t[1] - 1)) && table_bytes(t[1]) <= b->len;
}

/* The flow key of the frame a packet becomes in the file (the key Python reads there), read in
 * place from the ring: a tag the kernel moved into metadata is taken as read, not copied back (a
 * TPID other than 802.1Q/802.1ad puts no IP header after it: no flow). *cut: the key needed bytes
 * past the snaplen (see View). */
static int frame_key(const unsigned char *h, Key *k, int *cut) {
    uint32_t status = rd32(h + 20);
    View v = {h + rd16(h + 24), rd32(h + 12), rd32(h + 16), 0};
    int tagged = (status & TP_STATUS_VLAN_VALID) != 0;
    if (tagged && (status & TP_STATUS_VLAN_TPID_VALID) && !is_vlan(rd16(h + HV1_VLAN_TPID))) return 0;
    int found = parse_key(&v, tagged, k);
    *cut = v.cut;
    return found;
}

/* The common frame's key without the general walk: untagged Ethernet, IPv4 (no options needed
 * past the ports) or IPv6, whole headers captured, and not a UDP datagram to a tunnel port. Returns
 * 1 with *k exactly as frame_key gives it (and nothing cut), or 0: frame_key decides. */
static inline int quick_key(const unsigned char *h, Key *k) {
    if (rd32(h + 20) & TP_STATUS_VLAN_VALID) return 0;
    const unsigned char *f = h + rd16(h + 24), *src, *dst;
    uint32_t n = rd32(h + 12), l4;
    uint16_t et = be16(f + 12);
    int proto, ported, words;
    if (et == 0x0800) {
        if (n < 34 || (f[14] & 0x0F) < 5) return 0;
        proto = f[23];
        ported = !(be16(f + 20) & 0x3FFF);
        l4 = 14 + (f[14] & 0x0Fu) * 4;
        src = f + 26; dst = f + 30; words = 1;
    } else if (et == 0x86DD) {
        if (n < 54) return 0;
        proto = f[20];
        ported = 1;
        l4 = 54;
        src = f + 22; dst = f + 38; words = 4;
    } else {
        return 0;
    }
    uint16_t sp = 0, dp = 0;
    if ((proto == 6 || proto == 17 || proto == 132) && ported) {
        if (n < l4 + 4) return 0;
        sp = be16(f + l4); dp = be16(f + l4 + 2);
        if (proto == 17 && is_tunnel_port(dp)) return 0;
    }
    set_key(k, proto, words, src, sp, dst, dp);
    return 1;
}

/* per packet, from pass 1 to the writing pass: its offset in the block and, once looked up, 0 (no
 * comment) or NOTE_FLOW / NOTE_SHED | the flow hash (before that: the key's fingerprint) */
#define NOTE_FLOW (1ull << 32)
#define NOTE_SHED (2ull << 32)
#define LOOKAHEAD 32
typedef struct { uint64_t note; uint32_t off; } Pkt;
typedef struct { unsigned long long bytes; unsigned int new_flows, shed_marked, keyed, cut; int full; } Tally;
typedef struct {
    uint64_t *table;
    const unsigned char *blk;
    uint32_t seed;
    unsigned long long shed_threshold, shed_ns;
    uint32_t flow_opt, shed_opt;
    unsigned char *kbuf;  /* set: the ring is a cooked socket's (-i any), keyed by cooked_key into it */
    PyObject *grown;      /* the table the lookups grew into (a new reference), NULL while none */
} Lookup;

static void copy_flows(const uint64_t *src, uint64_t *dst, uint64_t cutoff);

/* Double the lookups' table once more than half of it would be in use (probes stay short), into a
 * new bytearray that the encoder hands back: the caller's table is exported to the call and cannot
 * be resized. So a table is as big as its flows need, not as the number of packets in a block
 * could need (before, each call grew it to hold every packet of the block as a new flow: 32,768
 * slots for a block of 9,000 packets of 500 flows). Should the allocation fail, the table fills on
 * to table_touch_was's three quarters, past which a new flow gets no comment and `full` is set. */
static void make_room(Lookup *lk) {
    uint64_t *t = lk->table;
    if ((t[0] + 1) * 2 <= t[1]) return;
    uint64_t cap = t[1] * 2;
    PyObject *obj = PyByteArray_FromStringAndSize(NULL, table_bytes(cap));
    if (!obj) { PyErr_Clear(); return; }
    uint64_t *bigger = (uint64_t *)PyByteArray_AS_STRING(obj);
    memset(bigger, 0, (size_t)table_bytes(cap));
    bigger[1] = cap;
    copy_flows(t, bigger, 0);
    Py_XDECREF(lk->grown);
    lk->grown = obj;
    lk->table = bigger;
}

static int cooked_key(const unsigned char *h, Key *k, int *cut, unsigned char *buf);

/* The table lookup of one keyed packet: its note replaces its fingerprint. */
static inline void look_up(Lookup *lk, Pkt *p, Tally *tally) {
    uint64_t fp = p->note, before, index = 0;
    if (!fp) return;
    p->note = 0;
    make_room(lk);
    const unsigned char *h = lk->blk + p->off;
    uint64_t ts = ring_ts(h);
    int fresh = table_touch_was(lk->table, fp, ts, &before, &index);
    if (fresh < 0) { tally->full = 1; return; }
    /* a flow seen before the shed, back after it: the one packet the kernel lets through? */
    int maybe_shed = fresh == 0 && lk->shed_threshold < (1ull << 32) && ts >= lk->shed_ns && before < lk->shed_ns;
    if (!fresh && !maybe_shed) return;
    Key k;
    int cut;
    if (lk->kbuf) cooked_key(h, &k, &cut, lk->kbuf);
    else frame_key(h, &k, &cut);
    uint32_t fh = flow_hash(&k, lk->seed);
    if (fresh) {
        table_hashes(lk->table)[index] = fh;
        p->note = NOTE_FLOW | fh;
        tally->bytes += lk->flow_opt;
        tally->new_flows++;
    } else if (fh >= lk->shed_threshold) {
        p->note = NOTE_SHED | fh;
        tally->bytes += lk->shed_opt;
        tally->shed_marked++;
    }
}

/* A packet that got a note, by its place in the block (encode_block_sampled's list of them). */
typedef struct { uint64_t note; uint32_t index; } Noted;

/* Look up the packet `index` waiting in `slot`; a note goes to the list (allocated for `num` at
 * the first). -1 with MemoryError set when that allocation fails. */
static inline int settle(Lookup *lk, Pkt *slot, uint32_t index, Tally *tally, Noted **noted,
                         uint32_t *n_noted, uint32_t num) {
    look_up(lk, slot, tally);
    if (!slot->note) return 0;
    if (!*noted && !(*noted = PyMem_Malloc(num * sizeof(Noted)))) { PyErr_NoMemory(); return -1; }
    (*noted)[*n_noted].note = slot->note;
    (*noted)[(*n_noted)++].index = index;
    return 0;
}

/* The bytes of write_note's option with a suffix of tail_len bytes: 4-byte header +
 * "kstap: flow id=XXXXXXXX " (24) + the suffix, padded, + opt_endofopt. */
static inline uint32_t note_opt_len(Py_ssize_t tail_len) { return 4 + ((24 + (uint32_t)tail_len + 3) & ~3u) + 4; }

/* The comment option of a packet whose note is NOTE_FLOW / NOTE_SHED | hash, written at p:
 * "kstap: flow id=%08x <suffix>" (or shed and its suffix), padded, then opt_endofopt, without
 * snprintf (one per new flow adds up). Returns its length (note_opt_len of its suffix). */
static uint32_t write_note(unsigned char *p, uint64_t note, const char *suffix, Py_ssize_t suffix_len,
                           const char *shed_suffix, Py_ssize_t shed_suffix_len) {
    static const char hex[] = "0123456789abcdef";
    int shed = (note & NOTE_SHED) != 0;
    uint32_t fh = (uint32_t)note;
    const char *tail = shed ? shed_suffix : suffix;
    uint32_t tail_len = (uint32_t)(shed ? shed_suffix_len : suffix_len), n = 24 + tail_len;
    p[0] = 1; p[1] = 0; p[2] = (unsigned char)(n & 0xff); p[3] = (unsigned char)(n >> 8);
    memcpy(p + 4, shed ? "kstap: shed id=" : "kstap: flow id=", 15);
    for (int sh = 28, j = 19; sh >= 0; sh -= 4, j++) p[j] = hex[(fh >> sh) & 0xf];
    p[27] = ' ';
    memcpy(p + 28, tail, tail_len);
    uint32_t npad = (n + 3) & ~3u;
    memset(p + 4 + n, 0, npad - n + 4);  /* padding, then opt_endofopt */
    return note_opt_len(tail_len);
}

/* encode_block_sampled(ring, boff, bsize, if_id, maxp, table, seed, suffix
 *                      [, wanted, linktype, shed_threshold, shed_ns, shed_suffix, bound_ns, out, pos])
 *   -> (epb_bytes, packets, captured_bytes, new_flows, table_full, shed_marked, keyed, cut_keys, table)
 * With out: as encode_block's (the bytearray written first, end just before table).
 * table (a writable buffer, a bytearray to grow) comes back last: the one passed, or the bigger
 * bytearray the lookups moved to (make_room); the caller keeps that one from then on.
 * After an emergency shed in the kernel flow table (kstap/sampling/kernel_table.py) the kernel lets
 * exactly one more packet of each shed flow through: the first packet at or after shed_ns of a flow
 * this table last saw before shed_ns whose hash is >= shed_threshold. It gets the "shed" comment.
 *
 * bound_ns (default: none): a packet stamped later cannot be a flow's first packet (the kernel flow
 * table decided no new flow since, kstap/capture/flowtable.py says why), so it is neither keyed nor
 * looked up. keyed counts the packets keyed, with or without a flow (the others skipped the table);
 * cut_keys those whose key needed bytes past the snaplen (View: the kernel, which read them, may have
 * keyed them otherwise).
 *
 * Two passes: (1) validate, key each packet and look its flow up, sizing the output exactly; (2)
 * write the EPBs. Sizing exactly matters:
 * an output sized for a comment on every packet and shrunk afterwards is a fresh mmap per block
 * for glibc (the shrunk size is what its mmap threshold learns), whose page faults cost more than
 * the whole flow table (0.04 us per packet at 200 kpps, docs/benchmarks.md). */
static PyObject *encode_block_sampled(PyObject *self, PyObject *args) {
    Py_buffer ring, table = {0};
    PyObject *table_obj;
    Py_ssize_t boff, bsize, maxp;
    unsigned int if_id, seed;
    const char *suffix;
    Py_ssize_t suffix_len;
    PyObject *wanted = NULL;
    int linktype = 1;
    unsigned long long shed_threshold = 1ull << 32, shed_ns = 0;
    const char *shed_suffix = "";
    Py_ssize_t shed_suffix_len = 0;
    unsigned long long bound = UINT64_MAX;
    PyObject *out_obj = NULL;
    Py_ssize_t pos = 0;
    if (!PyArg_ParseTuple(args, "y*nnInOIs#|OiKKs#KOn", &ring, &boff, &bsize, &if_id, &maxp, &table_obj, &seed,
                          &suffix, &suffix_len, &wanted, &linktype, &shed_threshold, &shed_ns, &shed_suffix,
                          &shed_suffix_len, &bound, &out_obj, &pos))
        return NULL;
    if (wanted == Py_None) wanted = NULL;
    if (out_obj == Py_None) out_obj = NULL;
    PyObject *result = NULL;
    PyObject *bytes = NULL;
    int owned = 0;
    Noted *noted = NULL;
    uint32_t n_noted = 0;
    Lookup lk = {0};
    if (PyObject_GetBuffer(table_obj, &table, PyBUF_WRITABLE) < 0) goto done;
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
    if (!check_table(&table)) {
        PyErr_SetString(PyExc_ValueError, "table header is not a power-of-two capacity");
        goto done;
    }
    const unsigned char *blk = (const unsigned char *)ring.buf + boff;
    uint32_t num = rd32(blk + 12), first = rd32(blk + 16);
    if (maxp >= 0 && (Py_ssize_t)num > maxp) num = (uint32_t)maxp;
    uint32_t flow_opt = note_opt_len(suffix_len), shed_opt = note_opt_len(shed_suffix_len);
    Py_ssize_t off = first;
    /* pass 1: validate and key each packet, fetching its flow's slot; the slot of the packet
     * LOOKAHEAD before is in cache by then (a random slot per packet otherwise costs a memory
     * access each), so that packet is looked up in the table now. A flow's first packet (or a shed
     * flow's last) gets a comment: the output is sized exactly. The packets waiting for their
     * lookup sit in a window of LOOKAHEAD on the stack; the few that get a note go to a list,
     * allocated at the first note (a block with no flow's first packet needs none). */
    Py_ssize_t out_len = 0;
    Tally tally = {0, 0, 0, 0, 0, 0};
    lk = (Lookup){t, blk, seed, shed_threshold, shed_ns, flow_opt, shed_opt, NULL, NULL};
    Pkt win[LOOKAHEAD];
    for (uint32_t i = 0; i < num; i++) {
        if (off < 0 || off + 48 > bsize) { PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block"); goto done; }
        const unsigned char *h = blk + off;
        ring_ahead(h);
        uint32_t next = rd32(h), snap = rd32(h + 12), status = rd32(h + 20);
        uint16_t mac = rd16(h + 24);
        if (off + mac + (Py_ssize_t)snap > bsize) { PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block"); goto done; }
        Key k;
        uint64_t ts = ring_ts(h);
        uint64_t fp = 0;
        int cut = 0, found = 0;
        if (ts <= bound) {
            /* a frame with no key counts as cut too: the kernel may have keyed its first packet */
            found = quick_key(h, &k) || frame_key(h, &k, &cut);
            tally.keyed++;
            tally.cut += cut;
        }
        if (found) {
            fp = fingerprint(&k);
            __builtin_prefetch(lk.table + 2 * (1 + (fp & (lk.table[1] - 1))), 1, 3);
        }
        Pkt *slot = &win[i % LOOKAHEAD];  /* the packet LOOKAHEAD before this one, until now */
        if (i >= LOOKAHEAD && settle(&lk, slot, i - LOOKAHEAD, &tally, &noted, &n_noted, num) < 0) goto done;
        slot->note = fp;
        slot->off = (uint32_t)off;
        if (status & TP_STATUS_VLAN_VALID) snap += 4;
        out_len += 32 + ((snap + 3) & ~3u);
        if (i + 1 < num) {
            if (next == 0) { PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block"); goto done; }
            off += next;
        }
    }
    for (uint32_t i = num > LOOKAHEAD ? num - LOOKAHEAD : 0; i < num; i++)
        if (settle(&lk, &win[i % LOOKAHEAD], i, &tally, &noted, &n_noted, num) < 0) goto done;
    out_len += tally.bytes;
    unsigned int new_flows = tally.new_flows, shed_marked = tally.shed_marked;
    int full = tally.full;
    bytes = out_obj;
    unsigned char *o = output_at(&bytes, &owned, pos, out_len);
    if (!o) goto done;
    unsigned long long captured = 0;
    uint32_t next_noted = 0;
    /* pass 3: the EPBs */
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
        uint32_t optlen = 0;
        uint64_t note = 0;
        if (next_noted < n_noted && noted[next_noted].index == i) note = noted[next_noted++].note;
        if (note) optlen = write_note(d + padded, note, suffix, suffix_len, shed_suffix, shed_suffix_len);
        uint32_t total = 32 + padded + optlen;
        epb_header(o, total, if_id, ts, cap, orig);
        wr32(d + padded + optlen, total);
        o += total;
        captured += cap;
        off += next;
    }
    PyObject *ended = lk.grown ? lk.grown : table_obj;  /* the table the lookups ended in */
    if (out_obj)
        result = Py_BuildValue("(NIKIiIIInO)", output_ref(bytes, owned), num, captured, new_flows, full, shed_marked,
                               tally.keyed, tally.cut, pos + out_len, ended);
    else
        result = Py_BuildValue("(NIKIiIIIO)", bytes, num, captured, new_flows, full, shed_marked, tally.keyed,
                               tally.cut, ended);
    bytes = NULL;  /* the tuple holds it now (or it was released with a failed build) */
done:
    if (owned) Py_XDECREF(bytes);
    PyMem_Free(noted);
    Py_XDECREF(lk.grown);
    PyBuffer_Release(&ring);
    if (table.obj) PyBuffer_Release(&table);
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
    uint32_t off;
    uint16_t et;
    if (linktype == 1) {  /* Ethernet: the ethertype at 12 */
        if (n < 14) return 0;
        off = 14; et = be16(f + 12);
    } else if (linktype == 276) {  /* LINUX_SLL2 (-i any): the protocol at 0, a VLAN tag after the 20 bytes */
        if (n < 20) return 0;
        off = 20; et = be16(f);
    } else {
        return 1;
    }
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

/* The flows of src seen at or after cutoff, with their hashes, into dst (empty, as big or bigger). */
static void copy_flows(const uint64_t *src, uint64_t *dst, uint64_t cutoff) {
    const uint32_t *src_hash = table_hashes((uint64_t *)src);
    uint32_t *dst_hash = table_hashes(dst);
    for (uint64_t i = 0; i < src[1]; i++) {
        const uint64_t *slot = src + 2 * (1 + i);
        uint64_t before, index;
        if (slot[0] && slot[1] >= cutoff) {
            if (table_touch_was(dst, slot[0], slot[1], &before, &index) < 0) break;
            dst_hash[index] = src_hash[i];
        }
    }
}

/* table_compact(old, new, cutoff_ns) -> count: copy the slots seen at or after cutoff (with their
 * flow hashes) */
static PyObject *table_compact(PyObject *self, PyObject *args) {
    Py_buffer a, b;
    unsigned long long cutoff;
    if (!PyArg_ParseTuple(args, "w*w*K", &a, &b, &cutoff)) return NULL;
    uint64_t *src = (uint64_t *)a.buf, *dst = (uint64_t *)b.buf;
    PyObject *res = NULL;
    if (!check_table(&a) || !check_table(&b)) {
        PyErr_SetString(PyExc_ValueError, "bad tables");
        goto out;
    }
    dst[0] = 0;
    copy_flows(src, dst, cutoff);
    res = PyLong_FromUnsignedLongLong(dst[0]);
out:
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return res;
}

/* table_stale(table, cutoff_ns) -> [(slot, flow_hash)]: the flows last seen before cutoff */
static PyObject *table_stale(PyObject *self, PyObject *args) {
    Py_buffer a;
    unsigned long long cutoff;
    if (!PyArg_ParseTuple(args, "w*K", &a, &cutoff)) return NULL;
    PyObject *res = NULL;
    if (!check_table(&a)) {
        PyErr_SetString(PyExc_ValueError, "bad table");
        goto out;
    }
    uint64_t *t = (uint64_t *)a.buf;
    uint32_t *hashes = table_hashes(t);
    res = PyList_New(0);
    for (uint64_t i = 0; res && i < t[1]; i++) {
        uint64_t *slot = t + 2 * (1 + i);
        if (!slot[0] || slot[1] >= cutoff) continue;
        PyObject *item = Py_BuildValue("(KI)", (unsigned long long)i, hashes[i]);
        if (!item || PyList_Append(res, item) < 0) { Py_XDECREF(item); Py_CLEAR(res); break; }
        Py_DECREF(item);
    }
out:
    PyBuffer_Release(&a);
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

/* The slot a digest's probes start at: prefetched LOOKAHEAD packets before the probe, since a
 * random slot of the 3 MiB table is a cache (and TLB) miss per packet otherwise. */
static inline uint64_t *cooked_slot(uint64_t *t, uint64_t key) { return t + 3 * (1 + (key & (t[1] - 1))); }

/* The copy check of the packet at p->off (its digest in p->note): p->note becomes 0 for a copy. */
static inline int cooked_drop_copy(uint64_t *t, const unsigned char *blk, Pkt *p, uint64_t window) {
    const unsigned char *h = blk + p->off;
    unsigned long long ts = ring_ts(h);
    if (!cooked_seen(t, p->note, ts, rd32(h + 48 + 4), window)) return 0;
    p->note = 0;
    return 1;
}

/* A dedup table buffer as encode_cooked_block's callers own it: 24-byte slots after a header whose
 * second word is a power-of-two capacity that fits. */
static int check_dedup(const Py_buffer *b) {
    const uint64_t *d = (const uint64_t *)b->buf;
    return b->len >= 48 && d[1] && !(d[1] & (d[1] - 1)) && (Py_ssize_t)((d[1] + 1) * 24) <= b->len;
}

/* Pass 1's first step on the i-th of num packets of a cooked block, at *off: validate it, note its
 * offset in p and, with a window, its digest in p->note, prefetching its dedup slot (else note 1:
 * kept); move *off to the next packet. 0: the block is corrupt. */
static inline int cooked_digest(const unsigned char *blk, Py_ssize_t bsize, Py_ssize_t *off, uint32_t i,
                                uint32_t num, uint64_t *d, uint64_t window, Pkt *p) {
    if (*off < 0 || *off + 48 + 20 > bsize) return 0;
    const unsigned char *h = blk + *off;
    ring_ahead(h);
    uint32_t next = rd32(h), snap = rd32(h + 12);
    uint16_t mac = rd16(h + 24);
    if (*off + mac + (Py_ssize_t)snap > bsize) return 0;
    p->off = (uint32_t)*off;
    p->note = 1;  /* kept, unless found a copy */
    if (window) {
        p->note = packet_digest(be16(h + 48 + 2), h + mac, snap, rd32(h + 16));
        uint64_t *slot = cooked_slot(d, p->note);
        __builtin_prefetch(slot, 1, 3);
        __builtin_prefetch(slot + 8, 1, 3);
    }
    if (i + 1 < num) {
        if (next == 0) return 0;
        *off += next;
    }
    return 1;
}

/* The bytes a cooked packet's EPB takes (its LINUX_SLL2 frame, a tag from metadata put back). */
static inline Py_ssize_t sll2_epb_len(const unsigned char *h) {
    return 32 + ((SLL2_LEN + (rd32(h + 20) & TP_STATUS_VLAN_VALID ? 4 : 0) + rd32(h + 12) + 3) & ~3u);
}

/* The LINUX_SLL2 frame of a cooked packet at d (its header, the VLAN tag the kernel moved into
 * metadata put back after it, the packet), zero-padded to 32 bits. Returns the captured length;
 * *orig gets the original length. */
static uint32_t write_sll2(const unsigned char *h, unsigned char *d, uint32_t *orig) {
    const unsigned char *ll = h + 48;  /* struct sockaddr_ll after TPACKET_ALIGN(sizeof(tpacket3_hdr)) */
    uint32_t snap = rd32(h + 12), len = rd32(h + 16), status = rd32(h + 20);
    const unsigned char *data = h + rd16(h + 24);
    uint16_t proto = be16(ll + 2), hatype = rd16(ll + 8), outer = proto;
    uint32_t ifindex = rd32(ll + 4), extra = 0;
    if (status & TP_STATUS_VLAN_VALID) {
        outer = (status & TP_STATUS_VLAN_TPID_VALID) ? rd16(h + HV1_VLAN_TPID) : 0x8100;
        uint16_t tci = (uint16_t)rd32(h + HV1_VLAN_TCI);
        d[SLL2_LEN] = tci >> 8; d[SLL2_LEN + 1] = tci & 0xff;
        d[SLL2_LEN + 2] = proto >> 8; d[SLL2_LEN + 3] = proto & 0xff;
        extra = 4;
    }
    d[0] = outer >> 8; d[1] = outer & 0xff; d[2] = 0; d[3] = 0;
    d[4] = ifindex >> 24; d[5] = (ifindex >> 16) & 0xff; d[6] = (ifindex >> 8) & 0xff; d[7] = ifindex & 0xff;
    d[8] = hatype >> 8; d[9] = hatype & 0xff; d[10] = ll[10]; d[11] = ll[11];
    memcpy(d + 12, ll + 12, 8);
    memcpy(d + SLL2_LEN + extra, data, snap);
    uint32_t cap = SLL2_LEN + extra + snap, padded = (cap + 3) & ~3u;
    memset(d + cap, 0, padded - cap);
    *orig = len + SLL2_LEN + extra;
    return cap;
}

/* encode_cooked_block(ring, boff, bsize, if_id, maxp, table, window_ns[, out, pos])
 *   -> (epb_bytes, packets_written, captured_bytes, packets_read, duplicates)
 * With out: as encode_block's (the bytearray written first, end last).
 * Two passes, as encode_block_sampled: (1) validate, digest each packet and check it for a copy
 * (the probes run LOOKAHEAD packets behind the digests, whose slots are prefetched meanwhile, in
 * packet order, so the result is the same as one packet at a time), sizing the output exactly;
 * (2) write the packets kept straight into the bytes object. */
static PyObject *encode_cooked_block(PyObject *self, PyObject *args) {
    Py_buffer ring, table;
    Py_ssize_t boff, bsize, maxp;
    unsigned int if_id;
    unsigned long long window;
    PyObject *out_obj = NULL;
    Py_ssize_t pos = 0;
    if (!PyArg_ParseTuple(args, "y*nnInw*K|On", &ring, &boff, &bsize, &if_id, &maxp, &table, &window, &out_obj, &pos))
        return NULL;
    if (out_obj == Py_None) out_obj = NULL;
    PyObject *result = NULL, *bytes = NULL;
    int owned = 0;
    Pkt *pkts = NULL;
    uint64_t *t = (uint64_t *)table.buf;
    if (boff < 0 || bsize < 48 || boff + bsize > ring.len || !check_dedup(&table)) {
        PyErr_SetString(PyExc_ValueError, "bad ring or table");
        goto done;
    }
    const unsigned char *blk = (const unsigned char *)ring.buf + boff;
    uint32_t num = rd32(blk + 12), first = rd32(blk + 16);
    if (maxp >= 0 && (Py_ssize_t)num > maxp) num = (uint32_t)maxp;
    pkts = num ? PyMem_Malloc(sizeof(Pkt) * num) : NULL;
    if (num && !pkts) { PyErr_NoMemory(); goto done; }
    Py_ssize_t out_len = 0, off = first;
    unsigned int dups = 0;
    for (uint32_t i = 0; i < num; i++) {  /* pass 1 */
        if (!cooked_digest(blk, bsize, &off, i, num, t, window, &pkts[i])) {
            PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block");
            goto done;
        }
        if (window && i >= LOOKAHEAD) dups += cooked_drop_copy(t, blk, &pkts[i - LOOKAHEAD], window);
        out_len += sll2_epb_len(blk + pkts[i].off);
    }
    for (uint32_t i = num > LOOKAHEAD ? num - LOOKAHEAD : 0; window && i < num; i++)
        dups += cooked_drop_copy(t, blk, &pkts[i], window);
    for (uint32_t i = 0; dups && i < num; i++)
        if (!pkts[i].note) out_len -= sll2_epb_len(blk + pkts[i].off);
    bytes = out_obj;
    unsigned char *o = output_at(&bytes, &owned, pos, out_len);
    if (!o) goto done;
    unsigned long long captured = 0;
    unsigned int written = 0;
    for (uint32_t i = 0; i < num; i++) {  /* pass 2 */
        if (!pkts[i].note) continue;
        const unsigned char *h = blk + pkts[i].off;
        unsigned long long ts = ring_ts(h);
        unsigned char *d = o + 28;
        uint32_t orig, cap = write_sll2(h, d, &orig), total = 32 + ((cap + 3) & ~3u);
        epb_header(o, total, if_id, ts, cap, orig);
        wr32(d + total - 32, total);
        o += total;
        captured += cap;
        written++;
    }
    if (out_obj)
        result = Py_BuildValue("(NIKIIn)", output_ref(bytes, owned), written, captured, num, dups, pos + out_len);
    else
        result = Py_BuildValue("(NIKII)", bytes, written, captured, num, dups);
    bytes = NULL;
done:
    if (owned) Py_XDECREF(bytes);
    PyMem_Free(pkts);
    PyBuffer_Release(&ring);
    PyBuffer_Release(&table);
    return result;
}


/* -i any with first-packet comments (percentage mode, the kernel flow table) and --entries.
 *
 * The flow key of a cooked packet is read on the frame it becomes in the file, LINUX_SLL2, whose
 * protocol (and a VLAN tag put back from metadata, as write_sll2 does) kstap.linklayer reads as an
 * Ethernet frame's ethertype. So the packet's head goes into buf behind a 14-byte Ethernet header
 * with that protocol (and the tag), and parse_key keys it, tunnels and all. First COOKED_KEY_FIRST
 * bytes (plain TCP/UDP with IP options and a pod flow in VXLAN over IPv4 fit); a key that needs more
 * says so as a cut (View), and when the copy, not the snaplen, cut it, the head is copied on to
 * COOKED_KEY_HEAD, more than parse_key ever reads (two tags, two tunnels with Geneve options, the
 * inner IP header: under 800 bytes), and keyed again. buf holds COOKED_KEY_HEAD bytes. */
#define COOKED_KEY_FIRST 128
#define COOKED_KEY_HEAD 1024
static int cooked_key(const unsigned char *h, Key *k, int *cut, unsigned char *buf) {
    const unsigned char *ll = h + 48, *data = h + rd16(h + 24);
    uint32_t snap = rd32(h + 12), status = rd32(h + 20), n = 14;
    uint16_t proto = be16(ll + 2);
    memset(buf, 0, 12);
    if (status & TP_STATUS_VLAN_VALID) {
        uint16_t tci = (uint16_t)rd32(h + HV1_VLAN_TCI);
        uint16_t tpid = (status & TP_STATUS_VLAN_TPID_VALID) ? rd16(h + HV1_VLAN_TPID) : 0x8100;
        buf[12] = tpid >> 8; buf[13] = tpid & 0xff; buf[14] = tci >> 8; buf[15] = tci & 0xff;
        buf[16] = proto >> 8; buf[17] = proto & 0xff;
        n = 18;
    } else {
        buf[12] = proto >> 8; buf[13] = proto & 0xff;
    }
    uint32_t take = snap < COOKED_KEY_FIRST - n ? snap : COOKED_KEY_FIRST - n;
    memcpy(buf + n, data, take);
    View v = {buf, n + take, n + rd32(h + 16), 0};
    int found = parse_key(&v, 0, k);
    if (v.cut && take < snap) {  /* cut by the copy: the rest of the head, keyed again */
        uint32_t more = snap < COOKED_KEY_HEAD - n ? snap : COOKED_KEY_HEAD - n;
        memcpy(buf + n + take, data + take, more - take);
        v.n = n + more;
        v.cut = 0;
        found = parse_key(&v, 0, k);
    }
    *cut = v.cut;
    return found;
}

/* Per packet of encode_cooked_block_sampled: its copy check (note: the digest, 0 once found a
 * copy) and its flow lookup (note: encode_block_sampled's). */
typedef struct { Pkt copy, flow; } CookedPkt;

/* encode_cooked_block_sampled(ring, boff, bsize, if_id, maxp, dedup, window_ns, table, seed, suffix
 *                             [, wanted, shed_threshold, shed_ns, shed_suffix, bound_ns, out, pos])
 *   -> (epb_bytes, packets_written, captured_bytes, packets_read, duplicates,
 *       new_flows, table_full, shed_marked, keyed, cut_keys, table)
 * With out: as encode_block's (the bytearray written first, end just before table); table as
 * encode_block_sampled's (None when None was passed).
 * encode_cooked_block's copies removed (its dedup table and rule), then, on the packets kept,
 * encode_block_sampled's first-packet comments (table, seed, suffix, the shed mark, the lookup
 * bound, keyed and cut_keys: see there) and --entries' records (wanted, linktype LINUX_SLL2).
 * table None: no comments (--entries in full mode).
 *
 * Pass 1 is a pipeline of three steps LOOKAHEAD packets apart, each on slots the step before
 * prefetched: digest packet i (prefetching its dedup slot); check i - LOOKAHEAD for a copy and,
 * kept, key it (prefetching its flow's slot); look i - 2 LOOKAHEAD up in the flow table. Each step
 * runs in packet order, so the result is that of one packet at a time. Pass 2 writes the EPBs into
 * the bytes object, sized exactly. */
static PyObject *encode_cooked_block_sampled(PyObject *self, PyObject *args) {
    Py_buffer ring, dedup, table = {0};
    Py_ssize_t boff, bsize, maxp;
    unsigned int if_id, seed = 0;
    unsigned long long window;
    PyObject *table_obj, *wanted = NULL;
    const char *suffix = "", *shed_suffix = "";
    Py_ssize_t suffix_len = 0, shed_suffix_len = 0;
    unsigned long long shed_threshold = 1ull << 32, shed_ns = 0, bound = UINT64_MAX;
    PyObject *out_obj = NULL;
    Py_ssize_t pos = 0;
    if (!PyArg_ParseTuple(args, "y*nnInw*KOIs#|OKKs#KOn", &ring, &boff, &bsize, &if_id, &maxp, &dedup, &window,
                          &table_obj, &seed, &suffix, &suffix_len, &wanted, &shed_threshold, &shed_ns,
                          &shed_suffix, &shed_suffix_len, &bound, &out_obj, &pos))
        return NULL;
    if (wanted == Py_None) wanted = NULL;
    if (out_obj == Py_None) out_obj = NULL;
    PyObject *result = NULL, *bytes = NULL;
    int owned = 0;
    CookedPkt *pkts = NULL;
    Lookup lk = {0};
    unsigned char kbuf[COOKED_KEY_HEAD];
    uint64_t *d = (uint64_t *)dedup.buf, *t = NULL;
    if (table_obj != Py_None) {
        if (PyObject_GetBuffer(table_obj, &table, PyBUF_WRITABLE) < 0) goto done;
        if (!check_table(&table)) {
            PyErr_SetString(PyExc_ValueError, "table header is not a power-of-two capacity");
            goto done;
        }
        t = (uint64_t *)table.buf;
    }
    if (wanted && !PyList_Check(wanted)) {
        PyErr_SetString(PyExc_TypeError, "wanted must be a list");
        goto done;
    }
    if (boff < 0 || bsize < 48 || boff + bsize > ring.len || !check_dedup(&dedup) || suffix_len > 200 ||
        shed_suffix_len > 200) {
        PyErr_SetString(PyExc_ValueError, "bad ring, dedup table or suffix");
        goto done;
    }
    const unsigned char *blk = (const unsigned char *)ring.buf + boff;
    uint32_t num = rd32(blk + 12), first = rd32(blk + 16);
    if (maxp >= 0 && (Py_ssize_t)num > maxp) num = (uint32_t)maxp;
    uint32_t flow_opt = note_opt_len(suffix_len), shed_opt = note_opt_len(shed_suffix_len);
    pkts = PyMem_Calloc(num ? num : 1, sizeof(CookedPkt));
    if (!pkts) { PyErr_NoMemory(); goto done; }
    Tally tally = {0, 0, 0, 0, 0, 0};
    lk = (Lookup){t, blk, seed, shed_threshold, shed_ns, flow_opt, shed_opt, kbuf, NULL};
    Py_ssize_t out_len = 0, off = first;
    unsigned int dups = 0;
    for (uint32_t i = 0; i < num + 2 * LOOKAHEAD; i++) {  /* pass 1 */
        if (i < num) {  /* validate, digest */
            if (!cooked_digest(blk, bsize, &off, i, num, d, window, &pkts[i].copy)) {
                PyErr_SetString(PyExc_ValueError, "corrupt TPACKET_V3 block");
                goto done;
            }
            pkts[i].flow.off = pkts[i].copy.off;
        }
        if (i >= LOOKAHEAD && i - LOOKAHEAD < num) {  /* copy check, key */
            CookedPkt *p = &pkts[i - LOOKAHEAD];
            if (window && cooked_drop_copy(d, blk, &p->copy, window)) {
                dups++;
            } else {
                const unsigned char *h = blk + p->copy.off;
                out_len += sll2_epb_len(h);
                uint64_t ts = ring_ts(h);
                Key k;
                int cut = 0;
                if (t && ts <= bound) {
                    /* a frame with no key counts as cut too: the kernel may have keyed its first packet */
                    int found = cooked_key(h, &k, &cut, kbuf);
                    tally.keyed++;
                    tally.cut += cut;
                    if (found) {
                        p->flow.note = fingerprint(&k);
                        __builtin_prefetch(lk.table + 2 * (1 + (p->flow.note & (lk.table[1] - 1))), 1, 3);
                    }
                }
            }
        }
        if (t && i >= 2 * LOOKAHEAD && i - 2 * LOOKAHEAD < num)  /* the flow lookup */
            look_up(&lk, &pkts[i - 2 * LOOKAHEAD].flow, &tally);
    }
    out_len += tally.bytes;
    bytes = out_obj;
    unsigned char *o = output_at(&bytes, &owned, pos, out_len);
    if (!o) goto done;
    unsigned long long captured = 0;
    unsigned int written = 0;
    for (uint32_t i = 0; i < num; i++) {  /* pass 2 */
        if (!pkts[i].copy.note) continue;
        const unsigned char *h = blk + pkts[i].copy.off;
        unsigned char *dd = o + 28;
        uint32_t orig, cap = write_sll2(h, dd, &orig), padded = (cap + 3) & ~3u, optlen = 0;
        unsigned long long ts = ring_ts(h);
        if (wanted && dissect_wants(dd, cap, 276) && append_wanted(wanted, dd, cap, orig, ts, if_id) < 0)
            goto done;
        uint64_t note = pkts[i].flow.note;
        if (note) optlen = write_note(dd + padded, note, suffix, suffix_len, shed_suffix, shed_suffix_len);
        uint32_t total = 32 + padded + optlen;
        epb_header(o, total, if_id, ts, cap, orig);
        wr32(dd + padded + optlen, total);
        o += total;
        captured += cap;
        written++;
    }
    PyObject *ended = lk.grown ? lk.grown : table_obj;  /* the table the lookups ended in (or None) */
    if (out_obj)
        result = Py_BuildValue("(NIKIIIiIIInO)", output_ref(bytes, owned), written, captured, num, dups,
                               tally.new_flows, tally.full, tally.shed_marked, tally.keyed, tally.cut, pos + out_len,
                               ended);
    else
        result = Py_BuildValue("(NIKIIIiIIIO)", bytes, written, captured, num, dups, tally.new_flows, tally.full,
                               tally.shed_marked, tally.keyed, tally.cut, ended);
    bytes = NULL;
done:
    if (owned) Py_XDECREF(bytes);
    PyMem_Free(pkts);
    Py_XDECREF(lk.grown);
    PyBuffer_Release(&ring);
    PyBuffer_Release(&dedup);
    if (table.obj) PyBuffer_Release(&table);
    return result;
}

/* ---------------------------------------------------------------------------------------------
 * A worker's stream (kstap/remote/protocol.py) carries packets as BATCH records, not pcapng:
 * epb_batch(epb_bytes, watermark) -> (batch_body, packets, captured_bytes) rewrites the EPBs one
 * of the encoders above wrote into a BATCH body: u64 watermark, u32 count, then per packet
 * u64 ts_ns, u32 caplen, u32 origlen, u16 if_id, u16 comment_len, the bytes and the comment (the
 * EPB's first opt_comment). Timestamps are the encoders' nanoseconds. The twin is
 * protocol.encode_batch over records; tests check both give the same bytes. */
static inline void put_le(unsigned char *p, uint64_t v, int bytes) {  /* the stream is little-endian */
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static PyObject *epb_batch(PyObject *self, PyObject *args) {
    Py_buffer in;
    unsigned long long watermark;
    if (!PyArg_ParseTuple(args, "y*K", &in, &watermark)) return NULL;
    PyObject *out = NULL, *result = NULL;
    const unsigned char *p = (const unsigned char *)in.buf;
    Py_ssize_t n = in.len, pos = 0;
    /* a record is 12 bytes shorter than its EPB at least (32 + padding + options vs 20) */
    out = PyBytes_FromStringAndSize(NULL, 12 + n);
    if (!out) goto done;
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out), *w = o + 12;
    uint32_t count = 0;
    unsigned long long captured = 0;
    while (pos < n) {
        if (n - pos < 32) goto corrupt;
        const unsigned char *b = p + pos;
        uint32_t type = rd32(b), total = rd32(b + 4), if_id = rd32(b + 8), cap = rd32(b + 20), orig = rd32(b + 24);
        if (type != 6 || total < 32 || total % 4 || total > (uint64_t)(n - pos) || if_id > 0xFFFF ||
            cap > total - 32 || rd32(b + total - 4) != total) goto corrupt;
        uint64_t ts = (uint64_t)rd32(b + 12) << 32 | rd32(b + 16);
        const unsigned char *comment = NULL;
        uint32_t clen = 0, opt = 28 + ((cap + 3) & ~3u);
        while (opt + 4 <= total - 4) {  /* options: code, length, value padded to 4 */
            uint16_t code = rd16(b + opt), len = rd16(b + opt + 2);
            if (code == 0) break;
            if (opt + 4 + len > total - 4) goto corrupt;
            if (code == 1 && !comment) { comment = b + opt + 4; clen = len; }
            opt += 4 + ((len + 3u) & ~3u);
        }
        put_le(w, ts, 8); put_le(w + 8, cap, 4); put_le(w + 12, orig, 4);
        put_le(w + 16, if_id, 2); put_le(w + 18, clen, 2);
        memcpy(w + 20, b + 28, cap);
        if (clen) memcpy(w + 20 + cap, comment, clen);
        w += 20 + cap + clen;
        captured += cap;
        count++;
        pos += total;
    }
    put_le(o, watermark, 8); put_le(o + 8, count, 4);
    if (_PyBytes_Resize(&out, w - o) < 0) goto done;  /* frees out on failure */
    result = Py_BuildValue("(NIK)", out, count, captured);
    out = NULL;
    goto done;
corrupt:
    PyErr_SetString(PyExc_ValueError, "not a run of well-formed EPBs");
done:
    Py_XDECREF(out);
    PyBuffer_Release(&in);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_block", encode_block, METH_VARARGS, "Encode one TPACKET_V3 block as pcapng EPBs."},
    {"encode_block_sampled", encode_block_sampled, METH_VARARGS,
     "Encode one block as EPBs, commenting each flow's first packet (percentage mode)."},
    {"table_compact", table_compact, METH_VARARGS, "Copy the flows seen since a cutoff into a new table."},
    {"table_stale", table_stale, METH_VARARGS, "The (slot, flow hash) of each flow last seen before a cutoff."},
    {"encode_cooked_block", encode_cooked_block, METH_VARARGS,
     "Encode one cooked-socket block as LINUX_SLL2 EPBs, removing copies seen on other interfaces (-i any)."},
    {"encode_cooked_block_sampled", encode_cooked_block_sampled, METH_VARARGS,
     "encode_cooked_block with first-packet comments and the dissectors' records (-i any: percentage, auto, --entries)."},
    {"epb_batch", epb_batch, METH_VARARGS, "Rewrite EPBs as a worker stream's BATCH body."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ringfast", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ringfast(void) { return PyModule_Create(&module); }
