/*
 * Granted egress (networkAccess.egress) in the local driver.
 *
 * A sandbox without egress keeps the network namespace mkbundle gives it:
 * loopback only, nothing here runs.  One with egress gets one more link,
 * a veth pair: eth0 inside, and on the host lss<hash of the id> (alias:
 * the id), addressed from --egress-subnet, one /30 per uid slot, NATed
 * out.  What may cross the link is decided on the host, never inside, in
 * the nftables table "inet llmsafespace": per sandbox a chain named after
 * its id that accepts exactly (its own address, a granted address, a
 * granted port); everything else arriving from any of our links is
 * refused, forwarded or addressed to the host itself (the input hook:
 * Redis, PostgreSQL, the gateway, other sandboxes' gateways).
 *
 * Names are resolved here, once, at create time (--hosts FILE first,
 * then the host's resolver: /etc/hosts and DNS) and written to the
 * sandbox's /etc/hosts: nothing inside needs a resolver or may send DNS,
 * and a later DNS answer cannot widen the grant.  Addresses no sandbox
 * may ever reach (the host's own, loopback, link-local and so the cloud
 * metadata service, multicast, the egress subnet: other sandboxes) are
 * dropped from the answers; a name left with none fails the create.
 *
 * runc makes the container's network namespace inside its user
 * namespace (sysfs cannot be mounted otherwise), so the link is added by
 * the createRuntime hook runtimes/oci/net-up.  runsc joins a namespace
 * made beforehand, /run/netns/lss-<id>, and copies its link into gVisor's
 * netstack (--network=sandbox, started through runtimes/oci/runsc-net).
 *
 * Every artifact is named after the id.  The marker <bundle>/egress is
 * written before any of them and removed after all of them, so the
 * bundle directory, which orphan detection already scans, outlives them:
 * a crash at any point leaves something that names what to remove.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lsc.h"
#include "../contract/egress_ranges.h"


#define LSC_NFT_TABLE     "inet llmsafespace"
#define LSC_NET_RULES     32          /* the API's limit */
#define LSC_NET_PORTS     16          /* the API's limit */
#define LSC_NET_ADDRS     16          /* kept per name */
#define LSC_NET_DEFAULT   "10.213.0.0/16"
#define LSC_NET_MAX_SLOTS LSC_MAX_SANDBOXES

#if LSC_NET_MAX_SLOTS > 4096
#error "--egress-subnet is at least a /18: 4096 slots of 4 addresses"
#endif


typedef struct {
    char      domain[256];
    uint32_t  addr[LSC_NET_ADDRS];   /* network order */
    int       naddr;
    int       port[LSC_NET_PORTS];
    int       nport;
} lsc_egress_t;


/*
 * The table's shape, rewritten whole at every grant (one transaction,
 * idempotent): the base chains are flushed and refilled, the per-sandbox
 * chains and the elements naming them are left as they are.  Several
 * controllers on one machine share it; each only ever touches its own
 * sandboxes' chains and elements.  Refusals are resets or ICMP errors,
 * so code inside fails at once instead of waiting for a timeout.
 */
static const char  lsc_nft_base[] =
    "add table " LSC_NFT_TABLE "\n"
    "add set " LSC_NFT_TABLE " ifaces { type ifname; }\n"
    "add map " LSC_NFT_TABLE " egress { type ifname : verdict; }\n"
    "add chain " LSC_NFT_TABLE " input"
    " { type filter hook input priority -10; policy accept; }\n"
    "add chain " LSC_NFT_TABLE " forward"
    " { type filter hook forward priority -10; policy accept; }\n"
    "add chain " LSC_NFT_TABLE " postrouting"
    " { type nat hook postrouting priority 100; policy accept; }\n"
    "flush chain " LSC_NFT_TABLE " input\n"
    "flush chain " LSC_NFT_TABLE " forward\n"
    "flush chain " LSC_NFT_TABLE " postrouting\n"
    "add rule " LSC_NFT_TABLE " input iifname @ifaces"
    " meta l4proto tcp reject with tcp reset\n"
    "add rule " LSC_NFT_TABLE " input iifname @ifaces"
    " reject with icmpx type admin-prohibited\n"
    "add rule " LSC_NFT_TABLE " forward iifname @ifaces"
    " iifname vmap @egress\n"
    "add rule " LSC_NFT_TABLE " forward iifname @ifaces"
    " meta l4proto tcp reject with tcp reset\n"
    "add rule " LSC_NFT_TABLE " forward iifname @ifaces"
    " reject with icmpx type admin-prohibited\n"
    "add rule " LSC_NFT_TABLE " forward oifname @ifaces"
    " ct state established,related accept\n"
    "add rule " LSC_NFT_TABLE " forward oifname @ifaces drop\n"
    "add rule " LSC_NFT_TABLE " postrouting iifname @ifaces masquerade\n";


