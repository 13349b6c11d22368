/*
 * Writing perf's jitdump format: /tmp/jit-PID.dump.
 *
 * A jitdump tells `perf inject --jit` what code a process generated, so that
 * perf can turn each piece into a small ELF file (jitted-PID-N.so) with its
 * symbol, its source lines and its unwind tables.  This file knows the format
 * and how to write it; Python/perf_jit_trampoline.c decides what to write.
 *
 * Format (tools/perf/Documentation/jitdump-specification.txt in Linux), all
 * fields in the byte order of the machine:
 *
 *   header, 40 bytes
 *     u32 magic 0x4A695444 ("JiTD"), u32 version 1, u32 header size,
 *     u32 ELF machine, u32 pad, u32 pid, u64 timestamp, u64 flags
 *   then records, each with a 16-byte prefix
 *     u32 id, u32 total size (prefix included), u64 timestamp
 *   CODE_DEBUG_INFO (2): u64 code address, u64 entry count, entries of
 *     {u64 address, u32 line, u32 discriminator, file name NUL-terminated}
 *   UNWINDING_INFO (4): u64 unwinding size, u64 .eh_frame_hdr size,
 *     u64 mapped size, then .eh_frame followed by .eh_frame_hdr
 *   CODE_LOAD (0): u32 pid, u32 tid, u64 vma, u64 code address,
 *     u64 code size, u64 code index, name NUL-terminated, code bytes
 *
 * perf attaches the debug and unwinding records to the CODE_LOAD that
 * follows them, so the three records of one piece of code are formatted into
 * one buffer and written with one write, under one lock that also hands out
 * the code index: concurrent writers can never interleave them.  Every
 * record is padded to 8 bytes.
 *
 * Timestamps come from CLOCK_MONOTONIC (flags is 0), the clock that
 * `perf record -k 1` uses.
 *
 * perf inject only reads dumps that it saw mapped by the process during
 * `perf record`: the file is mapped once, one page, PROT_READ|PROT_EXEC
 * (perf records mmap events only for executable mappings), before its
 * header is written, and stays mapped while the process lives.  A dump
 * that cannot be mapped (a noexec /tmp) is removed again.
 *
 * The file (Python/perf_outfile.c) starts afresh with the first open in
 * each process; a later open in the same process (the backend switched
 * away and back, a descriptor that the program closed) appends to it, so
 * nothing recorded earlier is lost.  A forked child starts its own dump
 * when it first describes code.
 */

#include "Python.h"
#include "pycore_perf_trampoline.h"   // _PyJitdump_Code

#if defined(PY_HAVE_PERF_TRAMPOLINE)

#include <errno.h>                    // errno
#include <stdint.h>                   // uint32_t
#include <stdlib.h>                   // realloc(), free()
#include <string.h>                   // memcpy()
#include <sys/mman.h>                 // mmap()
#include <sys/syscall.h>              // SYS_gettid
#include <time.h>                     // clock_gettime()
#include <unistd.h>                   // getpid(), syscall()

#define JITDUMP_MAGIC 0x4A695444
#define JITDUMP_VERSION 1

#if defined(__x86_64__)
#  define JITDUMP_ELF_MACHINE 62        // EM_X86_64
#elif defined(__aarch64__)
#  define JITDUMP_ELF_MACHINE 183       // EM_AARCH64
#else
#  error "unknown ELF machine"
#endif

enum {
    JIT_CODE_LOAD = 0,
    JIT_CODE_DEBUG_INFO = 2,
    JIT_CODE_UNWINDING_INFO = 4,
};

typedef struct {
    uint32_t magic;
    uint32_t version;
    uint32_t total_size;
    uint32_t elf_mach;
    uint32_t pad1;
    uint32_t pid;
    uint64_t timestamp;
    uint64_t flags;
} jitdump_header;

typedef struct {
    uint32_t id;
    uint32_t total_size;
    uint64_t timestamp;
} record_prefix;

typedef struct {
    record_prefix prefix;
    uint32_t pid;
    uint32_t tid;
    uint64_t vma;
    uint64_t code_addr;
    uint64_t code_size;
    uint64_t code_index;
    /* name, then code */
} code_load_record;

typedef struct {
    record_prefix prefix;
    uint64_t code_addr;
    uint64_t nr_entry;
    /* entries */
} debug_info_record;

typedef struct {
    uint64_t addr;
    uint32_t lineno;
    uint32_t discrim;
    /* file name */
} debug_entry;

typedef struct {
    record_prefix prefix;
    uint64_t unwinding_size;
    uint64_t eh_frame_hdr_size;
    uint64_t mapped_size;
    /* .eh_frame, .eh_frame_hdr */
} unwinding_record;


