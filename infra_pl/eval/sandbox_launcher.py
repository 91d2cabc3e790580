"""The sandbox launcher: :func:`infra_pl.eval.sandbox.run_python` runs this file as a script.

Stdlib only, and it imports nothing of ``infra_pl``: it runs with the sandbox interpreter
(``python -I -S <this file> <config JSON>``; isolated mode, so neither this file's directory nor
any site-packages is on ``sys.path``), as root when the parent is root, with one JSON argument
(see ``infra_pl.eval.sandbox._launcher_args``).  Before anything else it joins the run's cgroup
(so everything it starts is counted there) and, in namespace mode, builds the root view
(``infra_pl.eval.sandbox._view_plan``) and chroots into it.  It forks the program; the child
becomes the leader of a new process group, puts itself first in line for the OOM killer
(oom_score_adj 1000, inherited by all it starts: a cgroup OOM kill takes the program, not the
launcher), sets rlimits, drops to the sandbox uid, joins a fresh session keyring, installs the
seccomp filter and execs.  The launcher itself

* enforces the wall-clock limit (SIGALRM) and stops early on SIGTERM (sent by the parent when
  output overflows);
* when the program ends or is stopped, SIGKILLs the program's process group in one step (so even
  a fork bomb that swallows EAGAIN is gone at once);
* is a child subreaper, so every descendant of the program -- including ones that left the group
  with setsid() -- is re-parented to it when its parent dies; it then kills and reaps them all.
  Without this, killed fork-bomb processes would become zombies of the host's init, and since
  zombies count towards RLIMIT_NPROC a host init that does not reap (common in containers) would
  make every later sandbox run fail;
* reports "exit N cpu" / "signal N cpu" / "timeout" / "terminated" / "startfail reason" /
  "setupfail reason" on a pipe the program cannot reach;
* hands the verdict pipe of ``check_code`` (if any) to the program only, keeping no copy.

Doing this in a separate stdlib-only launcher rather than in ``Popen(preexec_fn=...)`` keeps
``run_python`` safe to call from threads (``check_many``), where preexec_fn can deadlock, and
gives an exact exit status even inside a PID namespace (where the launcher is the namespace's
init).  The view is built with mount(2) through ctypes rather than a shell script of mount
commands: one process instead of ~30 (~3 ms each).

The sandbox interpreter may be the system's ``python3`` rather than the project's, so this file
keeps to syntax that any Python 3 still in use reads.
"""

import json
import os
import resource
import signal
import sys
import time


class Stop(Exception):
    pass


def on_signal(signum, frame):
    raise Stop(signum)


def child_pids(me):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(b")", 1)[1].split()[1]) == me:
            kids.append(int(entry))
    return kids


def kill_descendants():
    # Orphans are re-parented to us (subreaper / namespace init): kill direct
    # children until none is left; grandchildren surface as children each round.
    me = os.getpid()
    for _ in range(10000):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
        kids = child_pids(me)
        if not kids:
            return
        for kid in kids:
            try:
                os.kill(kid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)


def write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def build_view(libc, plan):
    import ctypes
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def mount(src, target, fstype, flags, data):
        enc = lambda s: None if s is None else s.encode()
        if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "mount %s on %s: %s" % (src or fstype, target, os.strerror(err)))

    for op in plan:
        kind = op[0]
        if kind == "mount":
            mount(*op[1:])
        elif kind == "mkdirs":
            os.makedirs(op[1], exist_ok=True)
            os.chmod(op[1], op[2])
        elif kind == "symlink":
            os.symlink(op[1], op[2])
        elif kind == "write":
            with open(op[1], "w") as f:
                f.write(op[2])
            os.chmod(op[1], op[3])
        elif kind == "copy":
            with open(op[1], "rb") as f:
                data = f.read()
            with open(op[2], "wb") as f:
                f.write(data)
            os.chmod(op[2], op[3])
        elif kind == "chown":
            os.chown(op[1], op[2], op[3])
        elif kind == "chroot":  # as switch_root does: move the view onto / and enter it
            os.chdir(op[1])
            mount(".", "/", None, 8192, None)  # MS_MOVE
            os.chroot(".")
            os.chdir("/")
        else:
            raise ValueError("unknown view operation %r" % (kind,))


def install_seccomp(libc, program):
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    # PR_SET_SECCOMP, SECCOMP_MODE_FILTER (needs no_new_privs, set before)
    if libc.prctl(ctypes.c_int(22), ctypes.c_ulong(2), ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "seccomp: %s" % os.strerror(err))


