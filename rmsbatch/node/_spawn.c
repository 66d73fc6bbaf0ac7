/* The job's process without a copy of its supervisor: vfork, set up, exec.
 *
 * rmsbatch.node.jobprocess.run_child does the same in Python after os.fork(). A fork
 * of a Python process copies its page tables and then, page by page, whatever either
 * side writes before the exec; on a 2-core virtual machine that was 4 to 5 ms of CPU
 * per job, a fifth of everything a short job costs the node. vfork shares the
 * supervisor's memory until the exec instead, so the child here only makes system
 * calls on what the parent prepared, and reports a failure as a record the parent
 * turns into words (jobprocess.explain):
 *
 *     "C" KIND STEP "\0" ERRNO "\0" DETAIL
 *
 * KIND is the error pipe's first byte as run_child writes it ("S": the job's own
 * setup, "I": the node's isolation).
 *
 * Order, and why: the child resets the signals its supervisor handles (all signals
 * stay blocked from before the vfork until then, so no handler of the parent's runs in
 * the child), starts a session, joins the job's cgroups while still root, takes the
 * job's groups and, as its file-system identity only, the job's user and group:
 * directories and files are then reached and created with the user's rights while the
 * process itself is still root, which no process of the user may trace or signal (it
 * shares the supervisor's memory until the exec). Its real identity changes last,
 * just before the exec, then the soft limits, as run_child applies them after the
 * switch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_PID_VARS 4
#define PID_VAR_SIZE 80

/* 32-bit identities on every architecture (i386 has 16-bit calls beside these) */
#ifdef SYS_setgroups32
#define SYS_SETGROUPS SYS_setgroups32
#define SYS_SETRESUID SYS_setresuid32
#define SYS_SETRESGID SYS_setresgid32
#define SYS_SETFSUID SYS_setfsuid32
#define SYS_SETFSGID SYS_setfsgid32
#else
#define SYS_SETGROUPS SYS_setgroups
#define SYS_SETRESUID SYS_setresuid
#define SYS_SETRESGID SYS_setresgid
#define SYS_SETFSUID SYS_setfsuid
#define SYS_SETFSGID SYS_setfsgid
#endif

typedef struct {
    const char *path;
    char **argv;
    char **envp;                    /* the last MAX_PID_VARS slots before NULL: ours */
    int env_used;                   /* entries before them */
    const char *pid_names[MAX_PID_VARS];
    char *pid_bufs[MAX_PID_VARS];
    int npid;
    int *sigs;
    int nsigs;
    const char **cgroups;
    int ncgroups;
    int cgroup_required;
    int switch_ids;
    uid_t uid;
    gid_t gid;
    gid_t *groups;
    int ngroups;
    int umask_value;                /* -1: keep */
    int *rl_res;
    long long *rl_soft;             /* -1: unlimited */
    int nrl;
    const char *workdir;
    const char *out_path;
    const char *err_path;
    int oflags;
    int errw;
    long maxfd;
} spawn_args;

/* -- async-signal-safe helpers for the child ------------------------------------ */

static size_t put(char *buf, size_t at, size_t cap, const char *s)
{
    while (*s && at < cap)
        buf[at++] = *s++;
    return at;
}