/* Started afresh by the first open in each process; appended to when
   reopened (a switch of backend and back, a descriptor the program
   closed). */
static _PyPerfOutput dump_file = _PyPerfOutput_INIT("/tmp/jit-%ld.dump", 1, 1);

/* The PROT_EXEC mapping of the dump that perf record sees, made once per
   file and kept while the process lives, even while the dump is closed:
   perf inject reads the whole dump when it meets the mapping, and a second
   mapping of the same dump would make it inject every record twice. */
static struct {
    void *address;
    size_t size;
    dev_t dev;                        // the file mapped
    ino_t ino;
} marker;

/* The code index of the next CODE_LOAD in this file. */
static uint64_t code_index;


static uint64_t
timestamp(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return 0;
    }
    return (uint64_t)ts.tv_sec * 1000000000 + (uint64_t)ts.tv_nsec;
}


/* ---- Building records in a buffer --------------------------------------- */

typedef struct {
    char *data;
    size_t size;
    size_t capacity;
} buffer;

static int
buffer_reserve(buffer *buf, size_t extra)
{
    if (buf->size + extra <= buf->capacity) {
        return 0;
    }
    size_t capacity = Py_MAX(buf->capacity * 2, buf->size + extra);
    char *data = realloc(buf->data, capacity);
    if (data == NULL) {
        return -1;
    }
    buf->data = data;
    buf->capacity = capacity;
    return 0;
}

static int
buffer_add(buffer *buf, const void *bytes, size_t size)
{
    if (buffer_reserve(buf, size) < 0) {
        return -1;
    }
    memcpy(buf->data + buf->size, bytes, size);
    buf->size += size;
    return 0;
}

/* Add name and its NUL, control characters replaced (_PyPerf_CleanName()):
   perf copies the name into the symbol table and the file name into the
   line table of jitted-PID-N.so, and perf script prints them one frame a
   line, so a newline in a name would read as frames of its own. */
static int
buffer_add_name(buffer *buf, const char *name)
{
    size_t size = strlen(name);
    if (buffer_reserve(buf, size + 1) < 0) {
        return -1;
    }
    _PyPerf_CleanName(buf->data + buf->size, name, size);
    buf->data[buf->size + size] = '\0';
    buf->size += size + 1;
    return 0;
}

/* Pad the record that starts at offset start to 8 bytes and set its size. */
static int
buffer_end_record(buffer *buf, size_t start)
{
    static const char zeros[8];
    size_t size = buf->size - start;
    size_t padded = _Py_SIZE_ROUND_UP(size, 8);
    if (buffer_add(buf, zeros, padded - size) < 0) {
        return -1;
    }
    uint32_t total = (uint32_t)padded;
    memcpy(buf->data + start + offsetof(record_prefix, total_size),
           &total, sizeof(total));
    return 0;
}

static int
add_debug_info(buffer *buf, const _PyJitdump_Code *code, uint64_t now)
{
    size_t start = buf->size;
    debug_info_record rec = {
        .prefix = {.id = JIT_CODE_DEBUG_INFO, .timestamp = now},
        .code_addr = (uint64_t)(uintptr_t)code->code,
        .nr_entry = 1,
    };
    debug_entry entry = {
        .addr = (uint64_t)(uintptr_t)code->code,
        .lineno = (uint32_t)Py_MAX(code->lineno, 0),
        .discrim = 0,
    };
    if (buffer_add(buf, &rec, sizeof(rec)) < 0
        || buffer_add(buf, &entry, sizeof(entry)) < 0
        || buffer_add_name(buf, code->filename) < 0)
    {
        return -1;
    }
    return buffer_end_record(buf, start);
}

static int
add_unwinding_info(buffer *buf, const _PyJitdump_Code *code, uint64_t now)
{
    size_t start = buf->size;
    unwinding_record rec = {
        .prefix = {.id = JIT_CODE_UNWINDING_INFO, .timestamp = now},
        .unwinding_size = code->unwind_size,
        .eh_frame_hdr_size = code->eh_frame_hdr_size,
        .mapped_size = code->unwind_mapped_size,
    };
    if (buffer_add(buf, &rec, sizeof(rec)) < 0
        || buffer_add(buf, code->unwind_data, code->unwind_size) < 0)
    {
        return -1;
    }
    return buffer_end_record(buf, start);
}

