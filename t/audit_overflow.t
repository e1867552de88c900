#!/usr/bin/perl

# A full audit buffer (llmsafespace_audit_buffer N) refuses the newest
# records and counts them; the N it holds arrive when PostgreSQL returns.
# A graceful quit is not held up by records that cannot be written: the
# worker exits, says how many it dropped, and the error log stays free of
# alerts.

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
    llmsafespace_postgres "%%PG%%" connections=1 timeout=2s
                          backoff=50ms:300ms;
    llmsafespace_key_cache zone=keys:1m ttl=10m stale=10m;
    llmsafespace_audit_buffer 3;

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

my $uid = $t->create_user(name => 'dave');
my $k = $t->make_key();
$t->dbh()->do('INSERT INTO api_keys (id, user_id, secret_hash) '
    . 'VALUES (?, ?, ?)', undef, $k->{id}, $uid, $k->{hash});

sub count_rows {
    return ($t->dbh()->selectrow_array('SELECT count(*) FROM audit_log'))[0];
}

sub pg_up {
    my $r = $t->get('/healthz');
    return $r->{json} && $r->{json}{postgres}{up};
}

sub write_once {
    my ($name) = @_;
    return $t->request('POST', '/api/v1/user/apikeys', key => $k->{key},
        json => { name => $name })->{status};
}

$t->run($conf);
ok($t->wait_for(\&pg_up, 10), 'connected');

# the key is verified (and cached) while PostgreSQL is up

is(write_once('up'), 201, 'a write while up');
ok($t->wait_for(sub { count_rows() == 1 }, 10), 'its record arrives');

$t->pg_stop();
ok($t->wait_for(sub { !pg_up() }, 10), 'postgres down');

is_deeply([ map { write_once("down$_") } 1 .. 5 ], [ (503) x 5 ],
    '5 writes while down');

my $m = $t->wait_for(sub {
    my $m = $t->metrics();
    ($m->{'llmsafespace_audit_pending{worker="0"}'} // 0) == 3 && $m }, 10);
ok($m, 'the buffer holds its 3 records');
is($m && $m->{llmsafespace_audit_dropped_total}, 2,
    'the 2 newest are dropped and counted');
like($t->read_file('error.log'), qr/buffer of 3 records full/,
    'the drop is logged');

$t->pg_start();

ok($t->wait_for(sub { count_rows() == 4 }, 15), 'the 3 held records arrive');

$m = $t->wait_for(sub {
    my $m = $t->metrics();
    ($m->{'llmsafespace_audit_pending{worker="0"}'} // -1) == 0 && $m }, 10);
is(count_rows(), 4, 'and no more');
is($m && $m->{llmsafespace_audit_written_total}, 4, '4 written in all');

my ($names) = $t->dbh()->selectrow_array(
    q{SELECT string_agg(status::text, ',' ORDER BY id) FROM audit_log});
is($names, '201,503,503,503', 'the oldest records were kept');

# records that cannot be written do not hold up a graceful quit

$t->pg_stop();
ok($t->wait_for(sub { !pg_up() }, 10), 'postgres down again');
is(write_once('late'), 503, 'one more write while down');

$t->wait_for(sub {
    ($t->metrics()->{'llmsafespace_audit_pending{worker="0"}'} // 0) == 1 },
    10);

$t->stop();

like($t->read_file('error.log'),
    qr/1 records not written to PostgreSQL before exit, dropped/,
    'the quitting worker says what it dropped');

$t->finish();
