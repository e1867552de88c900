"""lss-cluster on its own: it writes what it says into its directory, and
SIGTERM or SIGINT stop it cleanly: exit 0, the API port closed and free,
the ready file gone, no process of it left."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from urllib.parse import urlparse

import pytest

from conftest import start


def port_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def processes_using(dir):
    """pids whose command line or open files mention dir."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True,
                         text=True).stdout
    pids = {int(l.split()[0]) for l in out.splitlines() if dir in l}
    pids.discard(os.getpid())
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_everything(sig):
    dir = tempfile.mkdtemp(prefix="lss-cluster-stop-")
    cp = start(dir)
    for name in ("ca.crt", "apiserver.crt", "apiserver.key", "admin.crt",
                 "admin.key", "sa.key", "sa.pub", "kubeconfig",
                 "controller-manager.kubeconfig", "scheduler.kubeconfig"):
        assert os.path.getsize(os.path.join(dir, name)) > 0, name
    assert oct(os.stat(os.path.join(dir, "sa.key")).st_mode & 0o777) == \
        "0o600"
    out = cp.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.36.' in out
    port = urlparse(cp.server).port
    assert not port_free(port)
    assert processes_using(dir) == {cp.proc.pid}

    assert cp.stop(sig, timeout=60) == 0, cp.tail()
    assert not os.path.exists(os.path.join(dir, "ready"))
    assert processes_using(dir) == set()
    assert port_free(port)
    p = cp.kubectl("get", "namespaces", "--request-timeout=5s", check=False)
    assert p.returncode != 0 and "refused" in p.stderr
    shutil.rmtree(dir)
