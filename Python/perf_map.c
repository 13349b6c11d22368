/*
 * The perf map: /tmp/perf-PID.map, and the "perf" backend that writes it.
 *
 * perf names addresses that belong to no binary by reading, at report time,
 * a text file with one line per piece of code:
 *
 *     START SIZE NAME
 *     7f3a5c2e1000 18 py::foo:/home/me/demo.py
 *
 * START and SIZE are hexadecimal without "0x"; NAME is the rest of the line.
 * The file must belong to the profiled process's user and must still exist
 * when `perf report` or `perf script` runs, so it is never removed.
 *
 * One process has one map, and several writers may share it: the
 * interpreter's trampolines (the "perf" backend below, with the GIL held)
 * and C code through the PyUnstable_* API (any thread, with or without the
 * GIL).  So:
 *
 *   - one lock serialises every use of the file descriptor;
 *   - each line is formatted first, then written with a single write(2) on
 *     a descriptor opened with O_APPEND: a line is never torn or mixed with
 *     another, and it is in the file (not in a buffer) as soon as the write
 *     returns, even if the process dies right after;
 *   - control characters in names (a newline in a file name) become '?',
 *     since a line break would cut the line in two.
 *
 * The file is opened lazily and safely (Python/perf_outfile.c).  After
 * fork() the child must not write into its parent's map: the lock is reset,
 * the inherited descriptor closed, and the child opens /tmp/perf-CHILDPID.map
 * at its first write.  A write from a forked child that never ran
 * PyOS_AfterFork_Child() notices the new pid and does the same.
 */

#include "Python.h"
#include "pycore_perf_trampoline.h"   // _PyPerf_Backend

#ifndef MS_WINDOWS

#include <errno.h>                    // errno
#include <fcntl.h>                    // open()
#include <inttypes.h>                 // PRIxPTR
#include <pthread.h>                  // pthread_mutex_t
#include <stdint.h>                   // uintptr_t
#include <string.h>                   // memcpy()
#include <sys/stat.h>                 // fstat()
#include <unistd.h>                   // getpid(), close()


static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;

static struct {
    int fd;                           // -1 when closed
    pid_t pid;                        // the process the file belongs to
    char path[64];
} map = {.fd = -1};

/* The pid of the map that a forked child's parent had open, for
   PyUnstable_PerfTrampoline_SetPersistAfterFork(). */
static pid_t parent_map_pid;


/* ---- The file, with map_lock held --------------------------------------- */

static void
close_locked(void)
{
    if (map.fd >= 0) {
        close(map.fd);
        map.fd = -1;
    }
}

static int
open_locked(void)
{
    pid_t pid = getpid();
    if (map.fd >= 0 && map.pid == pid) {
        return 0;
    }
    if (map.fd >= 0) {
        /* A forked child that did not run PyOS_AfterFork_Child(): the
           descriptor is the parent's. */
        close_locked();
    }
    PyOS_snprintf(map.path, sizeof(map.path), "/tmp/perf-%ld.map",
                  (long)pid);
    int fd = _PyPerf_OpenOutput(map.path, 0);   // append: shared with C code
    if (fd < 0) {
        return -1;
    }
    map.fd = fd;
    map.pid = pid;
    return 0;
}

/* Format "START SIZE NAME\n" into buf (of size bufsize), or into a new
   PyMem_RawMalloc() buffer when it does not fit.  Return the line and set
   *len, or return NULL when out of memory. */