static size_t put_long(char *buf, size_t at, size_t cap, long long v)
{
    char digits[24];
    int n = 0;
    unsigned long long u = v < 0 ? -(unsigned long long)v : (unsigned long long)v;
    do {
        digits[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0 && at < cap)
        buf[at++] = '-';
    while (n && at < cap)
        buf[at++] = digits[--n];
    return at;
}

static void fail(const spawn_args *a, char kind, const char *step, int err,
                 const char *detail) __attribute__((noreturn));

static void fail(const spawn_args *a, char kind, const char *step, int err,
                 const char *detail)
{
    char buf[4200];
    size_t n = 0;
    buf[n++] = 'C';
    buf[n++] = kind;
    n = put(buf, n, 40, step);
    buf[n++] = '\0';
    n = put_long(buf, n, 80, err);
    buf[n++] = '\0';
    n = put(buf, n, sizeof buf, detail ? detail : "");
    while (write(a->errw, buf, n) < 0 && errno == EINTR)
        ;
    _exit(1);
}

/* mkdir -p of the directory holding `path` (as os.makedirs), 0 or an errno */
static int make_parents(const char *path, char *failed, size_t cap)
{
    char dir[4096];
    size_t len = strlen(path);
    struct stat st;
    if (len >= sizeof dir)
        return ENAMETOOLONG;
    memcpy(dir, path, len + 1);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = '\0';
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    for (char *p = dir + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(dir, 0777) < 0 && errno != EEXIST) {
                int err = errno;
                size_t n = put(failed, 0, cap - 1, dir);
                failed[n] = '\0';
                return err;
            }
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    return 0;
}

static int open_output(const spawn_args *a, const char *path, const char *step_mkdir,
                       const char *step_open)
{
    char failed[4096];
    /* (the directory itself there as a file: EEXIST, skipped; the open says so) */
    int err = make_parents(path, failed, sizeof failed);
    if (err)
        fail(a, 'S', step_mkdir, err, failed);
    /* O_NONBLOCK for the open only (as run_child): a FIFO nobody reads fails at once
     * instead of holding this child, and with it its supervisor, until a reader comes */
    int fd = open(path, a->oflags | O_CLOEXEC | O_NONBLOCK, 0666);
    if (fd < 0)
        fail(a, 'S', step_open, errno, path);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
        fail(a, 'S', step_open, errno, path);
    return fd;
}

static void close_from(int first, int last, long maxfd)
{
    if (first > last)
        return;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)first, (unsigned)last, 0) == 0)
        return;
#endif
    for (long fd = first; fd <= last && fd < maxfd; fd++)
        close((int)fd);
}

static void child(const spawn_args *a) __attribute__((noreturn));

static void child(const spawn_args *a)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int i = 0; i < a->nsigs; i++)
        sigaction(a->sigs[i], &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    setsid();

    char pid[24];
    size_t pid_len = put_long(pid, 0, sizeof pid - 1, (long long)getpid());
    pid[pid_len] = '\0';
    for (int i = 0; i < a->ncgroups; i++) {
        int fd = open(a->cgroups[i], O_WRONLY | O_CLOEXEC);
        int err = 0;
        if (fd < 0)
            err = errno;
        else if (write(fd, pid, pid_len) < 0)
            err = errno;
        if (fd >= 0)
            close(fd);
        if (err) {
            if (a->cgroup_required)
                fail(a, 'I', fd < 0 ? "cgroup-open" : "cgroup-write", err, a->cgroups[i]);
            break;              /* as run_child: the job runs outside its cgroup */
        }
    }

    if (a->switch_ids) {
        if (syscall(SYS_SETGROUPS, (size_t)a->ngroups, a->groups) < 0)
            fail(a, 'S', "ids", errno, "");
        syscall(SYS_SETFSGID, a->gid);
        syscall(SYS_SETFSUID, a->uid);
        /* setfsuid says nothing when it fails: ask what it is now */
        if ((uid_t)syscall(SYS_SETFSUID, (uid_t)-1) != a->uid ||
            (gid_t)syscall(SYS_SETFSGID, (gid_t)-1) != a->gid)
            fail(a, 'S', "ids", EPERM, "");
    }
    if (a->umask_value >= 0)
        umask((mode_t)a->umask_value);

    if (chdir(a->workdir) < 0)
        fail(a, 'S', "chdir", errno, a->workdir);

    int out_fd = open_output(a, a->out_path, "mkdir-output", "open-output");
    int err_fd = out_fd;
    if (strcmp(a->err_path, a->out_path) != 0) {
        err_fd = open_output(a, a->err_path, "mkdir-error", "open-error");
        struct stat s1, s2;
        if (fstat(out_fd, &s1) == 0 && fstat(err_fd, &s2) == 0 &&
            s1.st_dev == s2.st_dev && s1.st_ino == s2.st_ino) {
            close(err_fd);
            err_fd = out_fd;
        }
    }
    int in_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in_fd < 0)
        fail(a, 'S', "devnull", errno, "/dev/null");
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
        fail(a, 'S', "dup2", errno, "");
    /* the error pipe closes itself at the exec (close-on-exec) */
    close_from(3, a->errw - 1, a->maxfd);
    close_from(a->errw + 1, 0x7fffffff, a->maxfd);

    for (int i = 0; i < a->npid; i++) {
        size_t n = put(a->pid_bufs[i], 0, PID_VAR_SIZE - 1, a->pid_names[i]);
        n = put(a->pid_bufs[i], n, PID_VAR_SIZE - 1, "=");
        n = put(a->pid_bufs[i], n, PID_VAR_SIZE - 1, pid);
        a->pid_bufs[i][n] = '\0';
        a->envp[a->env_used + i] = a->pid_bufs[i];
    }

    if (a->switch_ids) {
        if (syscall(SYS_SETRESGID, a->gid, a->gid, a->gid) < 0 ||
            syscall(SYS_SETRESUID, a->uid, a->uid, a->uid) < 0)
            fail(a, 'S', "ids", errno, "");
    }
    for (int i = 0; i < a->nrl; i++) {
        struct rlimit cur;
        if (getrlimit(a->rl_res[i], &cur) < 0)
            continue;
        rlim_t want = a->rl_soft[i] < 0 ? RLIM_INFINITY : (rlim_t)a->rl_soft[i];
        if (cur.rlim_max != RLIM_INFINITY && (want == RLIM_INFINITY || want > cur.rlim_max))
            want = cur.rlim_max;
        struct rlimit next = {want, cur.rlim_max};
        setrlimit(a->rl_res[i], &next);
    }

    execve(a->path, a->argv, a->envp);
    fail(a, 'S', "exec", errno, a->path);
}

