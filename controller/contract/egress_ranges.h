/*
 * Copyright (C) LLMSafeSpace
 *
 * IPv4 ranges a sandbox's granted egress never reaches: the one
 * definition, compiled into the gateway (a create naming an address in
 * them is refused, 422) and into the controller (a name resolving into
 * them is not granted).  Written after IANA's IPv4 Special-Purpose
 * Address Registry (RFC 6890 and its updates) and the cloud metadata
 * addresses.
 *
 * "never" ranges stay refused whatever the operator allows: this host
 * and its loopback, link-local (169.254.169.254, the metadata service),
 * multicast, reserved space and the limited broadcast.  The others
 * (private networks, shared address space, documentation and benchmark
 * networks, ...) are refused unless the operator allows a range that
 * holds them: "llmsafespace_egress_allow" in the gateway and
 * "--egress-allow" in the controller.
 */


#ifndef _LSS_EGRESS_RANGES_H_INCLUDED_
#define _LSS_EGRESS_RANGES_H_INCLUDED_


#include <stdint.h>


typedef struct {
    uint32_t     net;        /* host order */
    int          prefix;
    const char  *cidr;
    const char  *what;
    int          never;      /* not even when an operator allows it */
} lss_egress_range_t;


/* the most specific first: 100.100.100.200 is in 100.64.0.0/10 */
static const lss_egress_range_t  lss_egress_ranges[] = {
    { 0x00000000u, 8, "0.0.0.0/8", "\"this network\"", 1 },
    { 0x7f000000u, 8, "127.0.0.0/8", "loopback", 1 },
    { 0xa9fe0000u, 16, "169.254.0.0/16", "link-local (cloud metadata)", 1 },
    { 0x646464c8u, 32, "100.100.100.200/32", "cloud metadata", 1 },
    { 0xe0000000u, 4, "224.0.0.0/4", "multicast", 1 },
    { 0xf0000000u, 4, "240.0.0.0/4", "reserved (and broadcast)", 1 },
    { 0x0a000000u, 8, "10.0.0.0/8", "private network", 0 },
    { 0xac100000u, 12, "172.16.0.0/12", "private network", 0 },
    { 0xc0a80000u, 16, "192.168.0.0/16", "private network", 0 },
    { 0x64400000u, 10, "100.64.0.0/10", "shared address space (CGNAT)", 0 },
    { 0xc0000000u, 24, "192.0.0.0/24", "IETF protocol assignments", 0 },
    { 0xc0000200u, 24, "192.0.2.0/24", "documentation (TEST-NET-1)", 0 },
    { 0xc6336400u, 24, "198.51.100.0/24", "documentation (TEST-NET-2)", 0 },
    { 0xcb007100u, 24, "203.0.113.0/24", "documentation (TEST-NET-3)", 0 },
    { 0xc6120000u, 15, "198.18.0.0/15", "benchmarking", 0 },
    { 0xc0586300u, 24, "192.88.99.0/24", "6to4 relay anycast", 0 },
    { 0, 0, NULL, NULL, 0 }
};


static inline uint32_t
lss_egress_mask(int prefix)
{
    return prefix == 0 ? 0 : 0xffffffffu << (32 - prefix);
}


/*
 * The range that refuses net/prefix (a host is a /32), or NULL.  "allow"
 * holds "nallow" operator-allowed ranges (net, prefix pairs, host order):
 * a range inside one of them is granted unless it touches a "never" one.
 */
static inline const lss_egress_range_t *
lss_egress_refused(uint32_t net, int prefix, const uint32_t *allow,
    const int *allow_prefix, int nallow)
{
    int                        i, p;
    uint32_t                   m;
    const lss_egress_range_t  *r;

    for (r = lss_egress_ranges; r->cidr != NULL; r++) {
        /* overlap: the shorter prefix's mask matches both */
        p = prefix < r->prefix ? prefix : r->prefix;
        m = lss_egress_mask(p);

        if ((net & m) != (r->net & m)) {
            continue;
        }

        if (r->never) {
            return r;
        }

        for (i = 0; i < nallow; i++) {
            m = lss_egress_mask(allow_prefix[i]);

            if (allow_prefix[i] <= prefix && (net & m) == (allow[i] & m)) {
                break;
            }
        }

        if (i == nallow) {
            return r;
        }
    }

    return NULL;
}


#endif /* _LSS_EGRESS_RANGES_H_INCLUDED_ */
