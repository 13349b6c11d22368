#!/usr/bin/env python3
"""perf record, keeping the perf maps and jitdumps of processes in containers.

    perf_record_ns.py [-v] [--max-bytes N] [--max-files N] [--max-seconds N]
                      -- perf record [OPTIONS] [-- COMMAND ...]

Run on the host, as root, instead of "perf record": the same recording, and
afterwards "perf report", "perf script" and "perf inject --jit" name the
Python functions of processes that ran in their own PID and mount
namespaces (containers), even when those processes, and their /tmp, are
long gone by then.

The problem: a Python process with -X perf in a container writes
/tmp/perf-NSPID.map in its own /tmp, under the pid it has in its own PID
namespace.  perf, on the host, looks for /tmp/perf-HOSTPID.map; it finds the
container's file itself only while the process is alive.  A jitdump has the
same problem, and one more: perf inject --jit ignores a marker
/tmp/jit-NSPID.dump of a process whose host pid is not NSPID.

What this does:
  - while perf records, it watches processes start (the kernel's process
    events connector; a scan of /proc every 50 ms if that is not
    available).  For each process in another mount or PID namespace it
    notes the pid in that namespace and opens that process's /tmp (held
    open, the directory stays readable after the process and its
    namespaces are gone, even a tmpfs);
  - when perf record ends, for each such process that wrote a map or a
    dump there, it copies /tmp/perf-NSPID.map to this host's
    /tmp/perf-HOSTPID.map, and /tmp/jit-NSPID.dump to
    PERFDATA.jitdumps-XXXXXX/jit-HOSTPID.dump, a new directory of root's
    beside perf.data, with its pids changed to the host pid (not /tmp:
    perf inject --jit writes an ELF file beside each jitdump, at names the
    dump chooses, where anyone could plant a link);
  - if it copied a jitdump, it rewrites the perf.data file so that the
    marker of that process names the host copy (perf inject -o - turns the
    file into a stream, this script changes the marker records, perf inject
    -i - writes the file again).

Copies are written to new files renamed over the host's names: a stale
file of an earlier process with the same pid is replaced, a link is never
followed, and a copy interrupted by Ctrl-C leaves nothing.  The files of a
process that has the pid by then are left alone, and so are those of a pid
that two processes had during the recording (a process of this host may
have written the map that a container's would replace).

A container's files are written by whoever runs it, and are copied within a
budget for the whole run: --max-bytes (default 256M; K, M and G suffixes),
--max-files (default 4096) and --max-seconds (default 60, checked at every
read); one line says which budget ended the copies.  A copy never holds
more than its process really wrote: reads stop at the size seen when the
file was opened and at the space it occupies (holes are not copied), a map
keeps only valid map lines (4096 bytes at most), a jitdump only whole valid
records up to the first that is not.  An error with one process's files
skips that process with one line; a directory planted at a host name is
skipped, a link or another user's file there is replaced by rename, never
followed, and a file that the container bound over its own name is not
read.  At most half of the descriptors this script may have hold
containers' /tmp directories (one line when they are all taken).  What a
container named (a marker's path) is printed with control characters
escaped.  A process that ends before this script has seen it (a few
milliseconds) is missed; with -v the script says what it kept.

Exit status: that of perf record, or 1 if keeping the files failed.
"""

import os
import re
import resource
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

VERBOSE = False

# ---- Namespaces and /proc ---------------------------------------------------


def log(msg):
    if VERBOSE:
        print(f"perf_record_ns: {msg}", file=sys.stderr, flush=True)


def shown(data):
    """bytes that a container chose, as text that holds no control
    character (nor invalid UTF-8) to print to root's terminal."""
    text = data.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def namespace_ids(pid):
    """(mount namespace inode, PID namespace inode) of pid."""
    return (os.stat(f"/proc/{pid}/ns/mnt").st_ino,
            os.stat(f"/proc/{pid}/ns/pid").st_ino)


def start_time(pid):
    """When process pid started (clock ticks since boot), or None if there
    is no such process: tells a process from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def inner_pid(pid):
    """The pid of process pid in its own (innermost) PID namespace."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("NStgid:"):
                return int(line.split()[-1])
    return pid


