/*
 * The profiler's files in /tmp: opening them safely, keeping them ours,
 * writing them whole.
 *
 * The problem
 * -----------
 * perf looks for its side files at fixed names in a world-writable
 * directory: /tmp/perf-PID.map (Python/perf_map.c) and /tmp/jit-PID.dump
 * (Python/perf_jitdump.c).  Anyone can create those names before the process
 * does, an earlier process with the same pid may have left one behind, and
 * the profiled program itself may close the descriptor under our feet (a
 * daemon that calls os.closerange()) and open its own file at the same
 * number.  A profiler must never write into or close somebody else's file.
 *
 * The design
 * ----------
 * Both files are a _PyPerfOutput: a path, a descriptor, the identity
 * (device and inode) of the file the descriptor was opened on, the pid of
 * the process that opened it, and a lock that serialises every use.
 * _PyPerfOutput_Prepare() is called, with the lock held, before each write:
 *
 *   - if the descriptor was opened by this process and fstat() still finds
 *     the same file behind it, the file is ready (the common case: one
 *     fstat(2), a few hundred nanoseconds, once per code object described);
 *   - if the descriptor was closed or now belongs to another file, it is
 *     forgotten, never closed (it is not ours anymore), and the path is
 *     opened again, for appending;
 *   - in a forked child the parent's descriptor is let go the same way and
 *     the child opens its own file, at its first write only: a child that
 *     calls exec() right away leaves nothing behind.
 *
 * Opening refuses what perf itself would not trust or what could hurt us:
 * symbolic links (O_NOFOLLOW), FIFOs and devices (O_NONBLOCK while opening,
 * then the file must be regular), files of another user or with other hard
 * links.  Files are created with mode 0600 and close-on-exec, and the
 * descriptor is moved above 2, so that a program started with a standard
 * stream closed never finds our file at 0, 1 or 2.
 *
 * A process starts its files afresh.  The first time a process opens a path
 * it empties what is there, unless the file was modified after the process
 * started: that is another writer of this process (a JIT that writes the
 * perf map itself), whose lines are kept.  A leftover of a dead process
 * with the same pid (a container restarted as pid 1 with a persistent /tmp)
 * is older than the process, and goes.  Later opens in the same process (a
 * switch of backend and back, a descriptor lost) append.  A file that the
 * first open created or emptied and that the caller then gives up on (the
 * jitdump on a noexec /tmp) is removed again.
 *
 * Writes are whole: a loop survives EINTR and short writes, and cuts what a
 * failed write left half-way (disk full, file size limit), so a line or a
 * record reaches the file in one piece or not at all.
 *
 * Nothing here may take the GIL or allocate through Python's allocators
 * (whose hooks, such as tracemalloc's, may take the GIL): the C API writes
 * the map from threads that do not hold the GIL, while a thread that holds
 * it may wait for the same lock.  Failures are recorded with
 * _PyPerf_SetError() and never raised here.
 */

#include "Python.h"
#include "pycore_perf_trampoline.h"   // _PyPerfOutput

#ifndef MS_WINDOWS

#include <errno.h>                    // errno, EINTR
#include <fcntl.h>                    // open(), O_NOFOLLOW, F_DUPFD_CLOEXEC
#include <stdarg.h>                   // va_list
#include <stdio.h>                    // sscanf()
#include <string.h>                   // strerror_r(), strrchr()
#include <sys/stat.h>                 // fstat()
#include <time.h>                     // clock_gettime()
#include <unistd.h>                   // write(), ftruncate(), getpid()


/* ---- The last error ---------------------------------------------------- */

/* Per thread, since the C API may fail in several threads at once. */
static _Thread_local char perf_error[512] = "no error";

void
_PyPerf_SetError(int errnum, const char *format, ...)
{
    int saved_errno = errno;
    char message[sizeof(perf_error)];
    va_list vargs;
    va_start(vargs, format);
    PyOS_vsnprintf(message, sizeof(message), format, vargs);
    va_end(vargs);
    if (errnum != 0) {
        char reason[128];
        /* The GNU strerror_r() may return a static string instead of
           filling the buffer; both are handled by using its result. */
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
        const char *text = strerror_r(errnum, reason, sizeof(reason));
#else
        const char *text = reason;
        if (strerror_r(errnum, reason, sizeof(reason)) != 0) {
            PyOS_snprintf(reason, sizeof(reason), "errno %d", errnum);
        }
#endif
        PyOS_snprintf(perf_error, sizeof(perf_error), "%s: %s",
                      message, text);
    }
    else {
        memcpy(perf_error, message, sizeof(perf_error));
    }
    errno = saved_errno;
}

const char *
_PyPerf_GetError(void)
{
    return perf_error;
}


/* ---- Locks and fork ------------------------------------------------------ */

void
_PyPerf_ResetLockAfterFork(pthread_mutex_t *lock)
{
    /* Only the thread that forked exists in the child: whoever held the
       lock in the parent is gone. */
    pthread_mutex_init(lock, NULL);
}


/* ---- When this process started ----------------------------------------- */

