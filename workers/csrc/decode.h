/*
 * decode.h: the C twin of workers/decode.py (link, IP and transport decode) and of the parts of
 * workers/dns.py that find the question name. Header-only, so the capture process (dispatch key)
 * and the worker (batch scan) compile the same code.
 *
 * Must answer exactly as the Python reference does: the same Packet fields, the same skip reason
 * for every malformed frame (tests/test_fastpath.py compares them frame by frame). Reads only
 * inside [p, p + caplen); never allocates; bounded work per frame.
 *
 * Must not know about trails, events or where frames came from.
 */
#ifndef MALTRAIL_DECODE_H
#define MALTRAIL_DECODE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* skip reasons: the order of workers.decode.SKIP_REASONS */
enum {
    MT_OK = -1,
    MT_SKIP_UNSUPPORTED_LINKTYPE = 0,
    MT_SKIP_TRUNCATED_LINK,
    MT_SKIP_NOT_IP,
    MT_SKIP_TOO_MANY_TAGS,
    MT_SKIP_TRUNCATED_IP,
    MT_SKIP_BAD_IP,
    MT_SKIP_FRAGMENT,
    MT_SKIP_TRUNCATED_TRANSPORT,
    MT_SKIP_IPV6_EXT,
    MT_SKIP_COUNT
};

#define MT_MAX_VLAN_TAGS 8
#define MT_MAX_IPV6_EXT 8

typedef struct {
    int version;            /* 4 or 6 */
    uint8_t src[16];        /* IPv4 in the first 4 bytes */
    uint8_t dst[16];
    int proto;
    uint16_t sport, dport;
    uint8_t tcp_flags;
    uint32_t tcp_seq;       /* 0 unless TCP */
    int icmp_type;          /* -1 unless ICMP/ICMPv6 */
    uint32_t payload_off;   /* transport payload: p[payload_off, payload_off + payload_len) */
    uint32_t payload_len;
} mt_packet;

static inline uint16_t mt_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t mt_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

#define MT_ETH_IPV4 0x0800
#define MT_ETH_IPV6 0x86DD

/* PPP protocol field at off (with protocol-field compression); sets *ethertype and *off. */
static inline int mt_ppp(const uint8_t *p, uint32_t n, uint32_t *off, uint32_t *ethertype)
{
    uint32_t o = *off, proto;
    if (n < o + 1)
        return MT_SKIP_TRUNCATED_LINK;
    if (p[o] & 1) {
        proto = p[o];
        o += 1;
    } else {
        if (n < o + 2)
            return MT_SKIP_TRUNCATED_LINK;
        proto = mt_be16(p + o);
        o += 2;
    }
    *ethertype = proto == 0x0021 ? MT_ETH_IPV4 : proto == 0x0057 ? MT_ETH_IPV6 : 0;
    *off = o;
    return MT_OK;
}

static inline int mt_ethertype_dispatch(const uint8_t *p, uint32_t n, uint32_t ethertype, uint32_t off,
                                        uint32_t *out_type, uint32_t *out_off)
{
    int tags = 0;
    while (ethertype == 0x8100 || ethertype == 0x88A8 || ethertype == 0x9100) {
        if (++tags > MT_MAX_VLAN_TAGS)
            return MT_SKIP_TOO_MANY_TAGS;
        if (n < off + 4)
            return MT_SKIP_TRUNCATED_LINK;
        ethertype = mt_be16(p + off + 2);
        off += 4;
    }
    if (ethertype == 0x8864) { /* PPPoE session: 6-byte header, then the PPP protocol */
        if (n < off + 8)
            return MT_SKIP_TRUNCATED_LINK;
        off += 6;
        int r = mt_ppp(p, n, &off, &ethertype);
        if (r != MT_OK)
            return r;
    }
    *out_type = ethertype;
    *out_off = off;
    return MT_OK;
}

