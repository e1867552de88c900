#!/usr/bin/perl

# Revocation reaches what is already open: WebSocket streams and requests
# in flight to a runner made with a key end when the key is revoked, in
# every worker (streams held by both workers of the gateway), whether the
# key is revoked through this gateway's API, by deleting its user, on
# another gateway (announced in Redis), after a reload (the old workers
# still holding streams), or in the database alone (found by checking keys
# in use every key cache ttl).  Other keys' streams go on.

use warnings;
use strict;

use Test::More;
use IO::Socket::IP;
use Time::HiRes qw/ sleep time /;

use LSS::Test;
use LSS::Stack;

my $t = LSS::Test->new(workers => 2);
my $sock = $t->testdir() . '/runner.sock';

$t->redis_start();
$t->pg_start();
$t->dbh()->do($t->read_file("$LSS::Test::TOP/sql/controller.sql"));

ok($t->stand_in_runner($sock, sub {
    my ($app) = @_;

    $app->routes->websocket('/stream' => sub {
        my $c = shift;
        $c->inactivity_timeout(300);
        $c->on(message => sub { $_[0]->send("echo: $_[1]") });
    });

    # an execution that takes its time
    $app->routes->post('/execute' => sub {
        my $c = shift;
        $c->inactivity_timeout(300);
        $c->render_later;
        Mojo::IOLoop->timer(60 => sub { $c->render(json => {}) });
    });
}), 'the stand-in runner listens');

# reuseport: the kernel spreads connections over both workers
$t->run(<<"EOF");
%%TEST_GLOBALS%%
user root;
events { }
http {
    %%TEST_GLOBALS_HTTP%%
    llmsafespace_redis %%REDIS%%;
    llmsafespace_postgres "%%PG%%";
    llmsafespace_key_cache zone=keys:1m ttl=60s;
    ${\ $t->sandbox_conf() }
    server {
        listen 127.0.0.1:%%PORT_8080%% reuseport;
        location /api/v1/ {
            llmsafespace_api;
        }
        ${\ $t->runner_location() }
    }
}
EOF

my $port = LSS::Test::port(8080);
my $admin = $t->create_key($t->create_user(name => 'root', role => 'admin'));
my $alice_id = $t->create_user(name => 'alice');
my $bob_id = $t->create_user(name => 'bob');

my $n = 0;
sub sandbox {
    my ($owner) = @_;
    my $id = sprintf('sb-revoke%012d', ++$n);
    $t->redis()->hset("lss:sb:$id", owner => $owner,
        runner => "unix:$sock", token => 'ab' x 32,
        expires => int(time() + 3600) * 1000, runtime => 'python', pool => '',
        phase => 'Running');
    return $id;
}

# PostgreSQL reached by both workers (slow under valgrind)
sub ready {
    ok($t->wait_for(sub {
        !grep { $t->get('/api/v1/user', key => $admin->{key})->{status}
                != 200 } 1 .. 4 }, 30), 'the gateway answers');
}

ready();

my $sb_alice = sandbox($alice_id);
my $sb_bob = sandbox($bob_id);

# the worker that holds a client connection, from the kernel's view
sub worker_of {
    my ($ws) = @_;
    my $lp = $ws->{tx}->local_port;
    my $out = `ss -tnpH state established '( sport = :$port and dport = :$lp )'`;
    return $out =~ /pid=(\d+)/ ? $1 : 0;
}