/* "a.b.c.d/n" with no host bits set: 0, or -1 */
static int
lsc_net_cidr(const char *cidr, uint32_t *net, int *prefix)
{
    char            buf[32], *slash, *end;
    long            n;
    struct in_addr  a;

    if (strlen(cidr) >= sizeof(buf)) {
        return -1;
    }
    snprintf(buf, sizeof(buf), "%s", cidr);
    slash = strchr(buf, '/');
    if (slash == NULL) {
        return -1;
    }
    *slash = '\0';
    n = strtol(slash + 1, &end, 10);
    if (*end != '\0' || slash[1] == '\0' || n < 0 || n > 32
        || inet_pton(AF_INET, buf, &a) != 1)
    {
        return -1;
    }
    *net = ntohl(a.s_addr);
    *prefix = (int) n;
    return (*net & lss_egress_mask(*prefix)) == *net ? 0 : -1;
}


/*
 * --egress-subnet: room for one /30 per slot.  Returns 0, or -1 with
 * nothing changed.
 */
int
lsc_net_config(lsc_ctx_t *ctx, const char *cidr)
{
    int       prefix;
    uint32_t  net;

    /* 4 addresses per slot: 4 * 4096 slots need a /18 */
    if (lsc_net_cidr(cidr, &net, &prefix) != 0 || prefix < 8 || prefix > 18)
    {
        return -1;
    }
    ctx->egress_net = net;
    ctx->egress_prefix = prefix;
    return 0;
}


/*
 * --egress-allow: a private or special range (egress_ranges.h) the
 * operator lets granted egress reach.  Returns 0, or -1.
 */
int
lsc_net_allow(lsc_ctx_t *ctx, const char *cidr)
{
    int       prefix;
    uint32_t  net;

    if (ctx->egress_nallow == LSC_EGRESS_ALLOW_MAX
        || lsc_net_cidr(cidr, &net, &prefix) != 0)
    {
        return -1;
    }
    ctx->egress_allow[ctx->egress_nallow] = net;
    ctx->egress_allow_prefix[ctx->egress_nallow] = prefix;
    ctx->egress_nallow++;
    return 0;
}


/* the host end of the link: at most 15 bytes, unique per id */
static void
lsc_net_ifname(const char *id, char *buf, size_t len)
{
    uint64_t     h;
    const char  *p;

    /* FNV-1a */
    h = 0xcbf29ce484222325ULL;
    for (p = id; *p != '\0'; p++) {
        h ^= (unsigned char) *p;
        h *= 0x100000001b3ULL;
    }
    snprintf(buf, len, "lss%012llx",
             (unsigned long long) (h & 0xffffffffffffULL));
}


static void
lsc_net_oci_path(lsc_ctx_t *ctx, const char *name, char *buf, size_t len)
{
    const char  *slash;

    slash = strrchr(ctx->mkbundle, '/');
    if (slash == NULL) {
        snprintf(buf, len, "%s", name);
        return;
    }
    snprintf(buf, len, "%.*s/%s", (int) (slash - ctx->mkbundle),
             ctx->mkbundle, name);
}


/* runsc of a sandbox with egress runs through this (runsc-net) */
const char *
lsc_net_runsc_exec(lsc_ctx_t *ctx)
{
    static char  path[LSC_PATH_LEN + 16];

    lsc_net_oci_path(ctx, "runsc-net", path, sizeof(path));
    return path;
}


/*
 * Why a create failed, where the reconciler reads it: the last line of
 * the container's log becomes the record's message.
 */
static void
lsc_net_fail(const char *bundle, const char *id, const char *fmt, ...)
{
    va_list  ap;
    char     msg[256], path[LSC_PATH_LEN + 32];
    FILE    *f;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    lsc_log("warn", "%s: %s", id, msg);
    snprintf(path, sizeof(path), "%s/container.log", bundle);
    f = fopen(path, "ae");
    if (f != NULL) {
        fprintf(f, "%s\n", msg);
        fclose(f);
    }
}


/* a DNS name; wildcards are refused by the caller with their own reason */
static int
lsc_net_valid_domain(const char *d)
{
    size_t  n, label;

    n = strlen(d);
    if (n == 0 || n > 253) {
        return 0;
    }
    label = 0;
    for ( ; *d != '\0'; d++) {
        if (*d == '.') {
            if (label == 0) {
                return 0;
            }
            label = 0;
            continue;
        }
        if (!((*d >= 'a' && *d <= 'z') || (*d >= 'A' && *d <= 'Z')
              || (*d >= '0' && *d <= '9') || *d == '-')
            || ++label > 63)
        {
            return 0;
        }
    }
    return label > 0;
}