/* The wall-clock time at which this process started, from the start time
   in /proc/self/stat (clock ticks since boot) and the boot time.  Return 0
   and set *start, or -1 if procfs does not say. */
static int
process_start_time(struct timespec *start)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    ssize_t n;
    do {
        n = read(fd, buf, sizeof(buf) - 1);
    } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) {
        return -1;
    }
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: the
       fields that follow start after its last ')'. */
    const char *p = strrchr(buf, ')');
    unsigned long long ticks;
    if (p == NULL
        || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
                  "%*u %*u %*d %*d %*d %*d %*d %*d %llu", &ticks) != 1)
    {
        return -1;
    }
    long hz = sysconf(_SC_CLK_TCK);
    struct timespec now, since_boot;
    if (hz <= 0 || clock_gettime(CLOCK_REALTIME, &now) != 0
        || clock_gettime(CLOCK_BOOTTIME, &since_boot) != 0)
    {
        return -1;
    }
    /* boot = now - since_boot; start = boot + ticks / hz */
    long long ns = (long long)(now.tv_sec - since_boot.tv_sec) * 1000000000
                   + (now.tv_nsec - since_boot.tv_nsec)
                   + (long long)(ticks / (unsigned long long)hz) * 1000000000
                   + (long long)(ticks % (unsigned long long)hz)
                     * (1000000000 / hz);
    start->tv_sec = (time_t)(ns / 1000000000);
    start->tv_nsec = (long)(ns % 1000000000);
    return 0;
}

/* Whether the file described by st was left by an earlier process: it was
   last modified before this process started (or, clocks being what they
   are, in the future).  When procfs cannot say, every file found at the
   first open is taken as left over. */
static int
left_over(const struct stat *st)
{
    struct timespec start, now;
    if (process_start_time(&start) < 0
        || clock_gettime(CLOCK_REALTIME, &now) != 0)
    {
        return 1;
    }
    if (st->st_mtim.tv_sec > now.tv_sec + 1) {
        return 1;
    }
    if (st->st_mtim.tv_sec != start.tv_sec) {
        return st->st_mtim.tv_sec < start.tv_sec;
    }
    return st->st_mtim.tv_nsec < start.tv_nsec;
}


/* ---- Opening ------------------------------------------------------------ */

static void
close_quietly(int fd)
{
    int saved_errno = errno;
    close(fd);
    errno = saved_errno;
}

/* Whether descriptor fd still leads to the file whose identity st holds:
   another thread of the program may close it and open its own file at the
   same number at any moment. */
static int
same_file(int fd, const struct stat *st)
{
    struct stat now;
    return fstat(fd, &now) == 0 && now.st_dev == st->st_dev
           && now.st_ino == st->st_ino;
}

/* Open path and check that it is a file we may write.  Set *created when
   this call created it.  Return the descriptor, above 2, or -1 after
   _PyPerf_SetError().  A descriptor is closed only while it is known to be
   the file at path: never one that the program took over meanwhile. */
static int
open_checked(const char *path, int readable, struct stat *st, int *created)
{
    int access = readable ? O_RDWR : O_WRONLY;
    int common = access | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK
                 | O_NOCTTY;
    int fd;
    *created = 1;
    do {
        fd = open(path, common | O_CREAT | O_EXCL, 0600);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0 && errno == EEXIST) {
        *created = 0;
        do {
            fd = open(path, common);
        } while (fd < 0 && errno == EINTR);
    }
    if (fd < 0) {
        if (errno == ELOOP) {
            _PyPerf_SetError(0, "refusing to open %s: it is a symbolic link",
                             path);
        }
        else if (errno == ENXIO) {
            /* A FIFO without a reader, or a socket. */
            _PyPerf_SetError(0, "refusing to write %s: not a regular file",
                             path);
        }
        else {
            _PyPerf_SetError(errno, "cannot open %s", path);
        }
        return -1;
    }
    struct stat at_path;
    if (fstat(fd, st) != 0 || lstat(path, &at_path) != 0
        || st->st_dev != at_path.st_dev || st->st_ino != at_path.st_ino)
    {
        /* Taken over by the program, or the name moved: not ours to close,
           and not to be written. */
        _PyPerf_SetError(0, "cannot open %s: it changed while opening",
                         path);
        errno = EAGAIN;
        return -1;
    }
    if (fd <= 2) {
        /* A standard stream was closed: keep out of its way. */
        int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (high < 0) {
            _PyPerf_SetError(errno, "cannot move the descriptor of %s",
                             path);
            goto error;
        }
        if (same_file(fd, st)) {
            close(fd);
        }
        fd = high;
    }

    if (!S_ISREG(st->st_mode)) {
        _PyPerf_SetError(0, "refusing to write %s: not a regular file", path);
        errno = EINVAL;
        goto error;
    }
    if (st->st_uid != geteuid()) {
        _PyPerf_SetError(0, "refusing to write %s: owned by uid %ld, "
                         "not by this process (uid %ld)", path,
                         (long)st->st_uid, (long)geteuid());
        errno = EPERM;
        goto error;
    }
    if (st->st_nlink != 1) {
        _PyPerf_SetError(0, "refusing to write %s: it has %ld hard links",
                         path, (long)st->st_nlink);
        errno = EPERM;
        goto error;
    }
    /* Writes may block from now on, like any regular file write. */
    int status = fcntl(fd, F_GETFL);
    if (status < 0 || fcntl(fd, F_SETFL, status & ~O_NONBLOCK) < 0) {
        _PyPerf_SetError(errno, "cannot configure %s", path);
        goto error;
    }
    return fd;

error:
    if (same_file(fd, st)) {
        close_quietly(fd);
    }
    return -1;
}

