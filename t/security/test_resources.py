"""Cases 1-10: resource abuse."""

import json
import time

from conftest import alive


def test_c01_fork_bomb(alice, sb, stack):
    r = alice.py(sb, "import os\nwhile True:\n    try:\n        os.fork()\n"
                     "    except OSError:\n        pass", timeout=5)
    assert r["status"] in ("timeout", "failed"), r
    assert alive(alice, sb)


def test_c02_memory_bomb(alice, sb):
    r = alice.py(sb, "b = []\nwhile True:\n    b.append(b'x' * (1 << 24))")
    assert r["status"] == "failed" and r["exitCode"] != 0, r
    assert alive(alice, sb)


def test_c03_disk_fill(alice, sb):
    code = r"""
import errno, os
out = []
for d in ('/workspace', '/tmp'):
    n = 0
    try:
        with open(os.path.join(d, 'fill'), 'wb') as f:
            for _ in range(2048):
                f.write(b'x' * (1 << 20)); f.flush(); n += 1
        out.append('no limit')
    except OSError as e:
        out.append(errno.errorcode[e.errno])
    os.unlink(os.path.join(d, 'fill'))
print(' '.join(out))
"""
    r = alice.py(sb, code, timeout=120)
    assert r["stdout"] == "ENOSPC ENOSPC\n", r
    assert alive(alice, sb)


def test_c04_fd_exhaustion(alice, sb):
    r = alice.py(sb, "import errno, os\nfds = []\ntry:\n"
                     "    while len(fds) < 100000:\n"
                     "        fds.append(os.open('/dev/null', os.O_RDONLY))\n"
                     "except OSError as e:\n"
                     "    print(errno.errorcode[e.errno])")
    assert r["stdout"] == "EMFILE\n", r
    assert alive(alice, sb)


def test_c05_cpu_spin(alice, sb):
    t0 = time.monotonic()
    r = alice.py(sb, "while True:\n    pass", timeout=2)
    assert r["status"] == "timeout", r
    assert time.monotonic() - t0 < 20


def test_c06_nothing_survives(alice, sb):
    # a grandchild in its own session that ignores SIGTERM keeps writing
    code = r"""
import os, signal, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            with open('/workspace/alive', 'a') as f:
                f.write('x')
            time.sleep(0.05)
    os._exit(0)
time.sleep(0.5)
print('started')
"""
    r = alice.py(sb, code)
    assert r["stdout"] == "started\n", r
    check = ("import os, time\ns = os.path.getsize('/workspace/alive')\n"
             "time.sleep(1)\nprint(os.path.getsize('/workspace/alive') - s)\n"
             "os.unlink('/workspace/alive')")
    assert alice.py(sb, check)["stdout"] == "0\n"


def test_c07_zombies_reaped(alice, sb):
    r = alice.py(sb, "import os, time\nfor i in range(5):\n"
                     "    if os.fork() == 0:\n        os._exit(0)\n"
                     "time.sleep(0.5)\nprint('left')")
    assert r["stdout"] == "left\n"
    zombies = alice.py(sb, r"""
import os
n = 0
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            st = open('/proc/%s/stat' % p).read()
        except OSError:
            continue
        if st.rsplit(')', 1)[1].split()[0] == 'Z':
            n += 1
print(n)
""")
    assert zombies["stdout"] == "0\n", zombies


def test_c08_huge_output(alice, sb):
    r = alice.py(sb, "import sys\nsys.stdout.write('x' * (8 << 20))")
    assert r["truncated"] is True
    assert len(r["stdout"]) <= (1 << 20) + 64
    assert alive(alice, sb)


def test_c09_endless_output(alice, sb):
    t0 = time.monotonic()
    r = alice.py(sb, "while True:\n    print('y' * 4096)", timeout=60)
    # stopped at the cap, long before the timeout
    assert time.monotonic() - t0 < 30
    assert r["truncated"] is True and r["status"] == "failed", \
        {k: v for k, v in r.items() if k != "stdout"}


def test_c10_binary_output(alice, sb):
    r = alice.py(sb, "import sys\nsys.stdout.buffer.write("
                     "b'\\x1b[31mred\\x00\\xff\\xfe\\xc3(ok\\n')")
    # valid JSON already (the client parsed it); the bytes kept readable
    assert r["stdout"] == "\x1b[31mred\x00\ufffd\ufffd\ufffd(ok\n", \
        json.dumps(r["stdout"])
