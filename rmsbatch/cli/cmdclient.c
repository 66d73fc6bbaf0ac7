/* rsub, rq and rcancel as small programs: the command runs in a process forked from
 * the user's own command server (rmsbatch.cli.cmdserver), which has Python and the
 * command's modules loaded already, so a call costs a fork instead of an interpreter
 * start (about 20 ms on a small VM, most of what a submission waits for).
 *
 * This program only hands over what the command would have had: its arguments,
 * environment, working directory (as a descriptor), standard input, output and error
 * (as descriptors), umask and resource limits. It then relays signals to the command
 * and ends the way the command ended: same exit code, or the same signal.
 *
 * Whenever the fast path is not available (no server yet, a server that is not the
 * caller's, a socket directory someone else owns, RMS_CMDSERVER=off, a descriptor
 * missing), the command runs the ordinary way: this program execs `rms-client`, the
 * Python entry point installed beside it. The server is declined-or-accepted before the
 * command does anything, so nothing ever runs twice.
 *
 * Built once per command with -DRMS_COMMAND="\"rsub\"" (see setup.py).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef RMS_COMMAND
#error "build with -DRMS_COMMAND='\"rsub\"'"
#endif
#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

#define MAGIC "RMS1"
#define NLIMITS 16              /* RLIMIT_CPU .. RLIMIT_RTTIME, as the server expects */
#define MAX_REQUEST (8u << 20)  /* the server refuses more */

extern char **environ;

static char bindir[PATH_MAX];
static volatile sig_atomic_t early_signal;
static char **saved_argv;
static volatile pid_t command_pid;   /* signals before it is known wait in early_signal */

/* The ordinary way: `rms-client COMMAND ARGS...`, beside this program (pip installs
 * every script of the package in one directory), else on PATH. */
static void fallback(void)
{
    if (early_signal) {         /* a signal that would have ended the command first */
        signal(early_signal, SIG_DFL);
        raise(early_signal);
    }
    int argc = 0;
    while (saved_argv[argc])
        argc++;
    char **argv = calloc(argc + 2, sizeof *argv);
    if (!argv)
        _exit(1);
    argv[0] = "rms-client";
    argv[1] = RMS_COMMAND;
    for (int i = 1; i < argc; i++)
        argv[i + 1] = saved_argv[i];
    char path[PATH_MAX + 16];
    if (bindir[0] && snprintf(path, sizeof path, "%s/rms-client", bindir) < (int)sizeof path)
        execv(path, argv);
    execvp("rms-client", argv);
    fprintf(stderr, RMS_COMMAND ": error: cannot run rms-client (%s): reinstall rmsbatch\n",
            strerror(errno));
    _exit(1);
}

/* FNV-1a: the socket's name, so that each installation and each Python environment
 * (variables that change how Python starts) and group set gets a server of its own. */