static int
lsc_net_parse(json_t *egress, lsc_egress_t *rules, int *n, char *why,
    size_t len)
{
    size_t       i, k;
    int          j, p;
    json_t      *e, *ports, *v;
    const char  *d;

    *n = 0;
    if (!json_is_array(egress) || json_array_size(egress) > LSC_NET_RULES) {
        snprintf(why, len, "egress: a list of at most %d rules",
                 LSC_NET_RULES);
        return -1;
    }
    json_array_foreach(egress, i, e) {
        d = json_string_value(json_object_get(e, "domain"));
        if (d == NULL) {
            snprintf(why, len, "egress: each rule needs a domain");
            return -1;
        }
        if (strchr(d, '*') != NULL) {
            snprintf(why, len, "egress: %.80s: wildcard domains cannot be "
                     "granted here (names are resolved to addresses at "
                     "create time): list each name", d);
            return -1;
        }
        if (!lsc_net_valid_domain(d)) {
            snprintf(why, len, "egress: invalid domain %.80s", d);
            return -1;
        }

        memset(&rules[*n], 0, sizeof(lsc_egress_t));
        snprintf(rules[*n].domain, sizeof(rules[*n].domain), "%s", d);

        /* no ports: the web's (documented) */
        ports = json_object_get(e, "ports");
        if (ports == NULL || json_is_null(ports)
            || (json_is_array(ports) && json_array_size(ports) == 0))
        {
            rules[*n].port[0] = 80;
            rules[*n].port[1] = 443;
            rules[*n].nport = 2;
            (*n)++;
            continue;
        }
        if (!json_is_array(ports) || json_array_size(ports) > LSC_NET_PORTS)
        {
            snprintf(why, len, "egress: %.80s: at most %d ports", d,
                     LSC_NET_PORTS);
            return -1;
        }
        json_array_foreach(ports, k, v) {
            if (!json_is_integer(v) || json_integer_value(v) < 1
                || json_integer_value(v) > 65535)
            {
                snprintf(why, len, "egress: %.80s: ports are integers 1 to "
                         "65535", d);
                return -1;
            }
            p = (int) json_integer_value(v);
            for (j = 0; j < rules[*n].nport && rules[*n].port[j] != p; j++)
            {
                /* void */
            }
            if (j == rules[*n].nport) {
                rules[*n].port[rules[*n].nport++] = p;
            }
        }
        (*n)++;
    }
    return 0;
}


static void
lsc_net_add(lsc_egress_t *r, uint32_t a)
{
    int  i;

    for (i = 0; i < r->naddr; i++) {
        if (r->addr[i] == a) {
            return;
        }
    }
    if (r->naddr < LSC_NET_ADDRS) {
        r->addr[r->naddr++] = a;
    }
}


/*
 * --hosts FILE, in /etc/hosts' format (IPv6 lines are skipped): 1 when
 * it names the domain, 0 when not, -1 when it cannot be read.
 */
static int
lsc_net_hosts_lookup(const char *file, lsc_egress_t *r)
{
    char            *text, *line, *tok, *sl, *st, *hash;
    struct in_addr   a;
    int              found;

    text = lsc_read_file(file, 1 << 20);
    if (text == NULL) {
        return -1;
    }
    found = 0;
    for (line = strtok_r(text, "\n", &sl); line != NULL;
         line = strtok_r(NULL, "\n", &sl))
    {
        hash = strchr(line, '#');
        if (hash != NULL) {
            *hash = '\0';
        }
        tok = strtok_r(line, " \t\r", &st);
        if (tok == NULL || inet_pton(AF_INET, tok, &a) != 1) {
            continue;
        }
        while ((tok = strtok_r(NULL, " \t\r", &st)) != NULL) {
            if (strcasecmp(tok, r->domain) == 0) {
                lsc_net_add(r, a.s_addr);
                found = 1;
                break;
            }
        }
    }
    free(text);
    return found;
}


/*
 * Why an address is never granted, whatever name it came from, or NULL:
 * the special ranges of egress_ranges.h (private ones unless the
 * operator allowed them with --egress-allow), the egress subnet (other
 * sandboxes) and this host's own addresses (its services listen there).
 */
static const char *
lsc_net_forbidden(lsc_ctx_t *ctx, uint32_t a, struct ifaddrs *ifs,
    char *buf, size_t len)
{
    uint32_t                   h, mask;
    struct ifaddrs            *i;
    const lss_egress_range_t  *r;

    h = ntohl(a);
    r = lss_egress_refused(h, 32, ctx->egress_allow,
                           ctx->egress_allow_prefix, ctx->egress_nallow);
    if (r != NULL) {
        snprintf(buf, len, "%s %s%s", r->what, r->cidr,
                 r->never ? "" : ", not allowed by --egress-allow");
        return buf;
    }
    mask = 0xffffffffu << (32 - ctx->egress_prefix);
    if ((h & mask) == ctx->egress_net) {
        return "the egress subnet (other sandboxes)";
    }
    for (i = ifs; i != NULL; i = i->ifa_next) {
        if (i->ifa_addr != NULL && i->ifa_addr->sa_family == AF_INET
            && ((struct sockaddr_in *) i->ifa_addr)->sin_addr.s_addr == a)
        {
            return "this host's own address";
        }
    }
    return NULL;
}