static int
add_code_load(buffer *buf, const _PyJitdump_Code *code, uint64_t now,
              uint64_t index)
{
    size_t start = buf->size;
    code_load_record rec = {
        .prefix = {.id = JIT_CODE_LOAD, .timestamp = now},
        .pid = (uint32_t)getpid(),
        .tid = (uint32_t)syscall(SYS_gettid),
        .vma = (uint64_t)(uintptr_t)code->code,
        .code_addr = (uint64_t)(uintptr_t)code->code,
        .code_size = code->code_size,
        .code_index = index,
    };
    if (buffer_add(buf, &rec, sizeof(rec)) < 0
        || buffer_add_name(buf, code->name) < 0
        || buffer_add(buf, code->code, code->code_size) < 0)
    {
        return -1;
    }
    return buffer_end_record(buf, start);
}


/* ---- The file ----------------------------------------------------------- */

static void
unmap_marker(void)
{
    if (marker.address != NULL) {
        munmap(marker.address, marker.size);
        marker.address = NULL;
    }
}

/* Map the open dump executable, unless it is mapped already. */
static int
map_marker(void)
{
    if (marker.address != NULL && marker.dev == dump_file.dev
        && marker.ino == dump_file.ino)
    {
        return 0;
    }
    unmap_marker();
    long page = sysconf(_SC_PAGESIZE);
    size_t size = page > 0 ? (size_t)page : 4096;
    /* Beyond the end of a short file: never touched, only seen. */
    void *address = mmap(NULL, size, PROT_READ | PROT_EXEC, MAP_PRIVATE,
                         dump_file.fd, 0);
    if (address == MAP_FAILED) {
        _PyPerf_SetError(errno, "cannot map %s executable, so perf record "
                         "would not see it (is /tmp mounted noexec?)",
                         dump_file.path);
        return -1;
    }
    marker.address = address;
    marker.size = size;
    marker.dev = dump_file.dev;
    marker.ino = dump_file.ino;
    return 0;
}

/* Make the dump ready for records: open it if needed; a new, empty file
   gets its marker mapping first, then its header, or is removed again. */
static int
prepare_locked(void)
{
    int state = _PyPerfOutput_Prepare(&dump_file);
    if (state == _PyPerfOutput_FAILED) {
        return -1;
    }
    if (state == _PyPerfOutput_EMPTY) {
        jitdump_header header = {
            .magic = JITDUMP_MAGIC,
            .version = JITDUMP_VERSION,
            .total_size = sizeof(jitdump_header),
            .elf_mach = JITDUMP_ELF_MACHINE,
            .pid = (uint32_t)getpid(),
            .timestamp = timestamp(),
            .flags = 0,
        };
        if (map_marker() < 0
            || _PyPerfOutput_Write(&dump_file, &header, sizeof(header)) < 0)
        {
            _PyPerfOutput_Discard(&dump_file);
            return -1;
        }
        code_index = 0;
        return 0;
    }
    return map_marker();
}

int
_PyJitdump_Open(void)
{
    pthread_mutex_lock(&dump_file.lock);
    int res = prepare_locked();
    pthread_mutex_unlock(&dump_file.lock);
    return res;
}

void
_PyJitdump_Close(void)
{
    pthread_mutex_lock(&dump_file.lock);
    _PyPerfOutput_Close(&dump_file);
    pthread_mutex_unlock(&dump_file.lock);
}

void
_PyJitdump_BeforeFork(void)
{
    _PyPerfOutput_BeforeFork(&dump_file);
}

void
_PyJitdump_AfterForkParent(void)
{
    _PyPerfOutput_AfterForkParent(&dump_file);
}

void
_PyJitdump_AfterForkChild(void)
{
    /* The descriptor and the mapping are the parent's: let them go without
       writing anything.  The child starts its own dump when it first
       describes code. */
    _PyPerfOutput_AfterForkChild(&dump_file, 0);
    unmap_marker();
}

int
_PyJitdump_WriteCode(const _PyJitdump_Code *code)
{
    buffer buf = {NULL, 0, 0};
    int res = -1;
    uint64_t now = timestamp();
    pthread_mutex_lock(&dump_file.lock);
    if (prepare_locked() < 0) {
        goto done;
    }
    if (add_debug_info(&buf, code, now) < 0
        || add_unwinding_info(&buf, code, now) < 0
        || add_code_load(&buf, code, now, code_index) < 0)
    {
        _PyPerf_SetError(ENOMEM, "cannot format jitdump records");
        goto done;
    }
    res = _PyPerfOutput_Write(&dump_file, buf.data, buf.size);
    if (res == 0) {
        code_index++;
    }
done:
    pthread_mutex_unlock(&dump_file.lock);
    free(buf.data);
    return res;
}

#endif /* PY_HAVE_PERF_TRAMPOLINE */
