#!/usr/bin/env python3
"""Switch the perf support of a running Python process on or off.

    perf_switch.py PID perf       name Python functions in /tmp/perf-PID.map
    perf_switch.py PID perf_jit   write /tmp/jit-PID.dump (perf inject --jit)
    perf_switch.py PID off        stop naming new functions
    perf_switch.py PID status     print the current state

The process must have been started with PYTHON_PERF_REMOTE=1 in its
environment (a Python with the perf support, 3.11 patched or later).  Run as
the process's user or as root.  PID is the process id as seen from where
this command runs: from the host, the host's pid of a process in a
container; the command joins the process's network namespace (root only)
to reach it, and its files are written in the process's own /tmp.

Exit status: 0 on success, 1 if the process refused or could not switch
(or did not answer in time: a long call holding the GIL delays a switch),
2 if it cannot be reached (not running, did not opt in, no permission).

This script runs with any Python 3 (the host's own): it only talks to the
process over an abstract Unix socket, described in Python/perf_remote.c.
"""

import ctypes
import errno
import os
import socket
import struct
import sys

REQUESTS = ("perf", "perf_jit", "off", "status")
TIMEOUT = 10.0          # seconds: the switch waits for the GIL
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


def namespace_pid(pid):
    """The pid of process pid in its own (innermost) PID namespace."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return pid                      # kernels before 4.1: no namespaces


def socket_name(pid):
    ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
    return f"\0python-perf-{ns}-{namespace_pid(pid)}"


def setns(pid, kind, flag):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, flag) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot enter the {kind} namespace of "
                               f"process {pid}: {os.strerror(err)} (run as "
                               f"root)")
    finally:
        os.close(fd)


def other(pid, kind):
    return (os.stat(f"/proc/{pid}/ns/{kind}").st_ino
            != os.stat(f"/proc/self/ns/{kind}").st_ino)


def join_namespaces(pid):
    """Enter the network namespace of pid if it is not ours (the abstract
    socket lives there).  In a container with a user namespace of its own
    (rootless), enter that first and become its root: the host's root is
    nobody there, and the process obeys only its own user and root."""
    if other(pid, "user"):
        setns(pid, "user", CLONE_NEWUSER)
        try:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        except OSError:
            pass                # no root mapped there: the process decides
    if other(pid, "net"):
        setns(pid, "net", CLONE_NEWNET)


class NotTheProcess(Exception):
    """Another process listens on the name of the one we want."""


def check_peer(sock, pid):
    """The listening socket must belong to process pid: an abstract name can
    be taken by any program of the network namespace before the process
    starts.  SO_PEERCRED gives the pid as seen from our PID namespace (this
    command does not change it), the same numbering as the PID argument."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                            struct.calcsize("3i"))
    peer_pid, _, _ = struct.unpack("3i", creds)
    if peer_pid != pid:
        raise NotTheProcess(f"the switch socket of process {pid} belongs to "
                            f"process {peer_pid}: refused")


def switch(pid, request):
    """Send request to process pid; return its reply line."""
    name = socket_name(pid)
    join_namespaces(pid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(name)
        check_peer(sock, pid)
        try:
            sock.sendall(request.encode() + b"\n")
        except BrokenPipeError:
            pass            # refused before reading: the reply is there
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            reply += chunk
    return reply.decode(errors="replace").strip()


def main(argv):
    if len(argv) != 3 or argv[2] not in REQUESTS or not argv[1].isdigit():
        print(f"usage: {argv[0]} PID {{{','.join(REQUESTS)}}}",
              file=sys.stderr)
        return 2
    pid, request = int(argv[1]), argv[2]
    try:
        reply = switch(pid, request)
    except FileNotFoundError:
        print(f"no process {pid}", file=sys.stderr)
        return 2
    except socket.timeout:
        print(f"process {pid} did not answer within {TIMEOUT:.0f} s: a long "
              f"call that holds the GIL delays the switch, which happens "
              f"when it returns; ask again with 'status'", file=sys.stderr)
        return 1
    except NotTheProcess as exc:
        print(exc, file=sys.stderr)
        return 2
    except ConnectionRefusedError:
        print(f"process {pid} does not take perf switches: start it with "
              f"PYTHON_PERF_REMOTE=1 (and a Python with the perf support; "
              f"if it was, its standard error says why it stopped "
              f"listening)", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"process {pid}: {exc.strerror}: run as its user or as root",
              file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            print(f"process {pid} does not take perf switches",
                  file=sys.stderr)
        else:
            print(f"process {pid}: {exc}", file=sys.stderr)
        return 2
    print(f"{pid}: {reply}")
    return 0 if reply.startswith("ok ") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