static int
lsc_net_resolve(lsc_ctx_t *ctx, lsc_egress_t *r, struct ifaddrs *ifs,
    char *why, size_t len)
{
    struct addrinfo   hints, *res, *ai;
    uint32_t          all[LSC_NET_ADDRS];
    int               rc, i, n;
    char              ip[INET_ADDRSTRLEN], buf[128];
    struct in_addr    a;
    const char       *refused, *first;

    rc = 0;
    if (ctx->hosts_file[0] != '\0') {
        rc = lsc_net_hosts_lookup(ctx->hosts_file, r);
        if (rc < 0) {
            snprintf(why, len, "egress: cannot read %.100s",
                     ctx->hosts_file);
            return -1;
        }
    }
    if (rc == 0) {
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        rc = getaddrinfo(r->domain, NULL, &hints, &res);
        if (rc != 0) {
            snprintf(why, len, "egress: %.80s does not resolve to an IPv4 "
                     "address (%s)", r->domain, gai_strerror(rc));
            return -1;
        }
        for (ai = res; ai != NULL; ai = ai->ai_next) {
            lsc_net_add(r, ((struct sockaddr_in *) ai->ai_addr)
                           ->sin_addr.s_addr);
        }
        freeaddrinfo(res);
    }

    /*
     * Refused addresses are left out; a name left with none is refused
     * with the first one and its range, which the record then shows.
     */
    memcpy(all, r->addr, sizeof(all));
    n = r->naddr;
    r->naddr = 0;
    first = "no address";
    a.s_addr = 0;
    for (i = 0; i < n; i++) {
        refused = lsc_net_forbidden(ctx, all[i], ifs, buf, sizeof(buf));
        if (refused == NULL) {
            r->addr[r->naddr++] = all[i];
            continue;
        }
        if (a.s_addr == 0 && all[i] != 0) {
            a.s_addr = all[i];
            first = refused;
        }
        inet_ntop(AF_INET, &all[i], ip, sizeof(ip));
        lsc_log("info", "egress: %s: %s left out (%s)", r->domain, ip,
                refused);
    }
    if (r->naddr == 0) {
        inet_ntop(AF_INET, &a, ip, sizeof(ip));
        snprintf(why, len, "egress: %.80s resolves only to addresses no "
                 "sandbox may reach (%s: %.90s)", r->domain, ip, first);
        return -1;
    }
    return 0;
}


/* the granted egress of a cold sandbox, NULL when none */
static json_t *
lsc_net_load(lsc_ctx_t *ctx, const char *id, int *err)
{
    PGresult    *r;
    const char  *p[1];
    json_t      *na, *egress;

    *err = 0;
    p[0] = id;
    r = lsc_pg_query(ctx,
        "SELECT network_access::text FROM sandboxes WHERE id = $1", 1, p);
    if (r == NULL) {
        *err = 1;
        return NULL;
    }
    egress = NULL;
    if (PQntuples(r) == 1) {
        na = json_loads(PQgetvalue(r, 0, 0), 0, NULL);
        egress = json_incref(json_object_get(na, "egress"));
        json_decref(na);
    }
    PQclear(r);
    if (json_is_array(egress) && json_array_size(egress) == 0) {
        json_decref(egress);
        egress = NULL;
    }
    return egress;
}


/* written before the sandbox exists, read-only inside (a bind mount) */
static int
lsc_net_write_hosts(const char *run, lsc_egress_t *rules, int n)
{
    char           *text;
    size_t          len;
    FILE           *f;
    int             i, k, dfd, fd, rc;
    char            ip[INET_ADDRSTRLEN];
    struct in_addr  a;

    f = open_memstream(&text, &len);
    if (f == NULL) {
        return -1;
    }
    fprintf(f, "# llmsafespace: the names this sandbox may reach "
            "(networkAccess.egress)\n127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (i = 0; i < n; i++) {
        for (k = 0; k < rules[i].naddr; k++) {
            a.s_addr = rules[i].addr[k];
            inet_ntop(AF_INET, &a, ip, sizeof(ip));
            fprintf(f, "%s\t%s\n", ip, rules[i].domain);
        }
    }
    if (fclose(f) != 0) {
        free(text);
        return -1;
    }

    rc = -1;
    dfd = open(run, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd != -1) {
        unlinkat(dfd, "hosts", 0);
        fd = openat(dfd, "hosts",
                    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    0644);
        if (fd != -1) {
            if (write(fd, text, len) == (ssize_t) len
                && fchmod(fd, 0644) == 0)
            {
                rc = 0;
            }
            if (close(fd) != 0) {
                rc = -1;
            }
        }
        close(dfd);
    }
    free(text);
    return rc;
}


