#!/usr/bin/perl

# Every directive of the module, valid and invalid: a bad directive or
# parameter makes "nginx -t" fail with an [emerg] naming the directive and
# the offending value; the valid configurations pass.  Each bad case is
# one change to a configuration that passes on its own.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 1);

$t->write_keys_file('keys', { role => 'admin' }, { role => 'user' });
$t->write_file('bad-keys', "this is not a key line\n");

# the parts of a configuration that passes; a case replaces one of them

my %base = (
    redis => 'llmsafespace_redis 127.0.0.1:%%PORT_6379%% password=secret '
        . 'db=1 connect_timeout=1s timeout=500ms queue=100 '
        . 'backoff=100ms:2s;',
    keys => 'llmsafespace_keys_file %%TESTDIR%%/keys;',
    cache => 'llmsafespace_key_cache zone=keys:1m ttl=60s stale=10m;',
    zones => "llmsafespace_limit_zone zone=api:1m rate=10r/s burst=20;\n"
        . "    llmsafespace_limit_zone zone=exec:1m rate=600r/m;",
    down => 'llmsafespace_limit_redis_down local;',
    audit => 'llmsafespace_audit_buffer 1000;',
    http_extra => '',
    server_extra => '',
    api => "llmsafespace_api;\n"
        . "            llmsafespace_limit default zone=api;\n"
        . "            llmsafespace_limit execute zone=exec;",
    proxy => "llmsafespace_auth on;\n"
        . "            llmsafespace_json_errors on;\n"
        . "            llmsafespace_limit create zone=api;",
    health => 'llmsafespace_health;',
    metrics => 'llmsafespace_metrics;',
);

sub conf {
    my (%p) = (%base, @_);

    return <<"EOF";
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    $p{redis}
    $p{keys}
    $p{cache}
    $p{zones}
    $p{down}
    $p{audit}
    $p{http_extra}

    server {
        listen 127.0.0.1:%%PORT_8080%%;
        $p{server_extra}

        location /api/v1/ {
            $p{api}
        }
        location /proxy/ {
            $p{proxy}
            return 200;
        }
        location = /healthz {
            $p{health}
        }
        location = /metrics {
            $p{metrics}
        }
    }
}
EOF
}

my $pg = 'llmsafespace_postgres "host=127.0.0.1 port=%%PORT_5432%% '
    . 'dbname=llmsafespace user=gateway" connections=2 '
    . 'connect_timeout=2s timeout=1s queue=64 backoff=200ms:5s;';

# the valid configurations first: the bad cases below differ by one part

my ($rc, $out) = $t->nginx_test(conf());
is($rc, 0, 'full configuration with a keys file passes') or diag($out);

($rc, $out) = $t->nginx_test(conf(keys => $pg));
is($rc, 0, 'full configuration with postgres passes') or diag($out);

($rc, $out) = $t->nginx_test(conf(redis => 'llmsafespace_redis '
    . 'unix:%%TESTDIR%%/redis.sock;', zones => '',
    api => 'llmsafespace_api;', proxy => 'llmsafespace_auth off;'));
is($rc, 0, 'minimal configuration: unix socket, no zones') or diag($out);

($rc, $out) = $t->nginx_test(conf(http_extra => 'llmsafespace_egress_allow '
    . "10.20.0.0/16 192.168.7.0/24;\n    llmsafespace_egress_allow 0.0.0.0/0;"));
is($rc, 0, 'llmsafespace_egress_allow, repeated, passes') or diag($out);

($rc, $out) = $t->nginx_test(conf(down => 'llmsafespace_limit_redis_down '
    . 'refuse;'));
is($rc, 0, 'llmsafespace_limit_redis_down refuse passes') or diag($out);

($rc, $out) = $t->nginx_test(conf(keys => $pg,
    zones => "llmsafespace_limit_zone zone=api:1m rate=10r/s burst=20 "
        . "user_rate=30r/s user_burst=60;\n"
        . "    llmsafespace_limit_zone zone=exec:1m rate=600r/m "
        . "user_rate=1200r/m;",
    http_extra => 'llmsafespace_keys_per_user 0;'));
is($rc, 0, 'per-user budgets and a key cap pass') or diag($out);

# [ name, part => replacement..., directive named, problem regex ]