def main():
    c = json.loads(sys.argv[1])
    status_fd, uid, gid, verdict_fd = c["status_fd"], c["uid"], c["gid"], c["verdict_fd"]
    os.set_inheritable(status_fd, False)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
    except Exception:
        libc = None
    try:
        for path in c["cgroup_procs"]:  # "0": the writing process; children inherit the cgroup
            write_file(path, "0")
        if c["view"]:
            if libc is None:
                raise OSError("ctypes is unavailable")
            build_view(libc, c["view"])
        if c["seccomp"] and libc is None:
            raise OSError("ctypes is unavailable")
    except Exception as exc:
        os.write(status_fd, ("setupfail %r %s" % (exc, getattr(exc, "filename", "") or "")).encode("utf-8", "replace")[:4000])
        return
    if libc is not None:
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    env = {"PATH": "/usr/bin:/bin", "HOME": c["workdir"], "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1"}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGALRM])
    err_r, err_w = os.pipe()  # close-on-exec: EOF means exec succeeded
    pid = os.fork()
    if pid == 0:
        try:
            os.close(err_r)
            os.setpgid(0, 0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGALRM])
            os.chdir(c["workdir"])
            if libc is not None:  # no privilege gains through setuid binaries
                libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            if c["oom_first"]:  # the OOM killer takes the program first, not the launcher (its reporter)
                write_file("/proc/self/oom_score_adj", "1000")
            limits = [
                (resource.RLIMIT_CPU, c["cpu"], c["cpu"] + 1),
                (resource.RLIMIT_AS, c["mem"], c["mem"]),
                (resource.RLIMIT_FSIZE, c["fsize"], c["fsize"]),
                (resource.RLIMIT_NPROC, c["nproc"], c["nproc"]),
                (resource.RLIMIT_NOFILE, c["nofile"], c["nofile"]),
                (resource.RLIMIT_CORE, 0, 0),
            ]
            for which, soft, hard in limits:
                resource.setrlimit(which, (soft, hard))
            if uid >= 0:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            if libc is not None and c["keyctl"] >= 0:
                # KEYCTL_JOIN_SESSION_KEYRING with no name: a new, empty session keyring, so the
                # parent's session keyring is not possessed (errors: no keyring support; ignored)
                libc.syscall(ctypes.c_long(c["keyctl"]), ctypes.c_long(1), ctypes.c_long(0))
            if c["seccomp"]:
                install_seccomp(libc, bytes.fromhex(c["seccomp"]))
            argv = [c["python"], "-I", "-S", c["script"]]
            if verdict_fd >= 0:  # check_code's harness: the only holder of the verdict pipe
                argv.append(str(verdict_fd))
            os.execve(c["python"], argv, env)
        except BaseException as exc:
            try:
                os.write(err_w, repr(exc).encode("utf-8", "replace")[:2000])
            finally:
                os._exit(127)
    os.close(err_w)
    if verdict_fd >= 0:
        os.close(verdict_fd)
    start_error = b""
    while True:
        chunk = os.read(err_r, 4096)
        if not chunk:
            break
        start_error += chunk
    try:  # the program leads its own process group (also set in the child; whichever runs first)
        os.setpgid(pid, pid)
    except OSError:
        pass
    stopped = None
    signal.setitimer(signal.ITIMER_REAL, float(c["wall"]))
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGALRM])
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # wait, but leave it unreaped
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGALRM])
    except Stop as stop:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGALRM])
        stopped = stop.args[0]
    signal.setitimer(signal.ITIMER_REAL, 0)
    # The program is still our unreaped child, so its pgid cannot have been
    # reused: kill its whole group in one atomic step (a fork bomb cannot
    # outrun that), then reap it.
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    _, status, usage = os.wait4(pid, 0)
    cpu_used = usage.ru_utime + usage.ru_stime
    if stopped is not None:
        report = "timeout" if stopped == signal.SIGALRM else "terminated"
    elif start_error:
        report = "startfail " + start_error.decode("utf-8", "replace")
    elif os.WIFSIGNALED(status):
        report = "signal %d %.3f" % (os.WTERMSIG(status), cpu_used)
    else:
        report = "exit %d %.3f" % (os.WEXITSTATUS(status), cpu_used)
    # Descendants that left the group with setsid() were re-parented to us.
    kill_descendants()
    os.write(status_fd, report.encode("utf-8", "replace")[:4000])


if __name__ == "__main__":
    main()