static int
lsc_net_cmp(const void *a, const void *b)
{
    uint64_t  x, y;

    x = *(const uint64_t *) a;
    y = *(const uint64_t *) b;
    return x < y ? -1 : x > y;
}


/* the table's shape and this sandbox's chain and elements, one batch */
static int
lsc_net_nft_grant(const char *bundle, const char *id, const char *ifname,
    const char *sbaddr, lsc_egress_t *rules, int n)
{
    FILE            *f;
    uint64_t        *pairs;
    size_t           np, i;
    int              r, k, j, rc;
    char             path[LSC_PATH_LEN + 32], log[LSC_PATH_LEN + 32];
    char             ip[INET_ADDRSTRLEN];
    char            *argv[4];
    struct in_addr   a;

    /* (address, port) once each: nft refuses a repeated element */
    pairs = malloc(LSC_NET_RULES * LSC_NET_ADDRS * LSC_NET_PORTS
                   * sizeof(uint64_t));
    if (pairs == NULL) {
        return -1;
    }
    np = 0;
    for (r = 0; r < n; r++) {
        for (k = 0; k < rules[r].naddr; k++) {
            for (j = 0; j < rules[r].nport; j++) {
                pairs[np++] = ((uint64_t) ntohl(rules[r].addr[k]) << 16)
                              | (uint64_t) rules[r].port[j];
            }
        }
    }
    qsort(pairs, np, sizeof(uint64_t), lsc_net_cmp);

    snprintf(path, sizeof(path), "%s/egress.nft", bundle);
    f = fopen(path, "we");
    if (f == NULL) {
        free(pairs);
        return -1;
    }
    fputs(lsc_nft_base, f);
    fprintf(f, "add chain " LSC_NFT_TABLE " %s\n"
            "flush chain " LSC_NFT_TABLE " %s\n"
            "add rule " LSC_NFT_TABLE " %s ip saddr %s"
            " ip daddr . tcp dport {", id, id, id, sbaddr);
    for (i = 0; i < np; i++) {
        if (i > 0 && pairs[i] == pairs[i - 1]) {
            continue;
        }
        a.s_addr = htonl((uint32_t) (pairs[i] >> 16));
        inet_ntop(AF_INET, &a, ip, sizeof(ip));
        fprintf(f, "%s %s . %u", i > 0 ? "," : "", ip,
                (unsigned) (pairs[i] & 0xffff));
    }
    fprintf(f, " } accept\n"
            "add element " LSC_NFT_TABLE " ifaces { \"%s\" }\n"
            "add element " LSC_NFT_TABLE " egress { \"%s\" : jump %s }\n",
            ifname, ifname, id);
    free(pairs);
    if (fclose(f) != 0) {
        return -1;
    }

    snprintf(log, sizeof(log), "%s/container.log", bundle);
    argv[0] = "nft";
    argv[1] = "-f";
    argv[2] = path;
    argv[3] = NULL;
    rc = lsc_spawn(argv, NULL, 0, log);
    return rc == 0 ? 0 : -1;
}


/* forwarding off would make the grant a silent no-op */
static int
lsc_net_forwarding(void)
{
    char  *v;
    int    fd, rc;

    v = lsc_read_file("/proc/sys/net/ipv4/ip_forward", 16);
    if (v != NULL && v[0] == '1') {
        free(v);
        return 0;
    }
    free(v);
    lsc_log("info", "egress: enabling IPv4 forwarding "
            "(net.ipv4.ip_forward=1)");
    fd = open("/proc/sys/net/ipv4/ip_forward", O_WRONLY | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }
    rc = write(fd, "1\n", 2) == 2 ? 0 : -1;
    close(fd);
    return rc;
}


/*
 * The bundle's config.json as mkbundle writes it with --hosts and --veth
 * (runc) or --netns (runsc): the same places, the same values.
 */
