"""Run model-generated Python in a sandbox with hard resource limits.

Generated code is untrusted in the most literal sense: a model will sooner or
later emit ``while True: os.fork()``, an endless ``print`` loop or a 2 GB
allocation, and evaluation must report these as failures instead of taking the
training machine down.  Each program runs in its own short-lived process tree:

Isolation layers (strongest available; see :func:`sandbox_isolation`):

* **Unprivileged uid.**  Evaluation jobs often run as root (containers).  Linux
  does not enforce ``RLIMIT_NPROC`` for root, so a fork bomb "limited" by
  rlimits alone still exhausts the machine.  The program therefore runs as the
  ``nobody`` account (uid/gid 65534) whenever the parent is root; then every
  rlimit is enforced.  Because ``/root`` is usually mode 700, the project's own
  interpreter may not be executable by ``nobody``; a world-executable
  interpreter is chosen instead (:func:`find_interpreter`) and started with
  ``-I -S`` (isolated mode, no site-packages: the program only gets the stdlib).
* **Namespaces** (root only, via the util-linux ``unshare`` binary since Python
  3.11 has no ``os.unshare``): a new network namespace (not even loopback is up,
  so no network at all), a PID namespace (the program cannot see or signal host
  processes, and killing the namespace's init kills every process in it, even
  ones that called ``setsid``), an IPC namespace and a mount namespace in which
  ``/tmp`` and the other world-writable directories are replaced by one private,
  size-capped tmpfs (so nothing the program writes survives it, and disk usage is
  bounded) and the project/home directories (``/work``, ``/home``, ``/root``,
  ``/srv``, this checkout) are covered by empty read-only mounts.
* **rlimits** on CPU time, address space, file size, process count and open
  files, set in the child right before ``exec``.
* **Whole-tree cleanup.**  A small launcher process (see ``_LAUNCHER``) starts
  the program, enforces the wall-clock limit and, being a child subreaper (or
  the PID namespace's init), kills and reaps every descendant when the program
  ends -- including ``setsid()`` escapees and fork-bomb zombies, which would
  otherwise keep counting towards the sandbox uid's process limit.  The parent
  kills the whole process group as a backstop.
* **Stripped environment** (nothing from the parent leaks, e.g. API tokens) and
  **size-capped output capture** (pipes read incrementally; the program is
  killed once it exceeds the cap, so a print loop cannot fill memory).
* **Tests apart from the program** (:func:`check_code`): the program runs in
  its own process and answers calls; the tests run in a harness process that
  compares plain values and reports on a pipe only it holds
  (:mod:`infra_pl.eval.sandbox_check`), so nothing the program prints, reads
  or returns can make it pass.

If ``unshare`` is missing or does not work, the sandbox falls back to uid drop
+ rlimits + launcher cleanup and says so with :func:`warnings.warn`; in that
mode the program can use the network, write to ``/tmp`` (files it leaves there
survive) and read world-readable files such as the project's sources; and if
the launcher itself had to be killed (it never finished within a second of the
limit), processes that left the process group could outlive the run.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import selectors
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = [
    "SandboxError",
    "SandboxIsolation",
    "SandboxLimits",
    "SandboxResult",
    "STATUSES",
    "check_code",
    "check_many",
    "find_interpreter",
    "run_python",
    "sandbox_isolation",
]

#: Every value :attr:`SandboxResult.status` can take, with its meaning.
STATUSES: dict[str, str] = {
    "ok": "the program exited with code 0",
    "error": "non-zero exit (exception, failed assert, syntax error) or the program could not start",
    "timeout": "wall-clock timeout, or the CPU-time limit was hit (SIGXCPU)",
    "memory": "ran out of address space (MemoryError / 'Cannot allocate memory')",
    "file_size": "a file grew past max_file_mb (SIGXFSZ / 'File too large')",
    "killed": "killed by a signal not attributable to a specific limit (e.g. the kernel OOM killer, SIGSEGV)",
    "output_limit": "stdout or stderr exceeded max_output_bytes; the program was killed",
}

_NOBODY_FALLBACK_ID = 65534
_UNSHARE_CANDIDATES = ("/usr/bin/unshare", "/bin/unshare")
# Directories that hold code, data or credentials and have no business being
# visible to generated code; covered by empty read-only mounts (namespace mode).
_HIDDEN_DIRS = ("/work", "/home", "/root", "/srv")
# World-writable directories besides /tmp; in namespace mode they are bound to
# the private scratch tmpfs so writes there are private and count against its cap.
_EXTRA_WRITABLE_DIRS = ("/var/tmp", "/dev/shm", "/run/lock")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
# After the target process has exited or been killed, stragglers may still hold
# the output pipes open for a moment; stop waiting for EOF after this long.
_DRAIN_GRACE_S = 1.0
# The launcher enforces the wall-clock limit itself (and then cleans up the whole
# process tree); the parent kills the process group only if the launcher has not
# finished this long after the limit.
_BACKSTOP_S = 1.0


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program under test)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed run.

    Attributes:
        wall_timeout_s: wall-clock limit for the program, after which its whole
            process tree is SIGKILL-ed (also catches programs blocked in
            ``sleep``/``input``); sandbox setup adds ~0.1 s on top.
        cpu_time_s: RLIMIT_CPU in seconds (SIGXCPU at the limit, SIGKILL 1 s later).
        memory_mb: RLIMIT_AS (virtual address space) per process, in MiB.
        max_file_mb: RLIMIT_FSIZE, the largest file a process may write, in MiB.
        max_processes: RLIMIT_NPROC (processes + threads) for the sandbox uid.
            The kernel counts it per uid on the whole host, so concurrent
            sandboxes share this budget; when the parent is not root it also
            includes the parent user's own processes and threads.
        max_output_bytes: cap on captured stdout and (separately) stderr; the
            program is killed when it writes more.
        max_open_files: RLIMIT_NOFILE.
        scratch_mb: size of the private tmpfs that backs the working directory,
            ``/tmp`` and the other world-writable directories (namespace mode
            only); bounds the program's total disk footprint.
    """

    wall_timeout_s: float = 5.0
    cpu_time_s: int = 5
    memory_mb: int = 512
    max_file_mb: int = 8
    max_processes: int = 32
    max_output_bytes: int = 64 * 1024
    max_open_files: int = 64
    scratch_mb: int = 64

    def __post_init__(self) -> None:
        for name in (
            "wall_timeout_s",
            "cpu_time_s",
            "memory_mb",
            "max_file_mb",
            "max_processes",
            "max_output_bytes",
            "max_open_files",
            "scratch_mb",
        ):
            value = getattr(self, name)
            if name != "wall_timeout_s" and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"SandboxLimits.{name} must be an int, got {value!r}")
            if not value > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {value!r}")


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        status: one of :data:`STATUSES`.
        returncode: exit code, ``-signal`` when killed by a signal, or ``None``
            when the sandbox killed the program (timeout, output limit) or it
            never started.
        stdout, stderr: decoded output, each truncated to ``max_output_bytes``
            (stderr may carry a trailing ``[sandbox] ...`` explanation).
        duration_s: wall-clock time of the whole run, sandbox setup included.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class SandboxIsolation:
    """What isolation the sandbox applies on this machine (see :func:`sandbox_isolation`).

    Attributes:
        interpreter: Python binary that runs the programs.
        uid, gid: the unprivileged ids programs run as; ``None`` when the
            parent is not root and programs run as the parent's own user.
        namespaces: whether programs run in private mount/network/PID/IPC
            namespaces (private ``/tmp``, no network, whole-tree kill).
        unshare: path of the ``unshare`` binary used for the namespaces.
        note: why namespaces are off, if they are.
    """

    interpreter: str
    uid: int | None
    gid: int | None
    namespaces: bool
    unshare: str | None = None
    note: str = ""