/* -- the Python side ------------------------------------------------------------ */

/* A list of bytes as a NULL-terminated array of C strings (borrowed from `seq`, which
 * must outlive it); `extra` more NULL slots at the end. */
static char **cstrings(PyObject *seq, Py_ssize_t extra, Py_ssize_t *count)
{
    Py_ssize_t n = PyList_Size(seq);
    if (n < 0)
        return NULL;
    char **out = PyMem_Calloc((size_t)(n + extra + 1), sizeof(char *));
    if (!out) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyMem_Free(out);
            PyErr_SetString(PyExc_TypeError, "expected a list of bytes");
            return NULL;
        }
        if ((size_t)PyBytes_GET_SIZE(item) != strlen(PyBytes_AS_STRING(item))) {
            PyMem_Free(out);
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    if (count)
        *count = n;
    return out;
}

static int ints(PyObject *seq, int **out, Py_ssize_t *count)
{
    Py_ssize_t n = PyList_Size(seq);
    if (n < 0)
        return -1;
    *out = PyMem_Calloc((size_t)n + 1, sizeof(int));
    if (!*out) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyList_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred())
            return -1;
        (*out)[i] = (int)v;
    }
    *count = n;
    return 0;
}

PyDoc_STRVAR(spawn_doc,
"spawn(path, argv, env, pid_names, signals, cgroups, cgroup_required, ids, umask,\n"
"      rlimits, workdir, out_path, err_path, oflags, errw, maxfd) -> pid\n\n"
"Start the job's process (see the module's source for what the child does).\n"
"argv, env, pid_names, cgroups: lists of bytes; signals: ints to reset; ids:\n"
"(uid, gid, [groups]) to switch to, or None; umask: -1 to keep; rlimits: list of\n"
"(resource, soft), soft -1 meaning unlimited; errw: the error pipe's write end.");