my @bad = (
    # llmsafespace_redis
    [ 'redis: port out of range',
      { redis => 'llmsafespace_redis 127.0.0.1:99999;' },
      'llmsafespace_redis', qr/99999|port/ ],
    [ 'redis: no address',
      { redis => 'llmsafespace_redis;' },
      'llmsafespace_redis', qr/number of arguments/ ],
    [ 'redis: bad db',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 db=abc;' },
      'llmsafespace_redis', qr/db.*abc/ ],
    [ 'redis: negative db',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 db=-1;' },
      'llmsafespace_redis', qr/db.*-1/ ],
    [ 'redis: bad timeout',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 timeout=forever;' },
      'llmsafespace_redis', qr/timeout.*forever/ ],
    [ 'redis: bad connect_timeout',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 connect_timeout=0;' },
      'llmsafespace_redis', qr/connect_timeout.*0/ ],
    [ 'redis: backoff max below min',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 backoff=5s:1s;' },
      'llmsafespace_redis', qr/backoff.*5s:1s/ ],
    [ 'redis: empty password',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 password=;' },
      'llmsafespace_redis', qr/password/ ],
    [ 'redis: unknown parameter',
      { redis => 'llmsafespace_redis 127.0.0.1:6379 colour=blue;' },
      'llmsafespace_redis', qr/colour/ ],
    [ 'redis: duplicate',
      { http_extra => 'llmsafespace_redis 127.0.0.1:6380;' },
      'llmsafespace_redis', qr/duplicate/ ],
    [ 'redis: in server context',
      { server_extra => 'llmsafespace_redis 127.0.0.1:6380;' },
      'llmsafespace_redis', qr/not allowed here/ ],

    # llmsafespace_postgres
    [ 'postgres: bad conninfo',
      { keys => 'llmsafespace_postgres "host=127.0.0.1 bogus_option=1";' },
      'llmsafespace_postgres', qr/bogus_option|connection string/ ],
    [ 'postgres: unterminated conninfo',
      { keys => q{llmsafespace_postgres "host='127.0.0.1";} },
      'llmsafespace_postgres', qr/connection string|quoted/ ],
    [ 'postgres: zero connections',
      { keys => 'llmsafespace_postgres "host=127.0.0.1" connections=0;' },
      'llmsafespace_postgres', qr/connections.*0/ ],
    [ 'postgres: bad timeout',
      { keys => 'llmsafespace_postgres "host=127.0.0.1" timeout=soon;' },
      'llmsafespace_postgres', qr/timeout.*soon/ ],
    [ 'postgres: unknown parameter',
      { keys => 'llmsafespace_postgres "host=127.0.0.1" pool=3;' },
      'llmsafespace_postgres', qr/pool/ ],
    [ 'postgres: duplicate',
      { keys => "$pg\n$pg" },
      'llmsafespace_postgres', qr/duplicate/ ],
    [ 'postgres and keys file together',
      { http_extra => $pg },
      'llmsafespace_keys_file', qr/llmsafespace_postgres/ ],

    # llmsafespace_keys_file
    [ 'keys file missing',
      { keys => 'llmsafespace_keys_file %%TESTDIR%%/no-such-keys;' },
      'llmsafespace_keys_file', qr/no-such-keys/ ],
    [ 'keys file malformed',
      { keys => 'llmsafespace_keys_file %%TESTDIR%%/bad-keys;' },
      'llmsafespace_keys_file', qr/line 1/ ],
    [ 'keys file duplicate',
      { http_extra => 'llmsafespace_keys_file %%TESTDIR%%/keys;' },
      'llmsafespace_keys_file', qr/duplicate/ ],
    [ 'keys file in location',
      { proxy => 'llmsafespace_keys_file %%TESTDIR%%/keys;' },
      'llmsafespace_keys_file', qr/not allowed here/ ],

    # llmsafespace_key_cache
    [ 'key cache: bad size',
      { cache => 'llmsafespace_key_cache zone=keys:lots;' },
      'llmsafespace_key_cache', qr/keys:lots/ ],
    [ 'key cache: no size',
      { cache => 'llmsafespace_key_cache zone=keys;' },
      'llmsafespace_key_cache', qr/zone=keys|NAME:SIZE/ ],
    [ 'key cache: no zone',
      { cache => 'llmsafespace_key_cache ttl=10s;' },
      'llmsafespace_key_cache', qr/zone/ ],
    [ 'key cache: bad ttl',
      { cache => 'llmsafespace_key_cache zone=keys:1m ttl=often;' },
      'llmsafespace_key_cache', qr/ttl=often|often/ ],

    # llmsafespace_limit_zone
    [ 'limit zone: bad size',
      { zones => 'llmsafespace_limit_zone zone=api:xyz rate=1r/s;' },
      'llmsafespace_limit_zone', qr/api:xyz|xyz/ ],
    [ 'limit zone: bad rate unit',
      { zones => 'llmsafespace_limit_zone zone=api:1m rate=10r/h;' },
      'llmsafespace_limit_zone', qr{rate=10r/h|10r/h} ],
    [ 'limit zone: zero rate',
      { zones => 'llmsafespace_limit_zone zone=api:1m rate=0r/s;' },
      'llmsafespace_limit_zone', qr{0r/s} ],
    [ 'limit zone: bad burst',
      { zones => 'llmsafespace_limit_zone zone=api:1m rate=1r/s '
          . 'burst=-3;' },
      'llmsafespace_limit_zone', qr/burst=-3|-3/ ],
    [ 'limit zone: no rate',
      { zones => 'llmsafespace_limit_zone zone=api:1m;' },
      'llmsafespace_limit_zone', qr/rate/ ],
    [ 'limit zone: duplicate name',
      { zones => "llmsafespace_limit_zone zone=api:1m rate=1r/s;\n"
          . "llmsafespace_limit_zone zone=api:1m rate=2r/s;" },
      'llmsafespace_limit_zone', qr/api/ ],

    # llmsafespace_limit
    [ 'limit: unknown class',
      { api => "llmsafespace_api;\nllmsafespace_limit upload zone=api;" },
      'llmsafespace_limit', qr/upload/ ],
    [ 'limit: unknown zone',
      { api => "llmsafespace_api;\nllmsafespace_limit default "
          . "zone=nosuch;" },
      'llmsafespace_limit', qr/nosuch/ ],
    [ 'limit: missing zone',
      { api => "llmsafespace_api;\nllmsafespace_limit default;" },
      'llmsafespace_limit', qr/number of arguments/ ],

    [ 'limit_zone: bad user_rate',
      { zones => 'llmsafespace_limit_zone zone=api:1m rate=1r/s '
          . 'user_rate=fast;' },
      'llmsafespace_limit_zone', qr/fast/ ],
    [ 'limit_zone: bad user_burst',
      { zones => 'llmsafespace_limit_zone zone=api:1m rate=1r/s '
          . 'user_burst=-2;' },
      'llmsafespace_limit_zone', qr/-2/ ],

    # llmsafespace_keys_per_user
    [ 'keys_per_user: not a number',
      { http_extra => 'llmsafespace_keys_per_user many;' },
      'llmsafespace_keys_per_user', qr/invalid|many/ ],
    [ 'keys_per_user: duplicate',
      { http_extra => "llmsafespace_keys_per_user 5;\n"
          . "    llmsafespace_keys_per_user 6;" },
      'llmsafespace_keys_per_user', qr/duplicate/ ],

    # llmsafespace_limit_redis_down, llmsafespace_audit_buffer
    [ 'limit_redis_down: bad value',
      { down => 'llmsafespace_limit_redis_down maybe;' },
      'llmsafespace_limit_redis_down', qr/maybe/ ],
    [ 'audit buffer: not a number',
      { audit => 'llmsafespace_audit_buffer lots;' },
      'llmsafespace_audit_buffer', qr/invalid|lots/ ],

    # location-level handlers and flags
    [ 'api: takes only runner=@name',
      { api => 'llmsafespace_api on;' },
      'llmsafespace_api', qr/invalid parameter "on"/ ],
    [ 'api: one argument at most',
      { api => 'llmsafespace_api runner=@a runner=@b;' },
      'llmsafespace_api', qr/number of arguments/ ],
    [ 'api: in http context',
      { http_extra => 'llmsafespace_api;' },
      'llmsafespace_api', qr/not allowed here/ ],
    [ 'auth: bad flag',
      { proxy => 'llmsafespace_auth maybe;' },
      'llmsafespace_auth', qr/maybe|invalid value/ ],
    [ 'auth off in the API',
      { api => "llmsafespace_api;\nllmsafespace_auth off;" },
      'llmsafespace_auth', qr/llmsafespace_api/ ],
    [ 'auth without a key source',
      { keys => '' },
      'llmsafespace_(?:keys_file|postgres)', qr/auth|key/i ],
    [ 'json_errors: bad flag',
      { proxy => 'llmsafespace_json_errors yes;' },
      'llmsafespace_json_errors', qr/yes|invalid value/ ],
    [ 'health and metrics in one location',
      { health => "llmsafespace_health;\nllmsafespace_metrics;" },
      'llmsafespace_metrics', qr/conflict|duplicate/ ],
    [ 'egress_allow: not a range',
      { http_extra => 'llmsafespace_egress_allow 10.0.0.1;' },
      'llmsafespace_egress_allow', qr/10\.0\.0\.1/ ],
    [ 'egress_allow: IPv6',
      { http_extra => 'llmsafespace_egress_allow fd00::/8;' },
      'llmsafespace_egress_allow', qr/fd00::\/8/ ],
    [ 'egress_allow: host bits',
      { http_extra => 'llmsafespace_egress_allow 10.1.0.0/8;' },
      'llmsafespace_egress_allow', qr/host bits/ ],
    [ 'egress_allow: in server context',
      { server_extra => 'llmsafespace_egress_allow 10.0.0.0/8;' },
      'llmsafespace_egress_allow', qr/not allowed here/ ],
    [ 'health in server context',
      { server_extra => 'llmsafespace_health;' },
      'llmsafespace_health', qr/not allowed here/ ],
);

for my $case (@bad) {
    my ($name, $parts, $directive, $problem) = @$case;

    ($rc, $out) = $t->nginx_test(conf(%$parts));

    isnt($rc, 0, "$name: nginx -t fails");

    my ($emerg) = $out =~ /^(.*\[emerg\].*)$/m;
    $emerg //= '';

    ok(($emerg =~ /$directive/ && $emerg =~ $problem
        && $emerg !~ /out of memory/), "$name: message")
        or diag("expected $directive and $problem in: $out");
}

# nginx -t itself never alerts

is(join("\n", $t->error_log_alerts()), '', 'no alerts');

$t->finish();
