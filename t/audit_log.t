#!/usr/bin/perl

# Audit log: every authenticated mutating API request leaves one row in
# audit_log (who, what, on which object, the outcome, request id, client
# address); reads and unauthenticated requests leave none.  While
# PostgreSQL is down the records wait in the worker and arrive when it
# returns, without a reload.

use warnings;
use strict;

use Test::More;

use LSS::Test;

my $t = LSS::Test->new(workers => 1);

$t->pg_start();

my $conf = <<'EOF';
%%TEST_GLOBALS%%
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_postgres "%%PG%%" connections=2 timeout=2s
                          backoff=50ms:300ms;
    llmsafespace_key_cache zone=keys:1m ttl=10m stale=10m;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
        }

        location = /healthz {
            llmsafespace_health;
        }

        location = /metrics {
            llmsafespace_metrics;
        }
    }
}
EOF

my $uid = $t->create_user(name => 'carol', role => 'user');
my $k = $t->make_key();
$t->dbh()->do('INSERT INTO api_keys (id, user_id, secret_hash, name) '
    . 'VALUES (?, ?, ?, ?)', undef, $k->{id}, $uid, $k->{hash}, 'main');

sub rows {
    return $t->dbh()->selectall_arrayref(
        'SELECT key_id, user_id, method, action, object, status, '
        . 'request_id, remote_addr, extract(epoch FROM now() - at) AS age '
        . 'FROM audit_log ORDER BY id', { Slice => {} });
}

sub wait_rows {
    my ($n) = @_;
    my $rows = $t->wait_for(sub { my $r = rows(); @$r >= $n && $r }, 15);
    return $rows || rows();
}

sub pg_up {
    my $r = $t->get('/healthz');
    return $r->{json} && $r->{json}{postgres}{up};
}

$t->run($conf);
ok($t->wait_for(\&pg_up, 10), 'connected');

# a read, an unauthenticated write, then an authenticated write

is($t->get('/api/v1/user/apikeys', key => $k->{key})->{status}, 200,
    'a read');
is($t->request('POST', '/api/v1/user/apikeys', json => { name => 'x' })
    ->{status}, 401, 'a write without a key');

my $r = $t->request('POST', '/api/v1/user/apikeys', key => $k->{key},
    json => { name => 'second' });
is($r->{status}, 201, 'a key is created') or diag($r->{body});
my $new = $r->{json} && $r->{json}{id} // '';

my $rows = wait_rows(1);
is(scalar(@$rows), 1, 'one record: reads and refused writes leave none');

my $a = $rows->[0] // {};
is($a->{key_id}, $k->{id}, 'the key that asked');
is($a->{user_id}, $uid, 'its user');
is($a->{method}, 'POST', 'the method');
is($a->{action}, 'apikey.create', 'the action');
is($a->{object}, $new, 'the object: the new key');
is($a->{status}, 201, 'the status answered');
like($a->{request_id} // '', qr/^[0-9a-f]{32}$/, 'the request id');
is($a->{remote_addr}, '127.0.0.1', 'the client address');
cmp_ok(abs($a->{age} // 1e9), '<', 60,
    'a current time');

$r = $t->request('DELETE', "/api/v1/user/apikeys/$new", key => $k->{key});
is($r->{status}, 200, 'the new key is revoked') or diag($r->{body});

$rows = wait_rows(2);
is($rows->[1] && $rows->[1]{action}, 'apikey.revoke', 'revocation recorded');
is($rows->[1] && $rows->[1]{object}, $new, 'with the revoked key');

# PostgreSQL goes away: writes fail (503) but are still recorded, in the
# worker, until PostgreSQL returns

$t->pg_stop();
ok($t->wait_for(sub { !pg_up() }, 10), 'postgres down');

my @st;
for my $i (1 .. 3) {
    push @st, $t->request('POST', '/api/v1/user/apikeys', key => $k->{key},
        json => { name => "down$i" })->{status};
}
is_deeply(\@st, [ 503, 503, 503 ], 'writes answer 503 while down');

my $m = $t->wait_for(sub {
    my $m = $t->metrics();
    ($m->{'llmsafespace_audit_pending{worker="0"}'} // 0) == 3 && $m }, 10);
ok($m, 'three records pending in the worker');

$t->pg_start();

$rows = wait_rows(5);
is(scalar(@$rows), 5, 'the buffered records arrive after PostgreSQL returns');
is_deeply([ map { $_->{status} } @$rows[2 .. 4] ], [ 503, 503, 503 ],
    'with the status that was answered');

$m = $t->wait_for(sub {
    my $m = $t->metrics();
    ($m->{'llmsafespace_audit_pending{worker="0"}'} // -1) == 0 && $m }, 10);
ok($m, 'nothing pending any more');
is($m && $m->{llmsafespace_audit_written_total}, 5, '5 written in all');
is($m && $m->{llmsafespace_audit_dropped_total}, 0, 'none dropped');

unlike($t->read_file('error.log'), qr/\Q$k->{secret}\E/,
    'the key never reaches the log');

$t->finish();