static inline uint32_t mt_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* Link layer -> (network protocol, offset). */
static inline int mt_link(const uint8_t *p, uint32_t n, int linktype, uint32_t *ethertype, uint32_t *off)
{
    switch (linktype) {
    case 1: /* Ethernet */
        if (n < 14)
            return MT_SKIP_TRUNCATED_LINK;
        return mt_ethertype_dispatch(p, n, mt_be16(p + 12), 14, ethertype, off);
    case 101: case 12: case 14: /* raw IP */
        if (n < 1)
            return MT_SKIP_TRUNCATED_IP;
        *ethertype = (p[0] >> 4) == 4 ? MT_ETH_IPV4 : (p[0] >> 4) == 6 ? MT_ETH_IPV6 : 0;
        *off = 0;
        return MT_OK;
    case 228:
        *ethertype = MT_ETH_IPV4;
        *off = 0;
        return MT_OK;
    case 229:
        *ethertype = MT_ETH_IPV6;
        *off = 0;
        return MT_OK;
    case 113: /* Linux SLL */
        if (n < 16)
            return MT_SKIP_TRUNCATED_LINK;
        return mt_ethertype_dispatch(p, n, mt_be16(p + 14), 16, ethertype, off);
    case 276: { /* Linux SLL2 */
        if (n < 20)
            return MT_SKIP_TRUNCATED_LINK;
        uint32_t proto = mt_be16(p);
        if (proto == 0x8100 || proto == 0x88A8 || proto == 0x9100 || proto == 0x8864)
            return mt_ethertype_dispatch(p, n, proto, 20, ethertype, off);
        *ethertype = proto;
        *off = 20;
        return MT_OK;
    }
    case 0: case 108: { /* NULL (host order) / LOOP (network order) */
        if (n < 4)
            return MT_SKIP_TRUNCATED_LINK;
        uint32_t family = linktype == 0 ? mt_le32(p) : mt_be32(p);
        if (family > 0xFFFF)
            family = linktype == 0 ? mt_be32(p) : mt_le32(p);
        *ethertype = family == 2 ? MT_ETH_IPV4
                   : (family == 10 || family == 24 || family == 28 || family == 30) ? MT_ETH_IPV6 : 0;
        *off = 4;
        return MT_OK;
    }
    case 9: { /* PPP */
        if (n < 4)
            return MT_SKIP_TRUNCATED_LINK;
        uint32_t o = (p[0] == 0xFF && p[1] == 0x03) ? 2 : 0;
        int r = mt_ppp(p, n, &o, ethertype);
        *off = o;
        return r;
    }
    case 104: /* Cisco HDLC */
        if (n < 4)
            return MT_SKIP_TRUNCATED_LINK;
        *ethertype = mt_be16(p + 2);
        *off = 4;
        return MT_OK;
    default:
        return MT_SKIP_UNSUPPORTED_LINKTYPE;
    }
}

static inline int mt_transport(const uint8_t *p, uint32_t pos, uint32_t end, int proto, mt_packet *pk)
{
    pk->proto = proto;
    pk->sport = pk->dport = 0;
    pk->tcp_flags = 0;
    pk->tcp_seq = 0;
    pk->icmp_type = -1;
    pk->payload_off = 0;
    pk->payload_len = 0;
    if (proto == 6) {
        if (end < pos + 20)
            return MT_SKIP_TRUNCATED_TRANSPORT;
        pk->sport = mt_be16(p + pos);
        pk->dport = mt_be16(p + pos + 2);
        pk->tcp_seq = mt_be32(p + pos + 4);
        uint32_t doff = (uint32_t)(p[pos + 12] >> 4) * 4;
        pk->tcp_flags = p[pos + 13];
        uint32_t start = pos + (doff > 20 ? doff : 20);
        if (start < end) {
            pk->payload_off = start;
            pk->payload_len = end - start;
        }
        return MT_OK;
    }
    if (proto == 17) {
        if (end < pos + 8)
            return MT_SKIP_TRUNCATED_TRANSPORT;
        pk->sport = mt_be16(p + pos);
        pk->dport = mt_be16(p + pos + 2);
        pk->payload_off = pos + 8;
        pk->payload_len = end - (pos + 8);
        return MT_OK;
    }
    if (proto == 1 || proto == 58) {
        if (end < pos + 4)
            return MT_SKIP_TRUNCATED_TRANSPORT;
        pk->icmp_type = p[pos];
        pk->payload_off = pos + 4;
        pk->payload_len = end - (pos + 4);
        return MT_OK;
    }
    return MT_OK;
}

