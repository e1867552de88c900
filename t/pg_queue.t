#!/usr/bin/perl

# The client's queue is bounded: with its one connection stuck on a locked
# table, queries beyond queue=N are refused at once (503, "queue full" in
# the log), every request is answered, and the client serves again as soon
# as the lock is gone.

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
    llmsafespace_postgres "%%PG%%" connections=1 timeout=3s queue=2
                          backoff=50ms:300ms;

    server {
        listen 127.0.0.1:%%PORT_8080%%;

        location /api/v1/ {
            llmsafespace_api;
        }

        location = /healthz {
            llmsafespace_health;
        }
    }
}
EOF

$t->run($conf);

ok($t->wait_for(sub { $t->get('/healthz')->{status} == 200 }, 10),
    'connected');

my $uid = $t->create_user(name => 'bob');

my $lock = $t->pg_dbh();
$lock->begin_work();
$lock->do('LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE');

# 12 lookups of unknown keys at once: 1 in flight, 2 queued, the rest
# refused at once

my @res = $t->parallel(count => 12, concurrency => 12, timeout => 20,
    request => sub {
        my $i = shift;
        my $id = sprintf('q%015d', $i);
        return ('GET', '/api/v1/user',
            { Authorization => "Bearer lsp_${id}_" . 'D' x 32 });
    });

is(scalar(grep { $_->{status} == 503 } @res), 12,
    'every lookup is answered 503 while the table is locked');
is(scalar(grep { $_->{error} } @res), 0, 'none hangs or fails');

my $log = $t->read_file('error.log');
my $refused = () = $log =~ /queue full/g;
my $timedout = () = $log =~ /query (?:timed out|waited)/g;

cmp_ok($refused, '>=', 1, 'queries beyond the queue are refused');
is($refused + $timedout, 12, 'each query refused or timed out, once');

$lock->rollback();
$lock->disconnect();

my $k = $t->make_key();
$t->dbh()->do('INSERT INTO api_keys (id, user_id, secret_hash) '
    . 'VALUES (?, ?, ?)', undef, $k->{id}, $uid, $k->{hash});

my $r = $t->wait_for(sub {
    my $r = $t->get('/api/v1/user', key => $k->{key});
    $r->{status} == 200 && $r }, 10);
ok($r, 'served again once the lock is gone');

$t->finish();