static uint64_t fnv(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int startup_variable(const char *entry)
{
    return strncmp(entry, "PYTHON", 6) == 0 || strncmp(entry, "LANG=", 5) == 0 ||
           strncmp(entry, "LC_ALL=", 7) == 0 || strncmp(entry, "LC_CTYPE=", 9) == 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_gid(const void *a, const void *b)
{
    gid_t x = *(const gid_t *)a, y = *(const gid_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t server_key(void)
{
    uint64_t h = 1469598103934665603ULL;
    h = fnv(h, bindir, strlen(bindir) + 1);
    size_t n = 0;
    for (char **e = environ; *e; e++)
        n += startup_variable(*e);
    char **vars = calloc(n + 1, sizeof *vars);
    if (vars) {
        size_t k = 0;
        for (char **e = environ; *e; e++)
            if (startup_variable(*e))
                vars[k++] = *e;
        qsort(vars, k, sizeof *vars, cmp_str);
        for (size_t i = 0; i < k; i++)
            h = fnv(h, vars[i], strlen(vars[i]) + 1);
        free(vars);
    }
    gid_t gid = getgid(), groups[NGROUPS_MAX];
    int ngroups = getgroups(NGROUPS_MAX, groups);
    h = fnv(h, &gid, sizeof gid);
    if (ngroups > 0)
        qsort(groups, ngroups, sizeof *groups, cmp_gid);
    for (int i = 0; i < ngroups; i++)
        h = fnv(h, &groups[i], sizeof groups[i]);
    return h;
}

/* A directory only this user can enter: made if missing, else checked (a directory
 * another user made first in /tmp must not receive our descriptors). */
static int private_dir(const char *path)
{
    struct stat st;
    if (mkdir(path, 0700) < 0 && errno != EEXIST)
        return -1;
    if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != getuid() ||
        (st.st_mode & 077))
        return -1;
    return 0;
}

static int socket_path(char *out, size_t size)
{
    char dir[PATH_MAX];
    const char *base = getenv("RMS_CMDSERVER_DIR");
    if (base && *base) {
        if (base[0] != '/' || snprintf(dir, sizeof dir, "%s", base) >= (int)sizeof dir)
            return -1;      /* the server runs in /: a relative path would name another */
    } else {
        const char *run = getenv("XDG_RUNTIME_DIR");
        struct stat st;
        if (run && *run && stat(run, &st) == 0 && st.st_uid == getuid())
            snprintf(dir, sizeof dir, "%s/rmsbatch", run);
        else
            snprintf(dir, sizeof dir, "/tmp/rmsbatch-%u", (unsigned)getuid());
    }
    if (private_dir(dir) < 0)
        return -1;
    int n = snprintf(out, size, "%s/%016llx.sock", dir, (unsigned long long)server_key());
    return n > 0 && (size_t)n < size ? 0 : -1;
}

/* No server there: start one in the background (its own session, in /), unless one is
 * starting now (it holds the lock), and go on the ordinary way this time. */
static void start_server(const char *sock)
{
    if (getenv("RMS_JOB_ID"))
        return;         /* not from inside a job: the server would live in its cgroup */
    char lock[PATH_MAX + 8];
    snprintf(lock, sizeof lock, "%s.lock", sock);
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return;
    int free_ = flock(fd, LOCK_EX | LOCK_NB) == 0;
    close(fd);
    if (!free_)
        return;
    char exe[PATH_MAX + 16];
    snprintf(exe, sizeof exe, "%s/rms-client", bindir);
    pid_t pid = fork();
    if (pid < 0)
        return;
    if (pid == 0) {
        setsid();
        if (fork() != 0)
            _exit(0);
        if (chdir("/") < 0)
            _exit(1);
        int null = open("/dev/null", O_RDWR);
        if (null < 0)
            _exit(1);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        const char *log = getenv("RMS_CMDSERVER_LOG");   /* its one-line notes */
        int logfd = log && *log ? open(log, O_WRONLY | O_APPEND | O_CREAT, 0600) : -1;
        if (logfd >= 0)
            dup2(logfd, 2);
        for (int i = 3; i < 1024; i++)
            close(i);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execl(exe, "rms-client", "--serve", sock, (char *)NULL);
        _exit(127);
    }
    waitpid(pid, NULL, 0);
}

static void put(char **p, const void *data, size_t n)
{
    memcpy(*p, data, n);
    *p += n;
}

static void put_u32(char **p, uint32_t v)
{
    put(p, &v, sizeof v);
}

static void put_strings(char **p, char **strings)
{
    uint32_t n = 0;
    while (strings[n])
        n++;
    put_u32(p, n);
    for (uint32_t i = 0; i < n; i++)
        put(p, strings[i], strlen(strings[i]) + 1);
}

static size_t strings_size(char **strings)
{
    size_t n = 4;
    for (; *strings; strings++)
        n += strlen(*strings) + 1;
    return n;
}

static int send_request(int s, char **argv)
{
    size_t size = 4 + 4 + 4 + NLIMITS * 16 + strings_size(argv) + strings_size(environ) +
                  strlen(RMS_COMMAND) + 1;
    if (size > MAX_REQUEST)
        return -1;
    char *buf = malloc(size), *p = buf;
    if (!buf)
        return -1;
    put(&p, MAGIC, 4);
    put_u32(&p, (uint32_t)(size - 8));
    mode_t mask = umask(0);
    umask(mask);
    put_u32(&p, (uint32_t)mask);
    for (int r = 0; r < NLIMITS; r++) {
        struct rlimit rl;
        uint64_t v[2] = {UINT64_MAX, UINT64_MAX};
        if (getrlimit(r, &rl) == 0) {
            v[0] = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : rl.rlim_cur;
            v[1] = rl.rlim_max == RLIM_INFINITY ? UINT64_MAX : rl.rlim_max;
        }
        put(&p, v, sizeof v);
    }
    put(&p, RMS_COMMAND, strlen(RMS_COMMAND) + 1);
    put_strings(&p, argv);
    put_strings(&p, environ);

    int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0) {
        free(buf);
        return -1;
    }
    int fds[4] = {0, 1, 2, cwd};
    union {
        char buf[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    struct iovec iov = {buf, size};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    ssize_t sent = sendmsg(s, &msg, MSG_NOSIGNAL);
    int ok = sent > 0;
    size_t done = sent > 0 ? (size_t)sent : 0;
    while (ok && done < size) {
        ssize_t n = send(s, buf + done, size - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        ok = n > 0;
        done += n > 0 ? (size_t)n : 0;
    }
    close(cwd);
    free(buf);
    return ok ? 0 : -1;
}

/* One record from the server: a kind byte and a 32-bit value. */
static int read_record(int s, char *kind, int32_t *value)
{
    char rec[5];
    size_t got = 0;
    while (got < sizeof rec) {
        ssize_t n = read(s, rec + got, sizeof rec - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        got += n;
    }
    *kind = rec[0];
    memcpy(value, rec + 1, 4);
    return 0;
}

static void relay(int sig)
{
    if (command_pid > 0)
        kill(command_pid, sig);
    else
        early_signal = sig;
}

int main(int argc, char **argv)
{
    (void)argc;
    saved_argv = argv;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(bindir, sizeof bindir, "%s", exe);
        }
    }
    const char *mode = getenv("RMS_CMDSERVER");
    if (!bindir[0] || (mode && (!strcmp(mode, "off") || !strcmp(mode, "0"))))
        fallback();
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0)
            fallback();     /* a closed stdin/stdout/stderr cannot be handed over */

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (socket_path(addr.sun_path, sizeof addr.sun_path) < 0)
        fallback();
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        fallback();
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(s);
        start_server(addr.sun_path);
        fallback();
    }
    /* Only a server of this user gets the environment and the descriptors. */
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != getuid())
        fallback();

    /* Signals that arrive from here on go to the command once it has a pid. */
    struct sigaction sa = {.sa_handler = relay};
    sigemptyset(&sa.sa_mask);
    int relayed[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    for (size_t i = 0; i < sizeof relayed / sizeof *relayed; i++)
        sigaction(relayed[i], &sa, NULL);

    if (send_request(s, argv) < 0) {
        close(s);
        fallback();
    }
    /* 'P' (the command's pid) and its end ('X' code, 'S' signal) may come in either
     * order: the command reports its own end too, in case the server is killed. */
    char kind;
    int32_t value;
    if (read_record(s, &kind, &value) < 0 || kind == 'D') {
        close(s);           /* declined (or gone) before anything ran */
        fallback();
    }
    while (kind == 'P') {
        command_pid = value;
        if (early_signal)
            kill(command_pid, early_signal);
        if (read_record(s, &kind, &value) < 0) {
            fprintf(stderr, RMS_COMMAND ": error: the command server stopped while the "
                    "command ran; its outcome is unknown (RMS_CMDSERVER=off runs commands "
                    "without it)\n");
            return 1;
        }
    }
    if (kind == 'S') {
        signal(value, SIG_DFL);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, value);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
        raise(value);
        return 128 + value;
    }
    return kind == 'X' ? value & 0xff : 1;
}
