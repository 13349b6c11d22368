/*
 * Switching the perf support on and off from outside a running process.
 *
 * The problem
 * -----------
 * A service started without -X perf cannot be profiled with Python names
 * unless it is restarted with the flag, and nobody keeps the flag on "just
 * in case".  An operator needs to turn the support on in a live process,
 * record, and turn it off again, from the host, also when the process runs
 * in a container (its own PID, mount and network namespaces).
 *
 * The design
 * ----------
 * The process opts in when it starts: PYTHON_PERF_REMOTE=1 in its
 * environment (unit files and container specs pass it without code
 * changes).  The main interpreter then starts one control thread, which
 * listens on an abstract Unix socket
 *
 *     "\0python-perf-<pid namespace inode>-<pid in that namespace>"
 *
 * and otherwise sleeps in poll(): while nobody connects it costs nothing,
 * and it never holds the GIL.  An abstract socket has no file: nothing is
 * left in /tmp, whatever way the process ends (a forked child that calls
 * exec() closes it with its other descriptors).  The name is the same seen
 * from inside the process's namespaces and from the host
 * (/proc/PID/ns/pid, /proc/PID/status NSpid), and the client joins the
 * process's network namespace to reach it (and first its user namespace,
 * in a rootless container, where the host's root is nobody).
 * Tools/perf/perf_switch.py is that client.
 *
 * Who may switch: the peer's credentials (SO_PEERCRED) must be the
 * process's own user or root; anyone else is refused.
 *
 * The protocol is one request line and one reply line per connection:
 *
 *     perf | perf_jit | off | status      ->   "ok <state>" | "error <why>"
 *
 * where <state> is "perf", "perf_jit" or "off".  The control thread has a
 * thread state of its own (as a daemon thread created by _thread has) and
 * takes the GIL only to switch: the switch applies to the main interpreter,
 * so every thread's next calls are named, even when the main thread is
 * blocked in a system call; while a long C call holds the GIL, the switch
 * waits for it to end.  During finalisation the thread behaves as any
 * daemon thread (if it asks for the GIL, it exits); once Py_Finalize() is
 * over, a Py_AtExit() hook wakes it (shutdown() of the socket), unbinds the
 * name (an embedder's next Py_Initialize() binds it again) and bumps a
 * generation counter: the thread ends without touching its freed thread
 * state, even if a new generation's thread has started meanwhile.
 *
 * Signals: the thread blocks every signal, so the program's handlers keep
 * running where they always did.  Descriptors: the listening socket is
 * kept above 2 and checked (fstat identity) before each poll(), so that a
 * program that closes every descriptor and reuses the number never has its
 * own connections taken; the lost socket is then made again.
 *
 * Fork: the child keeps the parent's state (a fork after turning on behaves
 * as with -X perf) and starts a control thread of its own, for its own
 * pid; a child of subprocess that runs preexec_fn does not (it is about to
 * exec()).
 */

#include "Python.h"
#include "pycore_atomic.h"            // _Py_atomic_int
#include "pycore_interp.h"            // _PyInterpreterState_GetConfig()
#include "pycore_perf_trampoline.h"   // _PyPerfTrampoline_Activate()
#include "pycore_pystate.h"           // _PyThreadState_GET()

#include <string.h>                   // strcmp()

#if defined(PY_HAVE_PERF_TRAMPOLINE) && defined(__linux__)

#include <errno.h>                    // errno
#include <fcntl.h>                    // fcntl()
#include <poll.h>                     // poll()
#include <pthread.h>                  // pthread_create()
#include <signal.h>                   // sigfillset()
#include <stdio.h>                    // snprintf()
#include <sys/socket.h>               // socket(), SO_PEERCRED
#include <sys/stat.h>                 // fstat()
#include <sys/un.h>                   // struct sockaddr_un
#include <time.h>                     // nanosleep()
#include <unistd.h>                   // getpid(), getuid()

#define REMOTE_VARIABLE "PYTHON_PERF_REMOTE"   // for messages
#define REQUEST_MAX 64
/* A client that connects and says nothing is dropped after this. */
#define REQUEST_TIMEOUT_SEC 2