static int
lsc_net_patch(const char *bundle, const char *run, int high, const char *id,
    const char *ifname, const char *hostnet, const char *sbnet,
    const char *netns)
{
    char          path[LSC_PATH_LEN + 32], tmp[LSC_PATH_LEN + 40];
    char          hosts[LSC_PATH_LEN + 16], hook[LSC_PATH_LEN + 16];
    char          nspath[LSC_PATH_LEN];
    json_t       *cfg, *mounts, *ns, *h;
    json_error_t  err;
    const char   *hp, *slash;
    size_t        i;
    int           found, rc;

    snprintf(path, sizeof(path), "%s/config.json", bundle);
    snprintf(tmp, sizeof(tmp), "%s.net", path);
    snprintf(hosts, sizeof(hosts), "%s/hosts", run);

    cfg = json_load_file(path, 0, &err);
    if (cfg == NULL) {
        return -1;
    }
    rc = -1;
    mounts = json_object_get(cfg, "mounts");
    if (!json_is_array(mounts)) {
        goto done;
    }
    json_array_append_new(mounts,
        json_pack("{s:s, s:s, s:s, s:[s, s, s, s, s]}",
                  "destination", "/etc/hosts", "type", "bind",
                  "source", hosts, "options",
                  "rbind", "ro", "nosuid", "nodev", "noexec"));

    if (high) {
        snprintf(nspath, sizeof(nspath), "/run/netns/%s", netns);
        found = 0;
        json_array_foreach(json_object_get(json_object_get(cfg, "linux"),
                                           "namespaces"), i, ns)
        {
            if (json_is_string(json_object_get(ns, "type"))
                && strcmp(json_string_value(json_object_get(ns, "type")),
                          "network") == 0)
            {
                json_object_set_new(ns, "path", json_string(nspath));
                found++;
            }
        }
        if (found != 1) {
            goto done;
        }

    } else {
        /* net-up takes the place of lo-up, next to it */
        h = json_array_get(json_object_get(json_object_get(cfg, "hooks"),
                                           "createRuntime"), 0);
        hp = json_string_value(json_object_get(h, "path"));
        slash = hp != NULL ? strrchr(hp, '/') : NULL;
        if (slash == NULL || strcmp(slash, "/lo-up") != 0) {
            goto done;
        }
        snprintf(hook, sizeof(hook), "%.*s/net-up", (int) (slash - hp), hp);
        json_object_set_new(h, "path", json_string(hook));
        json_object_set_new(h, "args",
                            json_pack("[s, s, s, s, s]", "net-up", ifname,
                                      hostnet, sbnet, id));
    }

    if (json_dump_file(cfg, tmp, JSON_INDENT(2)) == 0
        && rename(tmp, path) == 0)
    {
        rc = 0;
    }

done:
    json_decref(cfg);
    return rc;
}


/* ip(8) with three arguments, its complaints to log */
static int
lsc_net_ip(const char *a, const char *b, const char *c, const char *log)
{
    char  *argv[5];

    argv[0] = "ip";
    argv[1] = (char *) a;
    argv[2] = (char *) b;
    argv[3] = (char *) c;
    argv[4] = NULL;
    return lsc_spawn(argv, NULL, 0, log) == 0 ? 0 : -1;
}


/*
 * Called by the local driver's create once the bundle and the run dir
 * exist, before the container starts.  0: no egress, nothing done; 1:
 * egress prepared (runsc must then run with --network=sandbox through
 * lsc_net_runsc_exec()); -1: refused or failed, the reason in the
 * container's log.
 */
