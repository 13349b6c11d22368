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
 *   - control characters in names (a newline in a file name) become '?'
 *     (_PyPerf_CleanName(), which the jitdump writer uses too), since a
 *     line break would cut the line in two.
 *
 * The file is opened lazily and safely, and starts empty in each process
 * (Python/perf_outfile.c).  After fork() the child must not write into its
 * parent's map: the lock is reset, the inherited descriptor let go, and the
 * child opens /tmp/perf-CHILDPID.map at its first write, so that a child
 * that calls exec() leaves no map behind.  A write from a forked child that
 * never ran PyOS_AfterFork_Child() notices the new pid and does the same.
 * With PyUnstable_PerfTrampoline_SetPersistAfterFork(1), the child instead
 * starts its map at once with a copy of the parent's: whatever wrote the
 * parent's lines (the perf backend, C code, both), whether or not the perf
 * backend is active, the child can name the code it inherited.
 */

#include "Python.h"
#include "pycore_perf_trampoline.h"   // _PyPerf_Backend

#ifndef MS_WINDOWS

#include <errno.h>                    // errno
#include <fcntl.h>                    // open()
#include <inttypes.h>                 // PRIxPTR
#include <stdint.h>                   // uintptr_t
#include <stdlib.h>                   // malloc()
#include <string.h>                   // memcpy()
#include <sys/stat.h>                 // fstat()
#include <unistd.h>                   // getpid(), close()


/* Fresh per process, except for lines that another writer of this process
   wrote before the interpreter first opened the map (see perf_outfile.c).
   Readable, so that a forked child can copy it through the descriptor it
   inherits. */
static _PyPerfOutput map = _PyPerfOutput_INIT("/tmp/perf-%ld.map", 1, 0);


void
_PyPerf_CleanName(char *dest, const char *name, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        dest[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
}

/* Format "START SIZE NAME\n" into buf (of size bufsize), or into a new
   malloc() buffer when it does not fit.  Return the line and set *len, or
   return NULL when out of memory.  Python's allocators are not used here
   nor anywhere in this file: their hooks may take the GIL, which a caller
   without it must never wait for while it holds the map's lock. */
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
        line = malloc(total);
        if (line == NULL) {
            return NULL;
        }
    }
    memcpy(line, prefix, (size_t)n);
    _PyPerf_CleanName(line + n, name, name_len);
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
    pthread_mutex_lock(&map.lock);
    res = _PyPerfOutput_Prepare(&map);
    if (res >= 0) {
        res = _PyPerfOutput_Write(&map, line, len);
    }
    int saved_errno = errno;
    pthread_mutex_unlock(&map.lock);
    if (line != buf) {
        free(line);
    }
    errno = saved_errno;
    return res < 0 ? -1 : 0;
}

/* Longer lines are not names: copy_lines() drops them. */
#define MAX_LINE_SIZE (1024 * 1024)

/* Make a line of another writer safe to append: control characters and
   NUL (a sparse file, a corrupt map) become '?', as in write_entry(). */
static void
clean_line_bytes(char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if ((c < 0x20 && c != '\n') || c == 0x7f) {
            p[i] = '?';
        }
    }
}

/* Append to this process's map the lines of src, a regular file, read with
   pread() from offset 0 up to size bytes; whole lines only, each batch with
   one write, lines longer than MAX_LINE_SIZE dropped.  A last line without
   a newline gets one if complete_last, else it is dropped (it may be a
   line that another process is writing).  what names src in errors. */
static int
copy_lines(int src, off_t size, int complete_last, const char *what)
{
    size_t capacity = 64 * 1024, used = 0;
    off_t offset = 0;
    int skipping = 0;           // inside a line that is too long
    char *buf = malloc(capacity + 1);
    if (buf == NULL) {
        _PyPerf_SetError(ENOMEM, "cannot copy %s", what);
        errno = ENOMEM;
        return -1;
    }
    pthread_mutex_lock(&map.lock);
    int res = _PyPerfOutput_Prepare(&map) < 0 ? -1 : 0;
    struct stat src_st;
    if (res == 0 && fstat(src, &src_st) == 0 && map.dev == src_st.st_dev
        && map.ino == src_st.st_ino)
    {
        _PyPerf_SetError(0, "cannot copy %s into itself", what);
        errno = EINVAL;
        res = -1;
    }
    while (res == 0) {
        size_t want = capacity - used;
        if ((off_t)want > size - offset) {
            want = (size_t)(size - offset);
        }
        ssize_t n = want ? pread(src, buf + used, want, offset) : 0;
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            _PyPerf_SetError(errno, "cannot read %s", what);
            res = -1;
            break;
        }
        offset += n;
        size_t start = used;
        used += (size_t)n;
        clean_line_bytes(buf + start, (size_t)n);
        if (skipping) {
            char *newline = memchr(buf, '\n', used);
            size_t drop = newline ? (size_t)(newline - buf) + 1 : used;
            memmove(buf, buf + drop, used - drop);
            used -= drop;
            skipping = (newline == NULL);
        }
        /* Write what ends with a newline; keep a partial last line. */
        size_t whole = used;
        while (whole > 0 && buf[whole - 1] != '\n') {
            whole--;
        }
        if (n == 0 && whole < used) {
            if (complete_last && !skipping) {
                buf[used++] = '\n';     // the last line, completed
                whole = used;
            }
            else {
                used = whole;           // the last line, dropped
            }
        }
        if (whole > 0) {
            res = _PyPerfOutput_Write(&map, buf, whole);
            memmove(buf, buf + whole, used - whole);
            used -= whole;
        }
        if (n == 0) {
            break;
        }
        if (used == capacity) {     // one line longer than the buffer
            if (capacity >= MAX_LINE_SIZE) {
                used = 0;           // not a name: drop the line
                skipping = 1;
                continue;
            }
            char *bigger = realloc(buf, capacity * 2 + 1);
            if (bigger == NULL) {
                _PyPerf_SetError(ENOMEM, "cannot copy %s", what);
                errno = ENOMEM;
                res = -1;
                break;
            }
            buf = bigger;
            capacity *= 2;
        }
    }
    int saved_errno = errno;
    pthread_mutex_unlock(&map.lock);
    free(buf);
    errno = saved_errno;
    return res;
}