static inline int mt_ipv4(const uint8_t *p, uint32_t n, uint32_t off, mt_packet *pk)
{
    if (n < off + 20)
        return MT_SKIP_TRUNCATED_IP;
    uint32_t vihl = p[off], ihl = (vihl & 0x0F) * 4;
    if ((vihl >> 4) != 4 || ihl < 20)
        return MT_SKIP_BAD_IP;
    if (n < off + ihl)
        return MT_SKIP_TRUNCATED_IP;
    if (mt_be16(p + off + 6) & 0x1FFF)
        return MT_SKIP_FRAGMENT;
    uint32_t total = mt_be16(p + off + 2), end = n;
    if (ihl <= total && total < n - off)
        end = off + total;
    pk->version = 4;
    memset(pk->src, 0, 16);
    memset(pk->dst, 0, 16);
    memcpy(pk->src, p + off + 12, 4);
    memcpy(pk->dst, p + off + 16, 4);
    return mt_transport(p, off + ihl, end, p[off + 9], pk);
}

static inline int mt_ipv6(const uint8_t *p, uint32_t n, uint32_t off, mt_packet *pk)
{
    if (n < off + 40)
        return MT_SKIP_TRUNCATED_IP;
    if ((p[off] >> 4) != 6)
        return MT_SKIP_BAD_IP;
    uint32_t payload_len = mt_be16(p + off + 4);
    int nxt = p[off + 6];
    uint32_t end = n;
    if (payload_len && off + 40 + payload_len < end)
        end = off + 40 + payload_len;
    uint64_t pos = off + 40;
    int i;
    for (i = 0; i < MT_MAX_IPV6_EXT + 1; i++) {
        if (nxt == 0 || nxt == 43 || nxt == 60 || nxt == 135 || nxt == 139 || nxt == 140) {
            if (end < pos + 8)
                return MT_SKIP_IPV6_EXT;
            int next = p[pos];
            pos += ((uint64_t)p[pos + 1] + 1) * 8;
            nxt = next;
        } else if (nxt == 44) {
            if (end < pos + 8)
                return MT_SKIP_IPV6_EXT;
            if (mt_be16(p + pos + 2) & 0xFFF8)
                return MT_SKIP_FRAGMENT;
            nxt = p[pos];
            pos += 8;
        } else if (nxt == 51) {
            if (end < pos + 8)
                return MT_SKIP_IPV6_EXT;
            int next = p[pos];
            pos += ((uint64_t)p[pos + 1] + 2) * 4;
            nxt = next;
        } else {
            break;
        }
    }
    if (i == MT_MAX_IPV6_EXT + 1)
        return MT_SKIP_IPV6_EXT;
    if (pos > end)
        return MT_SKIP_IPV6_EXT;
    pk->version = 6;
    memcpy(pk->src, p + off + 8, 16);
    memcpy(pk->dst, p + off + 24, 16);
    return mt_transport(p, (uint32_t)pos, end, nxt, pk);
}

/* The frame -> a packet (MT_OK) or a skip reason. */
static inline int mt_decode(const uint8_t *p, uint32_t n, int linktype, mt_packet *pk)
{
    uint32_t ethertype = 0, off = 0;
    int r = mt_link(p, n, linktype, &ethertype, &off);
    if (r != MT_OK)
        return r;
    if (ethertype == MT_ETH_IPV4)
        return mt_ipv4(p, n, off, pk);
    if (ethertype == MT_ETH_IPV6)
        return mt_ipv6(p, n, off, pk);
    return MT_SKIP_NOT_IP;
}