int
lsc_net_setup(lsc_ctx_t *ctx, lsc_sandbox_t *sb, lsc_pool_t *pool,
    const char *bundle, const char *run)
{
    json_t          *egress;
    lsc_egress_t    *rules;
    struct ifaddrs  *ifs;
    struct in_addr   a;
    int              n, i, err, high, fd;
    uint32_t         base;
    char             why[256], ifname[16], netns[LSC_ID_LEN + 8];
    char             hostip[INET_ADDRSTRLEN], sbip[INET_ADDRSTRLEN];
    char             hostnet[INET_ADDRSTRLEN + 4], sbnet[INET_ADDRSTRLEN + 4];
    char             mark[LSC_PATH_LEN + 16], netup[LSC_PATH_LEN + 16];
    char             log[LSC_PATH_LEN + 32], *argv[8];

    /* warm sandboxes are never granted egress (the gateway's rule) */
    if (pool != NULL) {
        return 0;
    }
    egress = lsc_net_load(ctx, sb->id, &err);
    if (err) {
        return -1;
    }
    if (egress == NULL) {
        return 0;
    }

    if (ctx->egress_prefix == 0
        && lsc_net_config(ctx, LSC_NET_DEFAULT) != 0)
    {
        json_decref(egress);
        return -1;
    }
    high = strcmp(sb->level, "high") == 0;

    rules = calloc(LSC_NET_RULES, sizeof(lsc_egress_t));
    if (rules == NULL) {
        json_decref(egress);
        return -1;
    }
    ifs = NULL;
    why[0] = '\0';
    if (lsc_net_parse(egress, rules, &n, why, sizeof(why)) != 0) {
        goto refused;
    }
    if (getifaddrs(&ifs) != 0) {
        snprintf(why, sizeof(why), "egress: cannot list this host's "
                 "addresses");
        goto refused;
    }
    for (i = 0; i < n; i++) {
        if (lsc_net_resolve(ctx, &rules[i], ifs, why, sizeof(why)) != 0) {
            goto refused;
        }
    }
    freeifaddrs(ifs);
    ifs = NULL;
    json_decref(egress);
    egress = NULL;

    if (sb->slot < 0 || sb->slot >= LSC_NET_MAX_SLOTS) {
        free(rules);
        return -1;
    }
    base = ctx->egress_net + 4 * (uint32_t) sb->slot;
    a.s_addr = htonl(base + 1);
    inet_ntop(AF_INET, &a, hostip, sizeof(hostip));
    a.s_addr = htonl(base + 2);
    inet_ntop(AF_INET, &a, sbip, sizeof(sbip));
    snprintf(hostnet, sizeof(hostnet), "%s/30", hostip);
    snprintf(sbnet, sizeof(sbnet), "%s/30", sbip);
    lsc_net_ifname(sb->id, ifname, sizeof(ifname));
    snprintf(netns, sizeof(netns), "lss-%s", sb->id);

    /* the marker first: from here on, destroy knows there is more */
    snprintf(mark, sizeof(mark), "%s/egress", bundle);
    fd = open(mark, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
              0600);
    if (fd == -1) {
        free(rules);
        return -1;
    }
    dprintf(fd, "%s %s %s\n", ifname, sbnet, high ? netns : "-");
    close(fd);

    if (lsc_net_write_hosts(run, rules, n) != 0) {
        lsc_net_fail(bundle, sb->id, "egress: cannot write the hosts file");
        free(rules);
        return -1;
    }
    if (lsc_net_forwarding() != 0) {
        lsc_net_fail(bundle, sb->id, "egress: cannot enable IPv4 "
                     "forwarding");
        free(rules);
        return -1;
    }
    if (lsc_net_nft_grant(bundle, sb->id, ifname, sbip, rules, n) != 0) {
        lsc_net_fail(bundle, sb->id, "egress: nft refused the allowlist");
        free(rules);
        return -1;
    }
    free(rules);

    if (high) {
        snprintf(log, sizeof(log), "%s/container.log", bundle);
        if (lsc_net_ip("netns", "add", netns, log) != 0) {
            lsc_net_fail(bundle, sb->id, "egress: cannot create the "
                         "network namespace %s", netns);
            return -1;
        }
        lsc_net_oci_path(ctx, "net-up", netup, sizeof(netup));
        argv[0] = netup;
        argv[1] = ifname;
        argv[2] = hostnet;
        argv[3] = sbnet;
        argv[4] = sb->id;
        argv[5] = netns;
        argv[6] = NULL;
        if (lsc_spawn(argv, NULL, 0, log) != 0) {
            lsc_net_fail(bundle, sb->id, "egress: cannot set up the link");
            return -1;
        }
    }

    if (lsc_net_patch(bundle, run, high, sb->id, ifname, hostnet, sbnet,
                      netns) != 0)
    {
        lsc_net_fail(bundle, sb->id, "egress: the bundle has an unexpected "
                     "shape");
        return -1;
    }
    lsc_log("info", "%s: egress granted (%d rules, link %s, %s)", sb->id, n,
            ifname, sbip);
    return 1;

refused:
    if (ifs != NULL) {
        freeifaddrs(ifs);
    }
    json_decref(egress);
    free(rules);
    lsc_net_fail(bundle, sb->id, "%s", why);
    return -1;
}


static int
lsc_net_has(json_t *elems, const char *ifname)
{
    size_t   i;
    json_t  *e;

    json_array_foreach(elems, i, e) {
        /* a set's element is the name; a map's, [name, verdict] */
        if (json_is_array(e)) {
            e = json_array_get(e, 0);
        }
        if (json_is_string(e) && strcmp(json_string_value(e), ifname) == 0)
        {
            return 1;
        }
    }
    return 0;
}


/* `nft -j list WHAT [NAME]` parsed, or NULL */
static json_t *
lsc_net_nft_json(const char *what, const char *name)
{
    char    *text, *argv[6];
    json_t  *doc;

    argv[0] = "nft";
    argv[1] = "-j";
    argv[2] = "list";
    argv[3] = (char *) what;
    argv[4] = (char *) name;
    argv[5] = NULL;
    text = NULL;
    if (lsc_spawn(argv, &text, 64 << 20, "/dev/null") != 0 || text == NULL) {
        free(text);
        return NULL;
    }
    doc = json_loads(text, 0, NULL);
    free(text);
    return doc;
}


/* the table as nft lists it, or NULL: *err 0 when it does not exist */
static json_t *
lsc_net_nft_list(int *err)
{
    json_t      *doc, *item, *t;
    size_t       i;
    const char  *family, *name;
    int          found;

    *err = 1;
    doc = lsc_net_nft_json("tables", NULL);
    if (doc == NULL) {
        return NULL;
    }
    found = 0;
    json_array_foreach(json_object_get(doc, "nftables"), i, item) {
        t = json_object_get(item, "table");
        family = json_string_value(json_object_get(t, "family"));
        name = json_string_value(json_object_get(t, "name"));
        found |= family != NULL && name != NULL
                 && strcmp(family, "inet") == 0
                 && strcmp(name, "llmsafespace") == 0;
    }
    json_decref(doc);
    if (!found) {
        *err = 0;
        return NULL;
    }

    doc = lsc_net_nft_json("table", LSC_NFT_TABLE);
    if (doc != NULL) {
        *err = 0;
    }
    return doc;
}