static struct {
    int opted_in;               // PYTHON_PERF_REMOTE=1 at start-up
    int fd;                     // the listening socket, or -1
    dev_t dev;                  // its identity
    ino_t ino;
    int conn;                   // the connection being served, or -1
    dev_t conn_dev;             // its identity
    ino_t conn_ino;
    PyInterpreterState *interp; // the main interpreter
    PyThreadState *tstate;      // the control thread's
    int quiet;                  // a forked child: no warnings of its own
    int exit_hook;              // Py_AtExit(at_exit) done for this runtime
    /* Bumped by at_exit(): a control thread of an earlier generation ends
       without touching anything (its thread state was freed with the
       interpreter; an embedder may even have started a new one). */
    _Py_atomic_int generation;
} remote = {.fd = -1, .conn = -1};

/* Failures to listen in a row before the thread gives up. */
#define MAX_FAILURES 3


/* ---- The socket --------------------------------------------------------- */

/* The abstract name of this process's socket; return its length. */
static socklen_t
socket_name(struct sockaddr_un *addr)
{
    struct stat st;
    unsigned long long ns = 0;
    if (stat("/proc/self/ns/pid", &st) == 0) {
        ns = (unsigned long long)st.st_ino;
    }
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    int n = snprintf(addr->sun_path + 1, sizeof(addr->sun_path) - 1,
                     "python-perf-%llu-%ld", ns, (long)getpid());
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/* Is fd still the file (dev, ino)?  A program may close descriptors that
   are not its own (os.closerange() when it daemonises) and get the number
   back for a file of its own: then it is not ours any more, and must never
   be touched. */
static int
same_file(int fd, dev_t dev, ino_t ino)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0
           && st.st_dev == dev && st.st_ino == ino;
}

/* Close *fd if it is still the file (dev, ino); forget it either way. */
static void
close_if_same(int *fd, dev_t dev, ino_t ino)
{
    if (same_file(*fd, dev, ino)) {
        close(*fd);
    }
    *fd = -1;
}

/* Move fd above the standard descriptors (a program that closed stdin
   expects its next open() to be 0); return the new one, or -1. */
static int
above_standard(int fd)
{
    if (fd > 2) {
        return fd;
    }
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    int saved = errno;
    close(fd);
    errno = saved;
    return moved;
}

/* Bind and listen (non-blocking: the thread waits in poll(), since a
   thread blocked in accept() holds the lowest free descriptor number
   reserved, where the program may want to open or dup2() its own file);
   set remote.fd and its identity, or return -1 with errno. */
static int
open_socket(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return -1;
    }
    fd = above_standard(fd);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int saved = errno;
        if (fd >= 0) {
            close(fd);
        }
        errno = saved;
        return -1;
    }
    struct sockaddr_un addr;
    socklen_t len = socket_name(&addr);
    if (bind(fd, (struct sockaddr *)&addr, len) < 0 || listen(fd, 4) < 0) {
        int saved = errno;
        close_if_same(&fd, st.st_dev, st.st_ino);
        errno = saved;
        return -1;
    }
    remote.dev = st.st_dev;
    remote.ino = st.st_ino;
    remote.fd = fd;
    return 0;
}

static int
socket_is_ours(void)
{
    return same_file(remote.fd, remote.dev, remote.ino);
}

static void
close_socket(void)
{
    close_if_same(&remote.fd, remote.dev, remote.ino);
}

static void
close_connection(void)
{
    close_if_same(&remote.conn, remote.conn_dev, remote.conn_ino);
}


/* ---- Requests ----------------------------------------------------------- */

static int
peer_may_switch(int conn)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        return 0;
    }
    return cred.uid == 0 || cred.uid == getuid() || cred.uid == geteuid();
}

/* Read one line (without its newline) into buf; return 0, or -1. */
static int
read_request(int conn, char *buf, size_t size)
{
    struct timeval timeout = {.tv_sec = REQUEST_TIMEOUT_SEC};
    (void)setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &timeout,
                     sizeof(timeout));
    size_t used = 0;
    while (used < size - 1) {
        ssize_t n = read(conn, buf + used, size - 1 - used);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        used += (size_t)n;
        if (memchr(buf, '\n', used) != NULL) {
            break;
        }
    }
    buf[used] = '\0';
    char *newline = strchr(buf, '\n');
    if (newline == NULL) {
        return -1;
    }
    *newline = '\0';
    return 0;
}