class Tracker:
    """The processes of other namespaces seen so far, and their /tmp."""

    def __init__(self, max_dirs):
        self.ours = namespace_ids("self")
        self.lock = threading.Lock()
        self.processes = {}     # host pid -> (inner pid, tmp key)
        self.tmp_dirs = {}      # (st_dev, st_ino) -> O_PATH descriptor
        # A container may make a mount namespace with a /tmp of its own
        # for each of its processes: held descriptors are bounded, or
        # this script, perf inject and the C library (which opens
        # libgcc_s when a thread exits) would run out of them.
        self.max_dirs = max_dirs
        self.full = False
        # When each process seen, of this host or not, started; and the
        # pids that two processes had in the recording.  The files at such
        # a pid's names may be another process's: a process of this host
        # wrote /tmp/perf-PID.map, then a container's took the pid.
        self.starts = {}        # pid -> start time
        self.reused = set()

    def close(self):
        for fd in self.tmp_dirs.values():
            os.close(fd)
        self.tmp_dirs.clear()

    def see(self, pid):
        """Note pid if it lives in another namespace (again after an exec:
        its /tmp may have changed since its fork).  Never raises: what a
        container's /tmp does (a FUSE server that refuses us) only makes
        that process unseen."""
        try:
            self._see(pid)
        except Exception as exc:
            print(f"perf_record_ns: process {pid} skipped: {exc}",
                  file=sys.stderr)

    def _see(self, pid):
        started = start_time(pid)
        if started is None:
            return              # gone already
        with self.lock:
            if self.starts.setdefault(pid, started) != started:
                self.reused.add(pid)
        try:
            if namespace_ids(pid) == self.ours:
                return
            nspid = inner_pid(pid)
            # O_NOFOLLOW: a /tmp that is a symbolic link would be followed
            # from this host's root, not the container's.
            fd = os.open(f"/proc/{pid}/root/tmp", os.O_PATH | os.O_DIRECTORY
                         | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, ValueError):
            return              # gone already, or not ours to look at
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        key = (st.st_dev, st.st_ino)
        with self.lock:
            if key in self.tmp_dirs:
                os.close(fd)
            elif len(self.tmp_dirs) >= self.max_dirs:
                os.close(fd)
                if not self.full:
                    self.full = True
                    print(f"perf_record_ns: {self.max_dirs} /tmp "
                          f"directories held already: processes with "
                          f"another /tmp are not kept", file=sys.stderr)
                return
            else:
                self.tmp_dirs[key] = fd
            if self.processes.get(pid, ())[:2] != (nspid, key) \
                    and nspid != pid:
                log(f"process {pid} is {nspid} in its namespaces")
            self.processes[pid] = (nspid, key, started)

    def scan(self):
        try:
            names = os.listdir("/proc")
        except OSError as exc:
            print(f"perf_record_ns: scan of /proc: {exc}", file=sys.stderr)
            return
        for name in names:
            if name.isdigit():
                self.see(int(name))


# ---- Watching processes start -----------------------------------------------

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002


class EventWatcher(threading.Thread):
    """The kernel's process events connector (root): every fork and exec."""

    def __init__(self, tracker):
        super().__init__(daemon=True)
        self.tracker = tracker
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                                  NETLINK_CONNECTOR)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                 4 << 20)
            self.sock.bind((0, CN_IDX_PROC))
            op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            cn_msg = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0,
                                 len(op), 0) + op
            self.sock.send(struct.pack("=IHHII", 16 + len(cn_msg),
                                       NLMSG_DONE, 0, 0, 0) + cn_msg)
        except OSError:
            self.sock.close()
            raise

    def run(self):
        while not self.stopping.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            try:
                data = self.sock.recv(65536)
            except OSError:     # ENOBUFS: events lost; go on
                continue
            try:
                self.handle(data)
            except Exception as exc:    # never let the thread die
                print(f"perf_record_ns: process event: {exc}",
                      file=sys.stderr)
        self.sock.close()

    def handle(self, data):
        offset = 0
        while offset + 16 <= len(data):
            length = struct.unpack_from("=I", data, offset)[0]
            if length < 16:
                return
            # nlmsghdr (16), cn_msg (20), proc_event: what, cpu, timestamp.
            event = offset + 36
            if event + 16 <= offset + length:
                what = struct.unpack_from("=I", data, event)[0]
                body = event + 16
                if what == PROC_EVENT_FORK:
                    _, _, child_pid, child_tgid = struct.unpack_from(
                        "=IIII", data, body)
                    if child_pid == child_tgid:     # a process, not a thread
                        self.tracker.see(child_tgid)
                elif what == PROC_EVENT_EXEC:
                    _, tgid = struct.unpack_from("=II", data, body)
                    self.tracker.see(tgid)
            offset += (length + 3) & ~3

    def stop(self):
        self.stopping.set()
        self.join()