# --------------------------------------------------------------------------- #
# interpreter and isolation discovery
# --------------------------------------------------------------------------- #


def _world_executable(path: str) -> bool:
    """Whether any user could execute ``path``: o+x on the file and o+x on every directory above it.

    Both the path as given and its symlink target are checked, because the
    kernel traverses the directories of each.
    """
    try:
        real = os.path.realpath(path)
        if not stat.S_ISREG(os.stat(real).st_mode) or not os.stat(real).st_mode & stat.S_IXOTH:
            return False
        for candidate in {os.path.abspath(path), real}:
            for parent in Path(candidate).parents:
                if not os.stat(parent).st_mode & stat.S_IXOTH:
                    return False
    except OSError:
        return False
    return True


def _is_native_binary(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def find_interpreter(require_world_executable: bool | None = None) -> str:
    """Pick the Python binary for sandboxed programs.

    Candidates, in order: ``/usr/bin/python3``, ``python3`` on ``PATH``,
    ``sys.executable``.  When the parent is root (programs run as ``nobody``)
    the binary must be executable by every user along its whole path; otherwise
    being executable is enough.  Script wrappers such as pyenv shims are skipped:
    they depend on environment variables that the sandbox strips.
    """
    if require_world_executable is None:
        require_world_executable = os.geteuid() == 0
    candidates = [c for c in ("/usr/bin/python3", shutil.which("python3"), sys.executable) if c]
    for candidate in dict.fromkeys(candidates):
        if not _is_native_binary(candidate):
            continue
        if require_world_executable:
            if _world_executable(candidate):
                return candidate
        elif os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SandboxError(
        "no Python interpreter usable by the sandbox user: tried "
        + ", ".join(candidates)
        + (" (each must be world-executable along its whole path)" if require_world_executable else "")
    )


_isolation_lock = threading.Lock()
_isolation_cache: SandboxIsolation | None = None


def sandbox_isolation() -> SandboxIsolation:
    """Probe (once per process, cached) which isolation works here.

    Namespace mode is tried only as root (unprivileged ``unshare`` would need a
    user namespace, in which the program would again hold capabilities).  The
    probe runs a trivial program through the full namespace setup; if that fails
    for any reason the sandbox degrades to uid drop + rlimits and warns.
    """
    global _isolation_cache
    with _isolation_lock:
        if _isolation_cache is not None:
            return _isolation_cache
        interpreter = find_interpreter()
        if os.geteuid() != 0:
            iso = SandboxIsolation(interpreter, None, None, False, note="not running as root")
            warnings.warn(
                "sandbox: not running as root, so no namespaces: sandboxed programs run as the current "
                "user under rlimits only (network and /tmp stay reachable)",
                RuntimeWarning,
                stacklevel=2,
            )
            _isolation_cache = iso
            return iso
        try:
            entry = pwd.getpwnam("nobody")
            uid, gid = entry.pw_uid, entry.pw_gid
        except KeyError:
            uid = gid = _NOBODY_FALLBACK_ID
        unshare = next((p for p in _UNSHARE_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("unshare")
        if unshare is None:
            note = "the util-linux 'unshare' binary was not found"
        else:
            candidate = SandboxIsolation(interpreter, uid, gid, True, unshare=unshare)
            note = _probe_namespaces(candidate)
            if not note:
                _isolation_cache = candidate
                return candidate
        warnings.warn(
            f"sandbox: namespace isolation unavailable ({note}); falling back to uid drop + rlimits: "
            "programs can use the network, write to /tmp and read world-readable files",
            RuntimeWarning,
            stacklevel=2,
        )
        _isolation_cache = SandboxIsolation(interpreter, uid, gid, False, note=note)
        return _isolation_cache


def _probe_namespaces(iso: SandboxIsolation) -> str:
    """Run a canary through the namespace sandbox; return '' if it works, else the reason."""
    probe = "import os, socket\nprint('probe', os.getuid(), len(socket.if_nameindex()))\n"
    try:
        result = _run(probe, SandboxLimits(wall_timeout_s=10.0), "", iso)
    except (OSError, SandboxError) as exc:
        return f"probe failed: {exc}"
    expected = f"probe {iso.uid} 1"
    if result.status != "ok" or result.stdout.strip() != expected:
        return f"probe gave status={result.status!r} stdout={result.stdout[-200:]!r} stderr={result.stderr[-300:]!r}"
    return ""


# --------------------------------------------------------------------------- #
# process launch
# --------------------------------------------------------------------------- #

# Runs with the sandbox interpreter (``-I -S``), as root when the parent is root.
# It forks the program; the child becomes the leader of a new process group,
# sets rlimits, drops to the sandbox uid and execs.  The launcher itself
#
# * enforces the wall-clock limit (SIGALRM) and stops early on SIGTERM (sent by
#   the parent when output overflows);
# * when the program ends or is stopped, SIGKILLs the program's process group
#   in one step (so even a fork bomb that swallows EAGAIN is gone at once);
# * is a child subreaper, so every descendant of the program -- including ones
#   that left the group with setsid() -- is re-parented to it when its parent
#   dies; it then kills and reaps them all.  Without this, killed fork-bomb
#   processes would become zombies of the host's init, and since zombies count
#   towards RLIMIT_NPROC a host init that does not reap (common in containers)
#   would make every later sandbox run fail;
# * reports "exit N cpu" / "signal N cpu" / "timeout" / "terminated" /
#   "startfail reason" on a pipe the program cannot reach;
# * hands the verdict pipe of ``check_code`` (if any) to the program only, keeping no copy.
#
# Doing this in a separate stdlib-only launcher rather than in
# ``Popen(preexec_fn=...)`` keeps ``run_python`` safe to call from threads
# (``check_many``), where preexec_fn can deadlock, and gives an exact exit
# status even inside a PID namespace (where the launcher is the namespace's init).
_LAUNCHER = r"""
import os, resource, signal, sys, time


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


def main():
    (status_fd, uid, gid, workdir, script, python, wall,
     cpu, mem, fsize, nproc, nofile, verdict_fd) = sys.argv[1:14]
    status_fd, uid, gid, verdict_fd = int(status_fd), int(uid), int(gid), int(verdict_fd)
    os.set_inheritable(status_fd, False)
    try:
        import ctypes
        libc = ctypes.CDLL(None)
    except Exception:
        libc = None
    if libc is not None:
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8",
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
            os.chdir(workdir)
            if libc is not None:  # no privilege gains through setuid binaries
                libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            limits = [
                (resource.RLIMIT_CPU, int(cpu), int(cpu) + 1),
                (resource.RLIMIT_AS, int(mem), int(mem)),
                (resource.RLIMIT_FSIZE, int(fsize), int(fsize)),
                (resource.RLIMIT_NPROC, int(nproc), int(nproc)),
                (resource.RLIMIT_NOFILE, int(nofile), int(nofile)),
                (resource.RLIMIT_CORE, 0, 0),
            ]
            for which, soft, hard in limits:
                resource.setrlimit(which, (soft, hard))
            if uid >= 0:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            argv = [python, "-I", "-S", script]
            if verdict_fd >= 0:  # check_code's harness: the only holder of the verdict pipe
                argv.append(str(verdict_fd))
            os.execve(python, argv, env)
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
    signal.setitimer(signal.ITIMER_REAL, float(wall))
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

main()
"""


def _launcher_args(
    iso: SandboxIsolation, limits: SandboxLimits, status_fd: int, workdir: str, verdict_fd: int = -1
) -> list[str]:
    mib = 1024 * 1024
    return [
        iso.interpreter,
        "-I",
        "-S",
        "-c",
        _LAUNCHER,
        str(status_fd),
        str(iso.uid if iso.uid is not None else -1),
        str(iso.gid if iso.gid is not None else -1),
        workdir,
        os.path.join(workdir, "main.py"),
        iso.interpreter,
        repr(float(limits.wall_timeout_s)),
        str(limits.cpu_time_s),
        str(limits.memory_mb * mib),
        str(limits.max_file_mb * mib),
        str(limits.max_processes),
        str(limits.max_open_files),
        str(verdict_fd),
    ]


def _dirs_to_hide(interpreter: str) -> list[str]:
    """Existing project/home directories to cover, minus any that hold the interpreter.

    Nested entries are dropped (after ``/work`` is covered, ``/work/main`` no
    longer exists to mount on).
    """
    needed = [os.path.realpath(interpreter), os.path.abspath(interpreter)]
    # Directories under the world-writable ones are already replaced by the private tmpfs (a
    # project cloned under /tmp, say): there is nothing left there to mount on.
    replaced = [os.path.realpath(w) for w in ("/tmp", *_EXTRA_WRITABLE_DIRS)]
    chosen: list[str] = []
    for d in sorted({os.path.realpath(p) for p in (*_HIDDEN_DIRS, str(_PROJECT_ROOT))}):
        if d == "/" or not os.path.isdir(d):
            continue
        if any(d == w or d.startswith(w + "/") for w in replaced):
            continue
        if any(n == d or n.startswith(d + "/") for n in needed):
            continue
        if any(d == c or d.startswith(c + "/") for c in chosen):
            continue
        chosen.append(d)
    return chosen


def _namespace_script(
    iso: SandboxIsolation, limits: SandboxLimits, root: str, status_fd: int, verdict_fd: int = -1
) -> str:
    """Shell script run as root inside the new namespaces before exec-ing the launcher.

    It mounts a size-capped tmpfs, copies the program into it, binds the other
    world-writable directories to subdirectories of it, moves it over ``/tmp``
    and covers the hidden directories.  Mount propagation is private (unshare's
    default), so none of this is visible outside and it all vanishes with the
    namespace.
    """
    q = shlex.quote
    scratch = os.path.join(root, "scratch")
    lines = [
        "set -eu",
        f"mount -t tmpfs -o size={limits.scratch_mb}m,mode=1777,nosuid,nodev infra_pl_sandbox {q(scratch)}",
        f"mkdir -m 0700 {q(scratch)}/work",
        f"cp {q(os.path.join(root, 'work', 'main.py'))} {q(scratch)}/work/main.py",
    ]
    if iso.uid is not None:
        lines.append(f"chown -R {iso.uid}:{iso.gid} {q(scratch)}/work")
    seen = {"/tmp"}
    for d in _EXTRA_WRITABLE_DIRS:
        real = os.path.realpath(d)
        if real in seen or real.startswith("/tmp/") or not os.path.isdir(real):
            continue
        seen.add(real)
        lines.append(f"mkdir -m 1777 {q(scratch)}/.host{real.replace('/', '_')}")
        lines.append(f"mount --bind {q(scratch)}/.host{real.replace('/', '_')} {q(real)}")
    lines.append(f"mount --move {q(scratch)} /tmp")
    for d in _dirs_to_hide(iso.interpreter):
        lines.append(f"mount -t tmpfs -o ro,size=4k,mode=0755,nosuid,nodev,noexec infra_pl_hidden {q(d)}")
    lines.append("cd /tmp/work")
    lines.append("exec " + " ".join(q(a) for a in _launcher_args(iso, limits, status_fd, "/tmp/work", verdict_fd)))
    return "\n".join(lines) + "\n"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Supervisor:
    """Reads the program's output under a size cap; kills the tree on overflow or as a timeout backstop."""

    def __init__(
        self, proc: subprocess.Popen[bytes], limits: SandboxLimits, start: float, namespaces: bool
    ) -> None:
        self.proc = proc
        self.limits = limits
        self.namespaces = namespaces
        self.deadline = start + limits.wall_timeout_s + _BACKSTOP_S
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.killed_for: str | None = None  # "timeout" / "output_limit" when the parent stopped it
        self.overflowed: str | None = None
        self._sigkill_at: float | None = None

    def run(self) -> None:
        proc = self.proc
        assert proc.stdout is not None and proc.stderr is not None
        buffers = {proc.stdout.fileno(): self.stdout, proc.stderr.fileno(): self.stderr}
        names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
        sel = selectors.DefaultSelector()
        pidfd = None
        try:
            for fd in buffers:
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ)
            try:
                # A pidfd becomes readable when the process exits, without reaping it.
                pidfd = os.pidfd_open(proc.pid)
                sel.register(pidfd, selectors.EVENT_READ)
            except (AttributeError, OSError):
                pidfd = None
            exited = False
            grace_end: float | None = None
            while True:
                now = time.monotonic()
                if not exited and self.killed_for is None and now >= self.deadline:
                    self._stop("timeout")
                if self._sigkill_at is not None and now >= self._sigkill_at:
                    _kill_group(proc.pid)
                    self._sigkill_at = None
                if not exited and self._leader_exited():
                    exited = True
                    # The leader is a zombie now, so its pgid cannot have been reused:
                    # safe to kill anything it left behind in its group.
                    _kill_group(proc.pid)
                open_pipes = [fd for fd in buffers if fd in sel.get_map()]
                if exited and not open_pipes:
                    break
                if exited:
                    grace_end = grace_end or now + _DRAIN_GRACE_S
                    if now >= grace_end:
                        break
                    timeout = grace_end - now
                else:
                    timeout = self.deadline - now if self.killed_for is None else 0.05
                    if self._sigkill_at is not None:
                        timeout = min(timeout, self._sigkill_at - now)
                if pidfd is None:
                    timeout = min(timeout, 0.02)
                for key, _ in sel.select(max(0.0, timeout)):
                    fd = key.fd
                    if fd == pidfd:
                        sel.unregister(pidfd)
                        continue
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(fd)
                        continue
                    buf = buffers[fd]
                    room = self.limits.max_output_bytes - len(buf)
                    buf += chunk[: max(room, 0)]
                    if len(chunk) > room and self.killed_for is None:
                        self.overflowed = names[fd]
                        self._stop("output_limit")
        finally:
            if not self._leader_exited():  # only on an exception (e.g. KeyboardInterrupt) in the loop
                self._stop(self.killed_for or "timeout")
                try:
                    proc.wait(timeout=_DRAIN_GRACE_S)
                except subprocess.TimeoutExpired:
                    _kill_group(proc.pid)
            proc.wait()
            sel.close()
            if pidfd is not None:
                os.close(pidfd)

    def _leader_exited(self) -> bool:
        """Whether the top process exited, checked without reaping it (WNOWAIT)."""
        if self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _stop(self, reason: str) -> None:
        """Stop the run early.

        In namespace mode SIGKILL to the group is enough: it holds the
        namespace's init, whose death kills everything in the namespace.  In
        fallback mode the launcher gets SIGTERM first so it can kill and reap
        the program's whole tree (setsid escapees included); SIGKILL follows
        if it has not exited after a grace period.
        """
        if self.killed_for is None:
            self.killed_for = reason
        if self.namespaces:
            _kill_group(self.proc.pid)
        else:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._sigkill_at = time.monotonic() + _DRAIN_GRACE_S


def _classify(report: str, sup: _Supervisor, limits: SandboxLimits) -> tuple[str, int | None, str]:
    """Map the launcher's report and the captured stderr to (status, returncode, sandbox note)."""
    stderr_text = bytes(sup.stderr).decode("utf-8", "replace")
    if sup.killed_for == "output_limit":
        return (
            "output_limit",
            None,
            f"[sandbox] killed: {sup.overflowed} exceeded max_output_bytes={limits.max_output_bytes}",
        )
    if sup.killed_for == "timeout" or report == "timeout":
        return "timeout", None, f"[sandbox] killed after the wall-clock limit of {limits.wall_timeout_s:g} s"
    if report == "terminated":  # the launcher got SIGTERM from someone other than this process
        return "killed", None, "[sandbox] the sandbox launcher was terminated"
    kind, _, rest = report.partition(" ")
    if kind == "startfail":
        return "error", None, f"[sandbox] the program could not be started: {rest}"
    fields = rest.split()
    if kind not in ("exit", "signal") or len(fields) != 2:
        raise SandboxError(f"sandbox launcher gave no usable status (got {report!r}); stderr: {stderr_text[-2000:]}")
    code, cpu_used = int(fields[0]), float(fields[1])
    out_of_memory = "MemoryError" in stderr_text or "Cannot allocate memory" in stderr_text
    file_too_large = "File too large" in stderr_text
    if kind == "signal":
        sig = code
        if sig == signal.SIGXFSZ:
            return "file_size", -sig, f"[sandbox] file size limit of {limits.max_file_mb} MiB exceeded"
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= limits.cpu_time_s):
            return "timeout", -sig, f"[sandbox] CPU time limit of {limits.cpu_time_s} s exceeded"
        if out_of_memory:
            return "memory", -sig, ""
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return "killed", -sig, f"[sandbox] killed by signal {name}"
    if code == 0:
        return "ok", 0, ""
    if file_too_large:
        return "file_size", code, ""
    if out_of_memory:
        return "memory", code, ""
    return "error", code, ""


def _run(source: str, limits: SandboxLimits, stdin: str, iso: SandboxIsolation) -> SandboxResult:
    """One sandboxed run under an explicit isolation mode (the probe and tests use this directly)."""
    return _execute(source, limits, stdin, iso)[0]


def _execute(
    source: str, limits: SandboxLimits, stdin: str, iso: SandboxIsolation, verdict: bool = False
) -> tuple[SandboxResult, bytes]:
    """:func:`_run`, plus (``verdict=True``) what the program wrote on a pipe only it holds.

    The program gets the pipe's write end as an extra file descriptor, its number as its one
    argument; ``check_code``'s harness writes its verdict there.
    """
    start = time.monotonic()
    root = tempfile.mkdtemp(prefix="infra_pl_sandbox_")
    status_r = status_w = verdict_r = verdict_w = -1
    try:
        os.chmod(root, 0o711)  # the sandbox user may traverse to work/, but not list or write root
        workdir = os.path.join(root, "work")
        os.mkdir(workdir, 0o700)
        script = os.path.join(workdir, "main.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(source)
        if iso.uid is not None:
            os.chown(workdir, iso.uid, iso.gid if iso.gid is not None else -1)
            os.chown(script, iso.uid, iso.gid if iso.gid is not None else -1)
        stdin_path = os.path.join(root, "stdin")
        with open(stdin_path, "w", encoding="utf-8") as f:
            f.write(stdin)
        status_r, status_w = os.pipe()
        if verdict:
            verdict_r, verdict_w = os.pipe()
        if iso.namespaces:
            os.mkdir(os.path.join(root, "scratch"), 0o700)
            assert iso.unshare is not None
            argv = [
                iso.unshare,
                "--mount",
                "--net",
                "--pid",
                "--ipc",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "/bin/sh",
                "-c",
                _namespace_script(iso, limits, root, status_w, verdict_w),
            ]
        else:
            argv = _launcher_args(iso, limits, status_w, workdir, verdict_w)
        setup_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        with open(stdin_path, "rb") as stdin_file:
            os.unlink(stdin_path)  # reachable through the descriptor only, not by its path
            proc = subprocess.Popen(
                argv,
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=root,
                env=setup_env,
                start_new_session=True,  # own process group, killed as a whole
                pass_fds=(status_w,) if verdict_w < 0 else (status_w, verdict_w),
            )
        for fd in (status_w, verdict_w):
            if fd >= 0:
                os.close(fd)
        status_w = verdict_w = -1
        sup = _Supervisor(proc, limits, start, iso.namespaces)
        try:
            sup.run()
        finally:
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            proc.stderr.close()
        os.set_blocking(status_r, False)
        try:
            report = os.read(status_r, 8192).decode("utf-8", "replace")
        except BlockingIOError:
            report = ""
        verdict_bytes = b""
        if verdict_r >= 0:
            os.set_blocking(verdict_r, False)
            try:
                verdict_bytes = os.read(verdict_r, 4096)
            except BlockingIOError:
                pass
        status, returncode, note = _classify(report, sup, limits)
        stderr = bytes(sup.stderr).decode("utf-8", "replace")
        if note:
            stderr = f"{stderr}\n{note}" if stderr else note
        result = SandboxResult(
            status=status,
            returncode=returncode,
            stdout=bytes(sup.stdout).decode("utf-8", "replace"),
            stderr=stderr,
            duration_s=time.monotonic() - start,
        )
        return result, verdict_bytes
    finally:
        for fd in (status_r, status_w, verdict_r, verdict_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


def run_python(source: str, limits: SandboxLimits = SandboxLimits(), stdin: str = "") -> SandboxResult:
    """Run ``source`` as a Python script in the sandbox and report what happened.

    The script runs as ``main.py`` in a fresh temporary working directory
    (removed afterwards) with ``stdin`` as its standard input, the environment
    ``PATH=/usr/bin:/bin HOME=<workdir> LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1``
    and only the standard library (``-I -S``: no site-packages, hence also no
    ``exit()``/``quit()`` builtins; ``sys.exit`` works).  In namespace mode the
    working directory is ``/tmp/work`` on the private tmpfs.  Never raises for
    anything the program does; raises :class:`SandboxError` only if the sandbox
    machinery itself breaks.
    """
    return _run(source, limits, stdin, sandbox_isolation())


# The test harness (infra_pl/eval/sandbox_check.py, stdlib only) runs as the sandboxed program:
# it starts the solution in a second process that answers calls, runs the tests itself on plain,
# exactly typed values, and writes its verdict on a pipe only it holds. Nothing the solution can
# read or print is the success signal (a per-run marker on stdout was: a solution could read it
# from its own script and print it, or pass every `==` with an object whose __eq__ says True).
_HARNESS_SOURCE = (Path(__file__).with_name("sandbox_check.py")).read_text(encoding="utf-8")


def check_code(
    program: str,
    tests: Sequence[str],
    setup_code: str = "",
    limits: SandboxLimits = SandboxLimits(),
) -> SandboxResult:
    """Run ``setup_code`` and ``program`` in one sandboxed process and each test statement in another.

    ``tests`` are Python statements such as ``"assert f(2) == 10"``. They run in the harness
    process (see :mod:`infra_pl.eval.sandbox_check`), where ``setup_code`` also runs and the
    names the program defines stand for its objects: calls go to the program's process, and what
    comes back is decoded into plain builtins, so the comparisons are the harness's own. The
    program runs under ``__name__ == "__solution__"`` (an ``if __name__ == "__main__":`` block
    does not run). The result passes only if every test ran without raising, the harness exited
    with code 0 and its verdict arrived on a pipe the program never holds. ``stdout`` is what the
    program printed (outside ``check_stdio`` runs, which capture their own).
    """
    if isinstance(tests, str):
        raise TypeError("tests must be a list of statements, not a single string")
    if not tests:
        raise ValueError("check_code needs at least one test: a program without tests cannot 'pass'")
    nonce = secrets.token_hex(16)
    job = json.dumps({"setup": setup_code, "program": program, "tests": list(tests), "nonce": nonce})
    result, verdict = _execute(_HARNESS_SOURCE, limits, job, sandbox_isolation(), verdict=True)
    if result.status == "ok" and verdict != f"passed {nonce}\n".encode():
        result.status = "error"
        result.stderr += "\n[check_code] no verdict from the test harness: the tests did not all run"
    return result


def check_many(
    jobs: Sequence[tuple[str, Sequence[str], str]],
    limits: SandboxLimits = SandboxLimits(),
    workers: int = 2,
) -> list[SandboxResult]:
    """:func:`check_code` for each ``(program, tests, setup_code)`` job, ``workers`` at a time.

    Threads suffice because every job is its own process tree; results keep
    the order of ``jobs``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    for i, job in enumerate(jobs):
        if not isinstance(job, tuple) or len(job) != 3:
            raise ValueError(f"job {i} must be a (program, tests, setup_code) tuple, got {type(job).__name__}")
    sandbox_isolation()  # probe once up front, not concurrently in every worker
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: check_code(job[0], job[1], job[2], limits), jobs))
