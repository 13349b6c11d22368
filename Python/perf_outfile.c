/*
 * Writing the profiler's files in /tmp, safely.
 *
 * perf looks for its side files at fixed names in a world-writable directory:
 * /tmp/perf-PID.map and /tmp/jit-PID.dump.  Anyone can create those names
 * before the process does, so the perf support (Python/perf_map.c and
 * Python/perf_jit_trampoline.c) opens them only through this file, which
 *
 *   - never follows a symbolic link (O_NOFOLLOW),
 *   - never blocks on a FIFO or device planted there (O_NONBLOCK while
 *     opening, then the file must be a regular file),
 *   - never writes into a file owned by another user, nor into one with
 *     other hard links, since perf itself only trusts files owned by the
 *     profiled user,
 *   - creates the file with mode 0600 and close-on-exec, so that programs
 *     started with exec() do not inherit it,
 *   - and writes each buffer whole: a loop that survives EINTR and short
 *     writes, and that cuts what a failed write left half-way (disk full,
 *     file size limit), so a line or a record reaches the file in one
 *     piece or not at all.
 *
 * Failures are recorded with _PyPerf_SetError() and never raised here: the
 * callers decide whether to warn once, raise, or return an error code.
 */

#include "Python.h"
#include "pycore_perf_trampoline.h"   // _PyPerf_OpenOutput()

#include <errno.h>                    // errno, EINTR
#include <fcntl.h>                    // open(), O_NOFOLLOW, O_CLOEXEC
#include <stdarg.h>                   // va_list
#include <string.h>                   // strerror_r()
#include <sys/stat.h>                 // fstat()
#include <unistd.h>                   // write(), ftruncate(), lseek()


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


/* ---- Opening ------------------------------------------------------------ */

int
_PyPerf_OpenOutput(const char *path, int flags)
{
    int access = (flags & _PyPerf_OUTPUT_READABLE) ? O_RDWR : O_WRONLY;
    int fd;
    do {
        fd = open(path,
                  access | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC
                  | O_NONBLOCK | O_NOCTTY,
                  0600);
    } while (fd < 0 && errno == EINTR);
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

    struct stat st;
    if (fstat(fd, &st) != 0) {
        _PyPerf_SetError(errno, "cannot stat %s", path);
        goto error;
    }
    if (!S_ISREG(st.st_mode)) {
        _PyPerf_SetError(0, "refusing to write %s: not a regular file", path);
        errno = EINVAL;
        goto error;
    }
    if (st.st_uid != geteuid()) {
        _PyPerf_SetError(0, "refusing to write %s: owned by uid %ld, "
                         "not by this process (uid %ld)", path,
                         (long)st.st_uid, (long)geteuid());
        errno = EPERM;
        goto error;
    }
    if (st.st_nlink != 1) {
        _PyPerf_SetError(0, "refusing to write %s: it has %ld hard links",
                         path, (long)st.st_nlink);
        errno = EPERM;
        goto error;
    }

    /* Writes may block from now on, like any regular file write. */
    int status = fcntl(fd, F_GETFL);
    if (status < 0 || fcntl(fd, F_SETFL, status & ~O_NONBLOCK) < 0) {
        _PyPerf_SetError(errno, "cannot configure %s", path);
        goto error;
    }
    if ((flags & _PyPerf_OUTPUT_TRUNCATE) && st.st_size != 0
        && ftruncate(fd, 0) != 0)
    {
        _PyPerf_SetError(errno, "cannot truncate %s", path);
        goto error;
    }
    return fd;

error:
    {
        int saved_errno = errno;
        close(fd);
        errno = saved_errno;
    }
    return -1;
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
_PyPerf_WriteAll(int fd, const void *buf, size_t size, const char *path)
{
    const char *p = buf;
    size_t written = 0;
    while (written < size) {
        ssize_t n = write(fd, p + written, size - written);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            int saved_errno = (n < 0) ? errno : ENOSPC;
            if (written > 0) {
                remove_partial_write(fd, written);
            }
            _PyPerf_SetError(saved_errno, "cannot write %s", path);
            errno = saved_errno;
            return -1;
        }
        written += (size_t)n;
    }
    return 0;
}