/*
 * Removes exactly what of this sandbox is in the table: a transaction
 * naming something absent fails as a whole, and the removal must be
 * repeatable after a crash at any point.
 */
static int
lsc_net_nft_revoke(const char *id, const char *ifname)
{
    char        *argv[3], cmd[512];
    json_t      *doc, *item, *o;
    size_t       i, len;
    int          err, chain, set, map;
    const char  *name;

    doc = lsc_net_nft_list(&err);
    if (doc == NULL) {
        return err ? -1 : 0;
    }
    chain = set = map = 0;
    json_array_foreach(json_object_get(doc, "nftables"), i, item) {
        if ((o = json_object_get(item, "chain")) != NULL) {
            name = json_string_value(json_object_get(o, "name"));
            chain |= name != NULL && strcmp(name, id) == 0;
        } else if ((o = json_object_get(item, "set")) != NULL) {
            name = json_string_value(json_object_get(o, "name"));
            set |= name != NULL && strcmp(name, "ifaces") == 0
                   && lsc_net_has(json_object_get(o, "elem"), ifname);
        } else if ((o = json_object_get(item, "map")) != NULL) {
            name = json_string_value(json_object_get(o, "name"));
            map |= name != NULL && strcmp(name, "egress") == 0
                   && lsc_net_has(json_object_get(o, "elem"), ifname);
        }
    }
    json_decref(doc);
    if (!chain && !set && !map) {
        return 0;
    }

    /* one transaction; the element jumping to the chain goes first */
    len = 0;
    cmd[0] = '\0';
    if (map) {
        len += snprintf(cmd + len, sizeof(cmd) - len,
                        "delete element " LSC_NFT_TABLE " egress"
                        " { \"%s\" }; ", ifname);
    }
    if (set) {
        len += snprintf(cmd + len, sizeof(cmd) - len,
                        "delete element " LSC_NFT_TABLE " ifaces"
                        " { \"%s\" }; ", ifname);
    }
    if (chain) {
        snprintf(cmd + len, sizeof(cmd) - len,
                 "flush chain " LSC_NFT_TABLE " %s; "
                 "delete chain " LSC_NFT_TABLE " %s", id, id);
    }
    argv[0] = "nft";
    argv[1] = cmd;
    argv[2] = NULL;
    return lsc_spawn(argv, NULL, 0, NULL) == 0 ? 0 : -1;
}


/*
 * Called by the local driver's destroy after the container is gone and
 * before the bundle is removed.  Idempotent; for a sandbox that never had
 * egress it costs two access() calls.
 */
int
lsc_net_teardown(lsc_ctx_t *ctx, const char *id)
{
    char   mark[LSC_PATH_LEN + 32], ns[LSC_PATH_LEN], ifname[16];
    char   sys[64], netns[LSC_ID_LEN + 8];
    int    has_mark, has_ns;

    snprintf(mark, sizeof(mark), "%s/bundles/%s/egress", ctx->state_dir,
             id);
    snprintf(netns, sizeof(netns), "lss-%s", id);
    snprintf(ns, sizeof(ns), "/run/netns/%s", netns);
    has_mark = access(mark, F_OK) == 0;
    has_ns = access(ns, F_OK) == 0;
    if (!has_mark && !has_ns) {
        return 0;
    }
    lsc_net_ifname(id, ifname, sizeof(ifname));

    /* each step is checked by looking, not by ip's exit status */
    if (has_ns) {
        lsc_net_ip("netns", "delete", netns, "/dev/null");
        if (access(ns, F_OK) == 0) {
            lsc_log("error", "%s: cannot remove %s", id, ns);
            return -1;
        }
    }

    /*
     * The link dies with the namespace, which the kernel frees in the
     * background: removed here so that the slot's addresses are free
     * for the next sandbox at once.
     */
    snprintf(sys, sizeof(sys), "/sys/class/net/%s", ifname);
    if (access(sys, F_OK) == 0) {
        lsc_net_ip("link", "delete", ifname, "/dev/null");
        if (access(sys, F_OK) == 0) {
            lsc_log("error", "%s: cannot remove the link %s", id, ifname);
            return -1;
        }
    }

    if (lsc_net_nft_revoke(id, ifname) != 0) {
        lsc_log("error", "%s: cannot remove its egress rules", id);
        return -1;
    }
    if (unlink(mark) == -1 && errno != ENOENT) {
        return -1;
    }
    return 0;
}