/* Whether out's descriptor is still the file this process opened. */
static int
still_ours(const _PyPerfOutput *out, pid_t pid)
{
    if (out->fd < 0 || out->pid != pid) {
        return 0;
    }
    struct stat st;
    if (fstat(out->fd, &st) != 0) {
        return 0;
    }
    return st.st_dev == out->dev && st.st_ino == out->ino;
}

int
_PyPerfOutput_Prepare(_PyPerfOutput *out)
{
    pid_t pid = getpid();
    if (still_ours(out, pid)) {
        return _PyPerfOutput_READY;
    }
    /* Closed by the program, reused for another file, or the parent's:
       not ours to close. */
    out->fd = -1;
    PyOS_snprintf(out->path, sizeof(out->path), out->path_format, (long)pid);

    struct stat st;
    int created;
    int fd = open_checked(out->path, out->readable, &st, &created);
    if (fd < 0) {
        return _PyPerfOutput_FAILED;
    }
    int first = (out->started_by != pid);
    int fresh = first && created;
    if (first && !created && st.st_size != 0
        && (out->always_fresh || left_over(&st)))
    {
        if (ftruncate(fd, 0) != 0) {
            _PyPerf_SetError(errno, "cannot truncate %s", out->path);
            if (same_file(fd, &st)) {
                close_quietly(fd);
            }
            return _PyPerfOutput_FAILED;
        }
        st.st_size = 0;
        fresh = 1;
    }
    out->fd = fd;
    out->pid = pid;
    out->dev = st.st_dev;
    out->ino = st.st_ino;
    out->started_here = fresh;
    out->started_by = pid;
    return st.st_size == 0 ? _PyPerfOutput_EMPTY : _PyPerfOutput_READY;
}

void
_PyPerfOutput_Close(_PyPerfOutput *out)
{
    if (still_ours(out, getpid())) {
        close(out->fd);
    }
    out->fd = -1;
}

void
_PyPerfOutput_Discard(_PyPerfOutput *out)
{
    pid_t pid = getpid();
    if (!still_ours(out, pid)) {
        out->fd = -1;
        return;
    }
    if (out->started_here) {
        /* Remove the name only if it still leads to our file. */
        struct stat st;
        if (lstat(out->path, &st) == 0 && st.st_dev == out->dev
            && st.st_ino == out->ino)
        {
            unlink(out->path);
        }
        /* The next open starts afresh. */
        out->started_by = 0;
    }
    close(out->fd);
    out->fd = -1;
}

void
_PyPerfOutput_BeforeFork(_PyPerfOutput *out)
{
    pthread_mutex_lock(&out->lock);
}

void
_PyPerfOutput_AfterForkParent(_PyPerfOutput *out)
{
    pthread_mutex_unlock(&out->lock);
}

int
_PyPerfOutput_AfterForkChild(_PyPerfOutput *out, int keep)
{
    _PyPerf_ResetLockAfterFork(&out->lock);
    /* The descriptor is the parent's file: the child opens its own, with
       its own pid, when it first writes.  Its copy of the descriptor is
       closed (or handed over) if the program has not already closed or
       reused it. */
    int inherited = -1;
    if (out->fd >= 0) {
        struct stat st;
        if (fstat(out->fd, &st) == 0 && st.st_dev == out->dev
            && st.st_ino == out->ino)
        {
            if (keep) {
                inherited = out->fd;
            }
            else {
                close(out->fd);
            }
        }
        out->fd = -1;
    }
    return inherited;
}


/* ---- Writing ------------------------------------------------------------ */

/* After a write that failed half-way (disk full, file size limit), cut the
   part that made it, so that the file ends with a whole line or record.
   The callers hold the file's lock and open it with O_APPEND, so the part
   is at the end. */
static void
remove_partial_write(int fd, size_t written)
{
    off_t end = lseek(fd, 0, SEEK_END);
    if (end >= (off_t)written) {
        (void)ftruncate(fd, end - (off_t)written);
    }
}

int
_PyPerfOutput_Write(_PyPerfOutput *out, const void *buf, size_t size)
{
    const char *p = buf;
    size_t written = 0;
    while (written < size) {
        ssize_t n = write(out->fd, p + written, size - written);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            int saved_errno = (n < 0) ? errno : ENOSPC;
            if (written > 0) {
                remove_partial_write(out->fd, written);
            }
            _PyPerf_SetError(saved_errno, "cannot write %s", out->path);
            errno = saved_errno;
            return -1;
        }
        written += (size_t)n;
    }
    return 0;
}

#endif /* !MS_WINDOWS */