static void
reply(int conn, const char *format, const char *detail)
{
    char line[512];
    int n = snprintf(line, sizeof(line), format, detail);
    if (n < 0) {
        return;
    }
    size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    (void)send(conn, line, len, MSG_NOSIGNAL);
}

/* The state of the main interpreter: "perf", "perf_jit" or "off". */
static const char *
current_state(void)
{
    const _PyPerf_Backend *backend = _PyPerfTrampoline_OpenBackend();
    if (backend == NULL || !_PyPerfTrampoline_IsActive(remote.interp)) {
        return "off";
    }
    return backend->name;
}

/* Carry out request with the GIL held; reply. */
static void
handle(int conn, const char *request)
{
    if (strcmp(request, "status") == 0) {
        reply(conn, "ok %s\n", current_state());
        return;
    }
    if (strcmp(request, "off") == 0) {
        _PyPerfTrampoline_Deactivate(remote.interp);
        reply(conn, "ok %s\n", current_state());
        return;
    }
    const _PyPerf_Backend *backend = _PyPerf_FindBackend(request);
    if (backend == NULL) {
        reply(conn, "error unknown request: %s\n", request);
        return;
    }
    switch (_PyPerfTrampoline_Activate(remote.interp, backend)) {
    case _PyPerf_ACTIVATED:
        reply(conn, "ok %s\n", current_state());
        return;
    case _PyPerf_OTHER_HOOK:
        reply(conn, "error %s\n",
              "another frame evaluation function is installed");
        return;
    case _PyPerf_BACKEND_IN_USE:
    case _PyPerf_ACTIVATE_FAILED:
        reply(conn, "error %s\n", _PyPerf_GetError());
        return;
    }
}


/* ---- The control thread ------------------------------------------------- */

/* Say why the thread stops (once, and not in a forked child: its parent
   has said it already). */
static void
warn_stopping(const char *what, int err)
{
    if (!remote.quiet) {
        fprintf(stderr, "Python: warning: %s: %s: %s; perf switches from "
                "outside are off in process %ld\n", REMOTE_VARIABLE, what,
                strerror(err), (long)getpid());
    }
}

/* Serve one connection: the reply goes back before the connection is
   closed.  Without the GIL; takes it only to switch. */
static void
serve(int conn, PyThreadState *tstate)
{
    struct stat st;
    if (fstat(conn, &st) < 0) {
        close(conn);
        return;
    }
    remote.conn_dev = st.st_dev;
    remote.conn_ino = st.st_ino;
    remote.conn = conn;             // a fork() now closes it in the child
    char request[REQUEST_MAX];
    if (!peer_may_switch(conn)) {
        /* Refused at once: nothing read, so that nobody can hold the
           thread up; the client still reads the reply. */
        reply(conn, "error %s\n", "permission denied");
    }
    else if (read_request(conn, request, sizeof(request)) < 0) {
        reply(conn, "error %s\n", "no request line");
    }
    else {
        /* Exits this thread if the interpreter is being finalised,
           as for any daemon thread. */
        PyEval_RestoreThread(tstate);
        handle(conn, request);
        PyEval_SaveThread();
    }
    close_connection();
}