sub open_stream {
    my ($sb, $key) = @_;
    my $ws = $t->websocket("/api/v1/sandboxes/$sb/stream",
        headers => { Authorization => "Bearer $key->{key}" });
    return undef unless $ws;
    $ws->send('hi');
    return ($ws->recv(5) // '') eq 'echo: hi' ? $ws : undef;
}

# streams of one key until both workers hold some (bounded)
sub streams_on_both_workers {
    my ($sb, $key) = @_;
    my (@ws, %workers);
    for (1 .. 40) {
        my $ws = open_stream($sb, $key) or return;
        push @ws, $ws;
        $workers{worker_of($ws)}++;
        last if @ws >= 4 && keys %workers >= 2;
    }
    delete $workers{0};
    return (\@ws, scalar keys %workers);
}

sub all_closed {
    my ($streams, $within) = @_;
    return $t->wait_for(sub {
        $_->recv(0.05) for grep { !$_->closed } @$streams;
        !grep { !$_->closed } @$streams;
    }, $within);
}

sub still_open {
    my ($streams) = @_;
    for my $ws (@$streams) {
        return 0 if $ws->closed;
        $ws->send('again') or return 0;
        return 0 unless ($ws->recv(5) // '') eq 'echo: again';
    }
    return 1;
}

# an execution in flight on a raw connection; says when the gateway closes
sub slow_execute {
    my ($sb, $key) = @_;
    my $s = IO::Socket::IP->new(PeerAddr => '127.0.0.1', PeerPort => $port)
        or die "connect: $!";
    print $s "POST /api/v1/sandboxes/$sb/execute HTTP/1.1\r\n"
        . "Host: x\r\nAuthorization: Bearer $key->{key}\r\n"
        . "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    return $s;
}

sub closed_by_peer {
    my ($s, $within) = @_;
    $s->blocking(0);
    my $deadline = time() + $within;
    while (time() < $deadline) {
        my $n = sysread($s, my $buf, 4096);
        return 1 if (defined $n && $n == 0) || (!defined $n && $!{ECONNRESET});
        return 0 if defined $n && $n > 0 && $buf =~ m!^HTTP/1.1 2!;
        sleep 0.05;
    }
    return 0;
}

###############################################################################
# a key revoked through the API: its streams close in both workers

my $k1 = $t->create_key($alice_id);
my $k2 = $t->create_key($alice_id);
my $kb = $t->create_key($bob_id);

my ($s1, $workers) = streams_on_both_workers($sb_alice, $k1);
ok($s1, 'streams with the first key open and echo');
is($workers, 2, '... held by both workers');
my @s2 = map { open_stream($sb_alice, $k2) } 1 .. 2;
my @sb = map { open_stream($sb_bob, $kb) } 1 .. 2;
is(scalar(grep { defined } @s2, @sb), 4, 'streams of other keys open');

my $exec = slow_execute($sb_alice, $k1);
sleep 0.5;

my $r = $t->request('DELETE', "/api/v1/user/apikeys/$k1->{id}",
    key => $k2->{key});
is($r->{status}, 200, 'the first key revoked through the API');

ok(all_closed($s1, 5), 'every stream of the revoked key closed, '
    . 'in both workers');
ok(closed_by_peer($exec, 5), 'its execution in flight ended too');
ok(still_open([@s2, @sb]), 'streams of other keys go on');

my $again = $t->websocket("/api/v1/sandboxes/$sb_alice/stream",
    headers => { Authorization => "Bearer $k1->{key}" });
ok(!$again && $t->{ws_status} == 401, 'the revoked key opens no new one');

###############################################################################
# revoked on another gateway: announced in Redis, read by every worker

my ($s3, $w3) = streams_on_both_workers($sb_alice, $k2);
is($w3, 2, 'streams of the second key on both workers');

$t->revoke_key($k2);
$t->redis()->xadd('lss:keys:revoked', '*', 'key', $k2->{id});

ok(all_closed([@$s3, @s2], 5), 'closed once the revocation is read');
ok(still_open(\@sb), 'another user\'s streams go on');

###############################################################################
# a deleted user: every key of it revoked, its streams closed at once
# (before the controller gets to terminate its sandboxes)

$r = $t->request('DELETE', "/api/v1/users/$bob_id", key => $admin->{key});
is($r->{status}, 200, 'bob deleted');
ok(all_closed(\@sb, 5), 'his streams closed');

$_->close() for grep { !$_->closed } @$s1, @$s3, @s2, @sb;
close $exec;

###############################################################################
# after a reload: the old workers, finishing their streams, read Redis no
# more; they learn of a revocation made by a new one from the shared zone

my $k5 = $t->create_key($alice_id);
my ($s5, $w5) = streams_on_both_workers($sb_alice, $k5);
is($w5, 2, 'streams of a fifth key on both workers');

my %old = map { $_ => 1 } $t->worker_pids();
$t->reload();
ok($t->wait_for(sub { grep({ !$old{$_} } $t->worker_pids()) >= 2 }, 10),
    'reloaded: new workers');
ready();
ok(!grep({ !$old{worker_of($_)} } @$s5), 'the streams stay with the old ones');

$r = $t->request('DELETE', "/api/v1/user/apikeys/$k5->{id}",
    key => $admin->{key});
is($r->{status}, 200, 'the fifth key revoked through a new worker');
ok(all_closed($s5, 5), 'the old workers closed its streams');
ok($t->wait_for(sub { !grep { $old{$_} } $t->worker_pids() }, 10),
    'and exited');

###############################################################################
# revoked where nobody announces it (in the database, Redis unaware): the
# keys in use are checked again every key cache ttl (1 s here)

$t->stop();
$t->run($t->read_file('nginx.conf') =~ s/ttl=60s/ttl=1s/r);
ready();

my $carol_id = $t->create_user(name => 'carol');
my $k4 = $t->create_key($alice_id);
my $kc = $t->create_key($carol_id);
my $sb_carol = sandbox($carol_id);

my ($s4, $w4) = streams_on_both_workers($sb_alice, $k4);
is($w4, 2, 'streams of a fourth key on both workers');
my @sc = map { open_stream($sb_carol, $kc) } 1 .. 2;
is(scalar(grep { defined } @sc), 2, 'and of another user');

$t->revoke_key($k4);

ok(all_closed($s4, 8), 'closed within a few ttls of a revocation in the '
    . 'database alone');
ok(still_open(\@sc), 'a valid key\'s streams go on through the checks');

$_->close() for grep { !$_->closed } @$s4, @sc;

$t->finish();