/* The orientation rule of workers.pipeline.client_is_src. */
/* ICMP messages that answer something their receiver sent (workers/pipeline.py _ICMP_ANSWERS):
 * ICMP echo/timestamp/information/address-mask replies and errors (3, 4, 5, 11, 12); ICMPv6
 * errors (1-4) and echo reply. */
static inline int mt_icmp_answer(int proto, int type)
{
    if (proto == 1)
        return type >= 0 && type < 32 && ((0x55839u >> type) & 1);
    if (proto == 58)
        return (type >= 1 && type <= 4) || type == 129;
    return 0;
}

/* workers/flow.py client_is_src: 1 when the packet's source started the conversation */
static inline int mt_client_is_src(const mt_packet *pk)
{
    if (pk->proto == 6) {
        if (pk->tcp_flags & 0x02)
            return !(pk->tcp_flags & 0x10);
        if (!(pk->tcp_flags & 0x14))
            return 1; /* no ACK, no RST: a probe (NULL/FIN/XMAS), sent by the side that starts */
        if ((pk->tcp_flags & 0x14) == 0x14 && pk->tcp_seq == 0)
            return 0; /* RST+ACK with sequence 0 answers a segment without ACK (RFC 9293 3.10.7.1) */
    }
    if (pk->sport || pk->dport)
        return pk->sport >= pk->dport;
    return !mt_icmp_answer(pk->proto, pk->icmp_type);
}

/* workers/flow.py dispatch_is_src: whose address keys a non-DNS packet's worker (the client's;
 * for UDP the sender's) */
static inline int mt_dispatch_is_src(const mt_packet *pk)
{
    return pk->proto == 17 || mt_client_is_src(pk);
}

/* ---- DNS names (workers/dns.py parse_name) ------------------------------------------------ */

#define MT_MAX_NAME 255
#define MT_MAX_POINTER_HOPS 32

/* Decodes the name at pos of a DNS message; writes it lower-cased (ASCII letters only, as Python's
 * str.lower() does on Latin-1 text... except non-ASCII letters, see below) into out (at least
 * MT_MAX_NAME + 1 bytes), sets *after to the position following the name. Returns the name's
 * length, or -1 when malformed. Bytes >= 0x80 are kept as they are and the function reports
 * *nonascii = 1: such names never match a trail, but Python's lower() would change some of them,
 * so callers that need exact equality with the reference hand those to Python. */
static inline int mt_dns_name(const uint8_t *m, uint32_t n, uint32_t pos, uint8_t *out, uint32_t *after,
                              int *nonascii)
{
    uint32_t total = 0, len = 0;
    int hops = 0, have_end = 0;
    *nonascii = 0;
    for (;;) {
        if (pos >= n)
            return -1;
        uint32_t l = m[pos];
        if (l == 0) {
            if (!have_end) {
                *after = pos + 1;
                have_end = 1;
            }
            break;
        }
        uint32_t kind = l & 0xC0;
        if (kind == 0xC0) {
            if (pos + 1 >= n)
                return -1;
            uint32_t target = ((l & 0x3F) << 8) | m[pos + 1];
            if (!have_end) {
                *after = pos + 2;
                have_end = 1;
            }
            if (++hops > MT_MAX_POINTER_HOPS || target >= pos)
                return -1;
            pos = target;
            continue;
        }
        if (kind)
            return -1;
        if (pos + 1 + l > n)
            return -1;
        total += l + 1;
        if (total + 1 > MT_MAX_NAME)
            return -1;
        if (len)
            out[len++] = '.';
        for (uint32_t i = 0; i < l; i++) {
            uint8_t c = m[pos + 1 + i];
            if (c >= 'A' && c <= 'Z')
                c += 32;
            else if (c >= 0x80)
                *nonascii = 1;
            out[len++] = c;
        }
        pos += 1 + l;
    }
    out[len] = 0;
    return (int)len;
}

#endif /* MALTRAIL_DECODE_H */