class PollWatcher(threading.Thread):
    """Without the connector: a scan of /proc every 50 ms."""

    def __init__(self, tracker):
        super().__init__(daemon=True)
        self.tracker = tracker
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.wait(0.05):
            try:
                self.tracker.scan()
            except Exception as exc:    # never let the thread die
                print(f"perf_record_ns: scan: {exc}", file=sys.stderr)

    def stop(self):
        self.stopping.set()
        self.join()


# ---- Copying the files ------------------------------------------------------


# A container's files are not to be trusted: they are opened without
# following links and without blocking (a FIFO), must be regular files, and
# are copied in pieces (a huge file costs no memory), never past the size
# seen when opened nor past the space they occupy (a sparse file does not
# become real data), within the run's Budget.  A copy is written to a new
# temporary file and renamed over the host's name: a stale file of an
# earlier process with the same pid (or a link or another user's file
# planted there) is replaced, never followed, and an interrupted copy
# leaves nothing behind.
CHUNK = 1 << 20
MAX_RECORD = 16 << 20           # no jitdump record is near this
MAX_LINE = 4096                 # nor any map line
MAP_LINE = re.compile(rb"[0-9a-f]{1,16} [0-9a-f]{1,16} [^\x00-\x1f\x7f]+\n")


class BudgetExhausted(Exception):
    pass


class Budget:
    """What all the copies of a run may take together: bytes, files and
    time.  The first time one runs out, one line says so."""

    def __init__(self, max_bytes, max_files, max_seconds):
        self.bytes_left = max_bytes
        self.files_left = max_files
        self.deadline = time.monotonic() + max_seconds
        self.spent = None

    def exhausted(self, what):
        if self.spent is None:
            self.spent = what
            print(f"perf_record_ns: {what} budget of this run used up: "
                  f"no more files copied", file=sys.stderr)
        raise BudgetExhausted(what)

    def check_time(self):
        if self.spent is not None:
            raise BudgetExhausted(self.spent)
        if time.monotonic() >= self.deadline:
            self.exhausted("--max-seconds")

    def new_file(self):
        self.check_time()
        if self.files_left <= 0:
            self.exhausted("--max-files")
        self.files_left -= 1

    def take(self, n):
        """Account for n more bytes to write."""
        self.check_time()
        if n > self.bytes_left:
            self.exhausted("--max-bytes")
        self.bytes_left -= n


def open_at(dir_fd, name):
    """(file object, stat) for a regular file name in dir_fd, or None.
    The file must be on the directory's file system: a file that the
    container bound there (a host file it may not even read) is not."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) \
                or st.st_dev != os.fstat(dir_fd).st_dev:
            os.close(fd)
            return None
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def readable_limit(st):
    """How much of a file with stat st may be read: no more than its size
    when opened (a file that keeps growing is not followed) and than the
    space it occupies (holes read as zeros that nobody wrote)."""
    return min(st.st_size, st.st_blocks * 512)


def data_extents(fd, size):
    """The (start, end) pieces of fd below size that hold data."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:         # ENXIO: only a hole from offset on
            return
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