static char *
format_line(char *buf, size_t bufsize, const void *code, size_t size,
            const char *name, size_t *len)
{
    char prefix[2 * 20 + 3];
    int n = PyOS_snprintf(prefix, sizeof(prefix), "%" PRIxPTR " %zx ",
                          (uintptr_t)code, size);
    size_t name_len = strlen(name);
    size_t total = (size_t)n + name_len + 1;
    char *line = buf;
    if (total > bufsize) {
        line = PyMem_RawMalloc(total);
        if (line == NULL) {
            return NULL;
        }
    }
    memcpy(line, prefix, (size_t)n);
    for (size_t i = 0; i < name_len; i++) {
        unsigned char c = (unsigned char)name[i];
        line[n + i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    line[total - 1] = '\n';
    *len = total;
    return line;
}

static int
write_entry(const void *code, size_t size, const char *name)
{
    char buf[512];
    size_t len;
    char *line = format_line(buf, sizeof(buf), code, size, name, &len);
    if (line == NULL) {
        _PyPerf_SetError(ENOMEM, "cannot format a perf map entry");
        errno = ENOMEM;
        return -1;
    }
    int res;
    pthread_mutex_lock(&map_lock);
    res = open_locked();
    if (res == 0) {
        res = _PyPerf_WriteAll(map.fd, line, len, map.path);
    }
    int saved_errno = errno;
    pthread_mutex_unlock(&map_lock);
    if (line != buf) {
        PyMem_RawFree(line);
    }
    errno = saved_errno;
    return res;
}

int
_PyPerfMap_WriteEntry(const void *code, size_t size, const char *name)
{
    return write_entry(code, size, name);
}

/* Copy the lines of the map at path into this process's map, whole lines
   only, each batch with one write.  Only what the file holds when the copy
   starts is copied; a last line without a newline gets one, so that the
   next entry starts a line of its own. */
static int
copy_map(const char *path)
{
    int src = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (src < 0) {
        _PyPerf_SetError(errno, "cannot read %s", path);
        return -1;
    }
    struct stat src_st;
    if (fstat(src, &src_st) != 0 || !S_ISREG(src_st.st_mode)) {
        int err = errno ? errno : EINVAL;
        close(src);
        _PyPerf_SetError(err, "cannot copy %s: not a regular file", path);
        errno = err;
        return -1;
    }
    size_t size = 64 * 1024, used = 0;
    off_t left = src_st.st_size;
    char *buf = PyMem_RawMalloc(size + 1);
    if (buf == NULL) {
        close(src);
        _PyPerf_SetError(ENOMEM, "cannot copy %s", path);
        errno = ENOMEM;
        return -1;
    }
    pthread_mutex_lock(&map_lock);
    int res = open_locked();
    struct stat map_st;
    if (res == 0 && fstat(map.fd, &map_st) == 0
        && map_st.st_dev == src_st.st_dev && map_st.st_ino == src_st.st_ino)
    {
        _PyPerf_SetError(0, "cannot copy %s into itself", path);
        errno = EINVAL;
        res = -1;
    }
    while (res == 0) {
        size_t want = size - used;
        if ((off_t)want > left) {
            want = (size_t)left;
        }
        ssize_t n = want ? read(src, buf + used, want) : 0;
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            _PyPerf_SetError(errno, "cannot read %s", path);
            res = -1;
            break;
        }
        used += (size_t)n;
        left -= n;
        /* Write what ends with a newline; keep a partial last line. */
        size_t whole = used;
        while (whole > 0 && buf[whole - 1] != '\n') {
            whole--;
        }
        if (n == 0 && used > 0 && whole < used) {
            buf[used++] = '\n';        // the last line, completed
            whole = used;
        }
        if (whole > 0) {
            res = _PyPerf_WriteAll(map.fd, buf, whole, map.path);
            memmove(buf, buf + whole, used - whole);
            used -= whole;
        }
        if (n == 0) {
            break;
        }
        if (used == size) {     // one line longer than the buffer
            char *bigger = PyMem_RawRealloc(buf, size * 2 + 1);
            if (bigger == NULL) {
                _PyPerf_SetError(ENOMEM, "cannot copy %s", path);
                res = -1;
                break;
            }
            buf = bigger;
            size *= 2;
        }
    }
    int saved_errno = errno;
    pthread_mutex_unlock(&map_lock);
    PyMem_RawFree(buf);
    close(src);
    errno = saved_errno;
    return res;
}

void
_PyPerfMap_AfterForkChild(void)
{
    /* Another thread of the parent may have held the lock during fork(). */
    pthread_mutex_t unlocked = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&map_lock, &unlocked, sizeof(map_lock));
    parent_map_pid = (map.fd >= 0) ? map.pid : 0;
    close_locked();
}


/* ---- The "perf" backend ------------------------------------------------- */

static int
map_backend_open(void)
{
    pthread_mutex_lock(&map_lock);
    int res = open_locked();
    pthread_mutex_unlock(&map_lock);
    return res;
}

static int
map_backend_emit(const void *code, size_t size, const char *name,
                 PyCodeObject *Py_UNUSED(co))
{
    return write_entry(code, size, name);
}

static void
map_backend_close(void)
{
    /* The map stays open for C code that shares it; closing it is the job of
       PyUnstable_PerfMapState_Fini() and of finalisation. */
}

static int
map_backend_after_fork_child(int persist)
{
    if (map_backend_open() < 0) {
        return -1;
    }
    if (!persist || parent_map_pid == 0) {
        return 0;
    }
    char parent[64];
    PyOS_snprintf(parent, sizeof(parent), "/tmp/perf-%ld.map",
                  (long)parent_map_pid);
    return copy_map(parent) < 0 ? -1 : 1;
}

static size_t
map_backend_reserved_after(size_t Py_UNUSED(code_size))
{
    return 0;
}

const _PyPerf_Backend _PyPerf_MapBackend = {
    .name = "perf",
    .reserved_after = map_backend_reserved_after,
    .open = map_backend_open,
    .emit = map_backend_emit,
    .close = map_backend_close,
    .after_fork_child = map_backend_after_fork_child,
};


/* ---- C API -------------------------------------------------------------- */

int
PyUnstable_PerfMapState_Init(void)
{
    return map_backend_open();
}

int
PyUnstable_WritePerfMapEntry(const void *code_addr, unsigned int code_size,
                             const char *entry_name)
{
    if (entry_name == NULL) {
        errno = EINVAL;
        return -1;
    }
    return write_entry(code_addr, code_size, entry_name);
}

void
PyUnstable_PerfMapState_Fini(void)
{
    pthread_mutex_lock(&map_lock);
    close_locked();
    pthread_mutex_unlock(&map_lock);
}

int
PyUnstable_CopyPerfMapFile(const char *parent_filename)
{
    if (parent_filename == NULL) {
        errno = EINVAL;
        return -1;
    }
    return copy_map(parent_filename);
}

#else  /* MS_WINDOWS */

int
PyUnstable_PerfMapState_Init(void)
{
    errno = ENOTSUP;
    return -1;
}

int
PyUnstable_WritePerfMapEntry(const void *code_addr, unsigned int code_size,
                             const char *entry_name)
{
    errno = ENOTSUP;
    return -1;
}

void
PyUnstable_PerfMapState_Fini(void)
{
}

int
PyUnstable_CopyPerfMapFile(const char *parent_filename)
{
    errno = ENOTSUP;
    return -1;
}

#endif /* MS_WINDOWS */