/* Copy the lines of the map at path into this process's map.  Only what
   the file holds when the copy starts is copied; a last line without a
   newline gets one, so that the next entry starts a line of its own. */
static int
copy_map(const char *path)
{
    int src = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (src < 0) {
        _PyPerf_SetError(errno, "cannot read %s", path);
        return -1;
    }
    struct stat src_st;
    if (fstat(src, &src_st) != 0) {
        int err = errno;
        close(src);
        _PyPerf_SetError(err, "cannot stat %s", path);
        errno = err;
        return -1;
    }
    if (!S_ISREG(src_st.st_mode)) {
        int err = S_ISDIR(src_st.st_mode) ? EISDIR : EINVAL;
        close(src);
        _PyPerf_SetError(err, "cannot copy %s", path);
        errno = err;
        return -1;
    }
    int res = copy_lines(src, src_st.st_size, 1, path);
    int saved_errno = errno;
    close(src);
    errno = saved_errno;
    return res;
}

/* The size of the map at fork(), measured with its lock held: what a
   persistent child copies.  The parent writes again as soon as fork()
   returns, at the addresses the child will use next.  -1 outside
   PyOS_BeforeFork() .. PyOS_AfterFork_*() (a fork() made by C code). */
static off_t size_at_fork = -1;

void
_PyPerfMap_BeforeFork(void)
{
    _PyPerfOutput_BeforeFork(&map);
    struct stat st;
    size_at_fork = (map.fd >= 0 && fstat(map.fd, &st) == 0) ? st.st_size
                                                              : -1;
}

void
_PyPerfMap_AfterForkParent(void)
{
    size_at_fork = -1;
    _PyPerfOutput_AfterForkParent(&map);
}

int
_PyPerfMap_AfterForkChild(int persist)
{
    /* The map that the parent had open, whoever wrote it (the perf
       backend, C code through the API, or both), read through the
       descriptor the child inherited: the parent's file even if its name
       was removed or replaced meanwhile.  Only what it held at fork():
       the parent writes again at once, naming trampolines at addresses
       that the child will give other code. */
    int parent_map = _PyPerfOutput_AfterForkChild(&map, persist);
    if (parent_map < 0) {
        return 0;
    }
    off_t size = size_at_fork;
    size_at_fork = -1;
    struct stat st;
    if (size < 0) {
        /* Not forked through PyOS_BeforeFork(): what the file holds now
           (a last line without its newline is the parent's, not copied). */
        size = fstat(parent_map, &st) == 0 ? st.st_size : -1;
    }
    int res = -1;
    if (size < 0) {
        _PyPerf_SetError(errno, "cannot stat the parent's perf map");
    }
    else if (size == 0) {
        res = 0;
    }
    else {
        res = copy_lines(parent_map, size, 0, "the parent's perf map");
    }
    close(parent_map);
    return res < 0 ? -1 : 1;
}


/* ---- The "perf" backend ------------------------------------------------- */

static int
map_backend_open(void)
{
    pthread_mutex_lock(&map.lock);
    int res = _PyPerfOutput_Prepare(&map);
    pthread_mutex_unlock(&map.lock);
    return res < 0 ? -1 : 0;
}

static int
map_backend_emit(const _PyPerf_Description *what)
{
    return write_entry(what->code, what->size, what->name);
}

static void
map_backend_close(void)
{
    /* The map stays open for C code that shares it; closing it is the job of
       PyUnstable_PerfMapState_Fini() and of finalisation. */
}

static size_t
map_backend_reserved_after(size_t Py_UNUSED(code_size))
{
    return 0;
}

/* The map's fork functions serve the backend as they are: whatever is
   active, the child's map starts as a copy of the parent's when persist is
   set (it may hold C code's lines too), and that copy names the parent's
   trampolines already. */
const _PyPerf_Backend _PyPerf_MapBackend = {
    .name = "perf",
    .env_variable = "PYTHONPERFSUPPORT",
    .reserved_after = map_backend_reserved_after,
    .open = map_backend_open,
    .emit = map_backend_emit,
    .close = map_backend_close,
    .before_fork = _PyPerfMap_BeforeFork,
    .after_fork_parent = _PyPerfMap_AfterForkParent,
    .after_fork_child = _PyPerfMap_AfterForkChild,
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
    pthread_mutex_lock(&map.lock);
    _PyPerfOutput_Close(&map);
    pthread_mutex_unlock(&map.lock);
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

void
_PyPerfMap_BeforeFork(void)
{
}

void
_PyPerfMap_AfterForkParent(void)
{
}

int
_PyPerfMap_AfterForkChild(int persist)
{
    return 0;
}

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