static PyObject *spawn(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *argv_l, *env_l, *names_l, *sigs_l, *cg_l, *ids, *rl_l;
    const char *path, *workdir, *out_path, *err_path;
    int cg_required, umask_value, oflags, errw;
    long maxfd;
    if (!PyArg_ParseTuple(args, "yO!O!O!O!O!pOiO!yyyiil", &path, &PyList_Type, &argv_l,
                          &PyList_Type, &env_l, &PyList_Type, &names_l, &PyList_Type,
                          &sigs_l, &PyList_Type, &cg_l, &cg_required, &ids, &umask_value,
                          &PyList_Type, &rl_l, &workdir, &out_path, &err_path, &oflags,
                          &errw, &maxfd))
        return NULL;

    spawn_args a;
    memset(&a, 0, sizeof a);
    PyObject *result = NULL;
    Py_ssize_t n;
    a.path = path;
    a.workdir = workdir;
    a.out_path = out_path;
    a.err_path = err_path;
    a.oflags = oflags;
    a.errw = errw;
    a.maxfd = maxfd > 0 ? maxfd : 65536;
    a.cgroup_required = cg_required;
    a.umask_value = umask_value;
    a.npid = (int)PyList_Size(names_l);
    if (a.npid > MAX_PID_VARS) {
        PyErr_SetString(PyExc_ValueError, "too many pid variables");
        return NULL;
    }
    if (!(a.argv = cstrings(argv_l, 0, NULL)))
        goto done;
    if (!(a.envp = cstrings(env_l, MAX_PID_VARS, &n)))
        goto done;
    a.env_used = (int)n;
    for (int i = 0; i < a.npid; i++) {
        PyObject *name = PyList_GET_ITEM(names_l, i);
        if (!PyBytes_Check(name) || PyBytes_GET_SIZE(name) > 32) {
            PyErr_SetString(PyExc_TypeError, "pid variable names: short bytes");
            goto done;
        }
        a.pid_names[i] = PyBytes_AS_STRING(name);
        if (!(a.pid_bufs[i] = PyMem_Malloc(PID_VAR_SIZE))) {
            PyErr_NoMemory();
            goto done;
        }
    }
    if (ints(sigs_l, &a.sigs, &n) < 0)
        goto done;
    a.nsigs = (int)n;
    if (!(a.cgroups = (const char **)cstrings(cg_l, 0, &n)))
        goto done;
    a.ncgroups = (int)n;
    if (ids != Py_None) {
        PyObject *groups_l;
        unsigned int uid, gid;
        if (!PyArg_ParseTuple(ids, "IIO!", &uid, &gid, &PyList_Type, &groups_l))
            goto done;
        a.switch_ids = 1;
        a.uid = uid;
        a.gid = gid;
        int *g = NULL;
        int bad = ints(groups_l, &g, &n);
        a.groups = (gid_t *)g;          /* gid_t and int: both 32 bits on Linux */
        if (bad < 0)
            goto done;
        a.ngroups = (int)n;
    }
    n = PyList_Size(rl_l);
    a.rl_res = PyMem_Calloc((size_t)n + 1, sizeof(int));
    a.rl_soft = PyMem_Calloc((size_t)n + 1, sizeof(long long));
    if (!a.rl_res || !a.rl_soft) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int res;
        long long soft;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(rl_l, i), "iL", &res, &soft))
            goto done;
        a.rl_res[i] = res;
        a.rl_soft[i] = soft;
    }
    a.nrl = (int)n;

    /* Every signal blocked across the vfork: a handler of the supervisor's must not
     * run in the child, which shares its memory until the exec. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = vfork();
    if (pid == 0)
        child(&a);
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (a.switch_ids)           /* the child's change of identity marked the shared mm */
        prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    if (pid < 0) {
        errno = saved;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = PyLong_FromLong((long)pid);
done:
    PyMem_Free(a.argv);
    PyMem_Free(a.envp);
    for (int i = 0; i < MAX_PID_VARS; i++)
        PyMem_Free(a.pid_bufs[i]);
    PyMem_Free(a.sigs);
    PyMem_Free((void *)a.cgroups);
    PyMem_Free(a.groups);
    PyMem_Free(a.rl_res);
    PyMem_Free(a.rl_soft);
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_spawn",
    "The job's process started by vfork (see rmsbatch.node.jobprocess).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__spawn(void)
{
    return PyModule_Create(&module);
}