static void *
control_thread(void *arg)
{
    PyThreadState *tstate = (PyThreadState *)arg;
    int generation = _Py_atomic_load(&remote.generation);
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    tstate->thread_id = PyThread_get_thread_ident();
#ifdef PY_HAVE_THREAD_NATIVE_ID
    tstate->native_thread_id = PyThread_get_thread_native_id();
#endif
    _PyThreadState_SetCurrent(tstate);

    int failures = 0;
    for (;;) {
        if (_Py_atomic_load(&remote.generation) != generation) {
            return NULL;
        }
        if (!socket_is_ours()) {
            /* Closed by the program (its number may be another file's
               now: never touch it), or never made: make it again. */
            remote.fd = -1;
            if (open_socket() < 0) {
                if (++failures >= MAX_FAILURES) {
                    warn_stopping("cannot listen for perf switches", errno);
                    return NULL;
                }
                sleep(1);
                continue;
            }
        }
        failures = 0;
        struct pollfd wait = {.fd = remote.fd, .events = POLLIN};
        int n = poll(&wait, 1, -1);
        if (_Py_atomic_load(&remote.generation) != generation) {
            return NULL;
        }
        if (n < 0 || !(wait.revents & POLLIN)) {
            /* EINTR; POLLNVAL: closed by the program; POLLHUP: shut down
               by someone else.  Check it and make it again if needed. */
            if (n > 0 && (wait.revents & POLLHUP) && socket_is_ours()) {
                close_socket();
            }
            continue;
        }
        int conn = accept4(remote.fd, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS
                || errno == ENOMEM)
            {
                /* Out of descriptors or memory for now: the client waits
                   in the queue; try again shortly. */
                struct timespec pause = {.tv_nsec = 100 * 1000 * 1000};
                nanosleep(&pause, NULL);
            }
            continue;
        }
        conn = above_standard(conn);
        if (conn >= 0) {
            serve(conn, tstate);
        }
    }
}

/* Py_Finalize() is over: the control thread must not use its thread state
   again.  Unbind the name now (an embedder that initialises Python again
   binds it anew) and wake the thread from poll(): it sees that its
   generation is over and ends. */
static void
at_exit(void)
{
    _Py_atomic_store(&remote.generation,
                     _Py_atomic_load(&remote.generation) + 1);
    if (socket_is_ours()) {
        (void)shutdown(remote.fd, SHUT_RDWR);
    }
    close_socket();
    remote.tstate = NULL;
    remote.exit_hook = 0;       // Py_AtExit() hooks are run once
}

/* Start the control thread for this process.  GIL held. */
static void
start_control(PyThreadState *tstate)
{
    remote.interp = tstate->interp;
    if (!remote.exit_hook && Py_AtExit(at_exit) == 0) {
        remote.exit_hook = 1;
    }
    if (open_socket() < 0) {
        warn_stopping("cannot listen for perf switches", errno);
        return;
    }
    PyThreadState *control = _PyThreadState_Prealloc(remote.interp);
    if (control == NULL) {
        PyErr_Clear();
        close_socket();
        return;
    }
    pthread_attr_t attr;
    pthread_t thread;
    int res = pthread_attr_init(&attr);
    if (res == 0) {
        (void)pthread_attr_setstacksize(&attr, 256 * 1024);
        (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        res = pthread_create(&thread, &attr, control_thread, control);
        pthread_attr_destroy(&attr);
    }
    if (res != 0) {
        PyThreadState_Clear(control);
        PyThreadState_Delete(control);
        close_socket();
        warn_stopping("cannot start the perf switch thread", res);
        return;
    }
    remote.tstate = control;
}

void
_PyPerfRemote_Start(PyThreadState *tstate)
{
    remote.opted_in = 1;
    remote.quiet = 0;
    start_control(tstate);
}

/* The parent's thread is gone, its socket and the connection it was
   serving are the parent's: close our copies (the name stays bound for
   the parent), unless the numbers are not theirs any more.  The thread
   state of the parent's thread was deleted with the other threads'. */
static void
forget_parent(void)
{
    close_connection();
    close_socket();
    remote.tstate = NULL;
}

void
_PyPerfRemote_AfterForkChild(PyThreadState *tstate)
{
    forget_parent();
    if (remote.opted_in && tstate != NULL) {
        remote.quiet = 1;       // the parent warned about the variable
        start_control(tstate);
    }
}

void
_PyPerfRemote_ChildWillExec(void)
{
    /* A child of subprocess that runs preexec_fn and exec()s: it takes no
       switch (it is about to be another program). */
    forget_parent();
}

#else  /* no perf trampolines, or not Linux */

void
_PyPerfRemote_Start(PyThreadState *tstate)
{
    PySys_WriteStderr("Python: warning: PYTHON_PERF_REMOTE: perf switches "
                      "from outside are only taken on Linux\n");
}

void
_PyPerfRemote_AfterForkChild(PyThreadState *tstate)
{
}

void
_PyPerfRemote_ChildWillExec(void)
{
}

#endif