def copy_to(path, copy, *args):
    """Run copy(dst, *args) into a new file that then replaces path;
    return what copy returned, or None if nothing was kept."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                               dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as dst:
            result = copy(dst, *args)
        if result:
            os.replace(tmp, path)
            tmp = None
        return result
    finally:
        if tmp is not None:
            os.unlink(tmp)


def copy_map(dst, src, st, budget):
    """Copy the valid map lines of the data that src holds; return the
    number of lines."""
    lines = 0
    limit = readable_limit(st)
    fd = src.fileno()
    pending = b""
    for start, end in data_extents(fd, st.st_size):
        if limit <= 0:
            break
        pending = b""           # a line does not span a hole
        os.lseek(fd, start, os.SEEK_SET)
        left = min(end - start, limit)
        limit -= left
        while left > 0:
            budget.check_time()
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            if len(pending) > MAX_LINE:
                pending = b""   # no line is that long
            out = b"".join(line + b"\n" for line in complete
                           if len(line) <= MAX_LINE
                           and MAP_LINE.fullmatch(line + b"\n"))
            if out:
                budget.take(len(out))
                dst.write(out)
                lines += out.count(b"\n")
    return lines


JITDUMP_MAGIC = 0x4A695444
JIT_CODE_LOAD, JIT_CODE_MOVE = 0, 1
JIT_RECORD_KINDS = range(0, 5)  # load, move, debug info, close, unwinding


def read_exactly(src, n):
    data = src.read(n)
    return data if len(data) == n else None


def copy_jitdump(dst, src, st, host_pid, budget):
    """Copy a jitdump, with the host pid in its header and in its code
    load and move records (perf inject --jit names the process by them).
    Only whole records are copied, up to the first that is incomplete or
    cannot be one.  Return False if src is not a jitdump."""
    limit = readable_limit(st)
    if limit < 40:
        return False
    header = read_exactly(src, 40)
    if header is None or struct.unpack_from("=I", header)[0] != JITDUMP_MAGIC:
        return False
    header = bytearray(header)
    header_size = struct.unpack_from("=I", header, 8)[0]
    if not 40 <= header_size <= 4096 or header_size > limit:
        return False
    rest = read_exactly(src, header_size - 40)
    if rest is None:
        return False
    struct.pack_into("=I", header, 20, host_pid)
    budget.take(header_size)
    dst.write(header)
    dst.write(rest)
    limit -= header_size
    while limit >= 16:
        budget.check_time()
        head = read_exactly(src, 16)
        if head is None:
            break
        kind, size = struct.unpack_from("=II", head)
        if kind not in JIT_RECORD_KINDS or not 16 <= size <= MAX_RECORD \
                or size > limit:
            break               # not a whole record: the copy ends here
        body = read_exactly(src, size - 16)
        if body is None:
            break
        if kind in (JIT_CODE_LOAD, JIT_CODE_MOVE):
            if len(body) < 8:
                break
            body = bytearray(body)
            struct.pack_into("=II", body, 0, host_pid, host_pid)
        budget.take(size)
        dst.write(head)
        dst.write(body)
        limit -= size
    return True


def host_target_ok(path):
    """Whether a copy may be renamed to path: anything but a directory
    (a link or another user's file is replaced, never followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if stat.S_ISDIR(st.st_mode):
        print(f"perf_record_ns: {path} is a directory: not replaced, "
              f"that copy skipped", file=sys.stderr)
        return False
    return True


def keep_process(dir_fd, host_pid, nspid, budget, dumps, places):
    """Copy the map and the jitdump that process host_pid wrote as nspid
    in its /tmp (dir_fd); add (host_pid, nspid) to dumps for a jitdump."""
    kinds = (("perf-{}.map", copy_map, (), "/tmp"),
             ("jit-{}.dump", copy_jitdump, (host_pid,), places.jit_dir))
    for name, copy, args, where in kinds:
        path = os.path.join(where, name.format(host_pid))
        opened = open_at(dir_fd, name.format(nspid))
        if opened is None:
            continue
        src, st = opened
        with src:
            if not host_target_ok(path):
                continue
            budget.new_file()
            if copy_to(path, copy, src, st, *args, budget):
                log(f"kept {path} (its {name.format(nspid)})")
                if copy is copy_jitdump:
                    dumps.add((host_pid, nspid))


class Places:
    """Where the copies go.  The maps go to /tmp, where perf looks for
    them.  The jitdumps go to a new directory of root's beside perf.data,
    made the first time one is kept: perf inject --jit writes an ELF file
    beside each jitdump, named after the process and the code index the
    dump gives, which in /tmp anyone could plant a link at."""

    def __init__(self, data_path):
        self.data_path = os.path.abspath(data_path)
        self._jit_dir = None

    @property
    def jit_dir(self):
        if self._jit_dir is None:
            self._jit_dir = tempfile.mkdtemp(
                prefix=os.path.basename(self.data_path) + ".jitdumps-",
                dir=os.path.dirname(self.data_path))
        return self._jit_dir

    def remove_unused(self):
        if self._jit_dir is not None:
            try:
                os.rmdir(self._jit_dir)     # only if nothing was kept
            except OSError:
                print(f"perf_record_ns: jitdumps kept in {self._jit_dir}",
                      file=sys.stderr)


def keep_files(tracker, budget, places):
    """Copy what the processes of other namespaces wrote; return the
    {(host pid, inner pid)} whose jitdump was kept."""
    dumps = set()
    with tracker.lock:
        processes = dict(tracker.processes)
    own_tmp = os.stat("/tmp")
    for host_pid, (nspid, key, started) in sorted(processes.items()):
        if nspid == host_pid and key == (own_tmp.st_dev, own_tmp.st_ino):
            continue            # perf finds these files itself
        now = start_time(host_pid)
        if host_pid in tracker.reused:
            print(f"perf_record_ns: pid {host_pid} was several processes' "
                  f"during the recording: its files are not touched",
                  file=sys.stderr)
            continue
        if now is not None and now != started:
            print(f"perf_record_ns: pid {host_pid} is another process's "
                  f"now: its files are not touched", file=sys.stderr)
            continue
        try:
            budget.check_time()     # also between processes with no file
            keep_process(tracker.tmp_dirs[key], host_pid, nspid, budget,
                         dumps, places)
        except BudgetExhausted:
            break
        except (OSError, ValueError) as exc:
            print(f"perf_record_ns: process {host_pid} ({nspid} in its "
                  f"namespaces) skipped: {exc}", file=sys.stderr)
    return dumps


# ---- Rewriting the jitdump markers of perf.data -----------------------------

PERF_RECORD_MMAP, PERF_RECORD_MMAP2 = 1, 10
FILENAME_OFFSET = {PERF_RECORD_MMAP: 40, PERF_RECORD_MMAP2: 72}


def rewrite_markers(stream, dumps, jit_dir):
    """Yield the records of a pipe-mode perf.data stream, with the mmap of
    /.../jit-NSPID.dump by host pid HOSTPID naming JIT_DIR/jit-HOSTPID.dump."""
    header = stream.read(16)
    yield header
    wanted = {host: f"/jit-{ns}.dump".encode() for host, ns in dumps}
    while True:
        head = stream.read(8)
        if len(head) < 8:
            if head:
                yield head
            return
        kind, misc, size = struct.unpack("=IHH", head)
        body = stream.read(size - 8)
        record = head + body
        where = FILENAME_OFFSET.get(kind)
        if where is not None and size > where:
            pid = struct.unpack_from("=I", record, 8)[0]
            end = record.find(b"\0", where)
            name = record[where:end]
            if end > 0 and pid in wanted and name.endswith(wanted[pid]):
                padded = (end - where + 1 + 7) & ~7
                trailer = record[where + padded:]
                new_path = os.path.join(jit_dir, f"jit-{pid}.dump")
                new_name = os.fsencode(new_path) + b"\0"
                new_name += b"\0" * (-len(new_name) % 8)
                record = bytearray(record[:where] + new_name + trailer)
                struct.pack_into("=H", record, 6, len(record))
                record = bytes(record)
                log(f"marker of process {pid}: {shown(name)} -> "
                    f"{new_path}")
        yield record


def rewrite_perf_data(perf, data_path, dumps, jit_dir):
    tmp_path = data_path + ".ns-tmp"
    reader = subprocess.Popen([perf, "inject", "-i", data_path, "-o", "-"],
                              stdout=subprocess.PIPE)
    writer = subprocess.Popen([perf, "inject", "-i", "-", "-o", tmp_path],
                              stdin=subprocess.PIPE)
    try:
        for chunk in rewrite_markers(reader.stdout, dumps, jit_dir):
            writer.stdin.write(chunk)
    finally:
        writer.stdin.close()
        reader.stdout.close()
        ok = reader.wait() == 0 and writer.wait() == 0
    if not ok:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise OSError(f"perf inject could not rewrite {data_path}")
    os.replace(tmp_path, data_path)


# ---- Main -------------------------------------------------------------------


def output_path(record_args):
    """The perf.data file that perf record args write."""
    path = "perf.data"
    i = 0
    while i < len(record_args):
        arg = record_args[i]
        if arg == "--":
            break
        if arg in ("-o", "--output") and i + 1 < len(record_args):
            path = record_args[i + 1]
            i += 1
        elif arg.startswith("--output="):
            path = arg.split("=", 1)[1]
        elif arg.startswith("-o") and len(arg) > 2:
            path = arg[2:]
        i += 1
    return path


def parse_size(text):
    """A number of bytes, with an optional K, M or G suffix."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper())
    value = int(text[:-1] if scale else text)
    if value < 0:
        raise ValueError(text)
    return value * (scale or 1)


def parse_count(text):
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


OPTIONS = {"--max-bytes": parse_size, "--max-files": parse_count,
           "--max-seconds": float}


def held_directories():
    """How many containers' /tmp directories may be held open: half of the
    descriptors this process may have (its soft limit raised to the hard
    one first)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, (soft - 64) // 2)


def main(argv):
    global VERBOSE
    args = argv[1:]
    limits = {"--max-bytes": 256 << 20, "--max-files": 4096,
              "--max-seconds": 60.0}
    while args and (args[0] == "-v" or args[0].split("=")[0] in OPTIONS):
        if args[0] == "-v":
            VERBOSE = True
            args = args[1:]
            continue
        name, eq, value = args[0].partition("=")
        if not eq:
            if len(args) < 2:
                args = []
                break
            value = args[1]
            args = args[1:]
        args = args[1:]
        try:
            limits[name] = OPTIONS[name](value)
        except ValueError:
            print(f"perf_record_ns: {name}: invalid value {value!r}",
                  file=sys.stderr)
            return 2
    if args[:1] == ["--"]:
        args = args[1:]
    if len(args) < 2 or os.path.basename(args[0]) != "perf" \
            or args[1] != "record":
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    perf = args[0]
    tracker = Tracker(held_directories())
    try:
        watcher = EventWatcher(tracker)
    except OSError as exc:
        print(f"perf_record_ns: no process events ({exc.strerror}): "
              f"scanning /proc instead; processes that live less than "
              f"50 ms may be missed", file=sys.stderr)
        watcher = PollWatcher(tracker)
    watcher.start()
    tracker.scan()
    # Ctrl-C reaches perf record (which stops and writes its file) and
    # this script, which must go on to keep the files: a handler, not
    # SIG_IGN, so that perf and its command get the default again.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        rc = subprocess.call(args)
    finally:
        # perf is done: a Ctrl-C now stops the copies (they leave nothing).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        tracker.scan()          # the processes that are still there
        watcher.stop()
    budget = Budget(limits["--max-bytes"], limits["--max-files"],
                    limits["--max-seconds"])
    places = Places(output_path(args[2:]))
    try:
        dumps = keep_files(tracker, budget, places)
        if dumps:
            rewrite_perf_data(perf, places.data_path, dumps,
                              places.jit_dir)
    except OSError as exc:
        print(f"perf_record_ns: {exc}", file=sys.stderr)
        return 1
    finally:
        tracker.close()
        places.remove_unused()
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
