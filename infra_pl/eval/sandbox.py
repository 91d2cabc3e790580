"""Run model-generated Python in a sandbox with hard resource limits.

Generated code is untrusted in the most literal sense: a model will sooner or
later emit ``while True: os.fork()``, an endless ``print`` loop or a 2 GB
allocation, and evaluation must report these as failures instead of taking the
training machine down.  Each program runs in its own short-lived process tree:

Isolation layers (strongest available; see :func:`sandbox_isolation`, and
:func:`announce_isolation` for what is missing on this machine):

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
  so no network at all, and no abstract Unix sockets of the host), a PID
  namespace (the program cannot see or signal host processes, and killing the
  namespace's init kills every process in it, even ones that called
  ``setsid``), an IPC namespace and a mount namespace whose root is a
  **minimal read-only view** built for each run: ``/usr`` (without
  ``/usr/local`` and ``/usr/src``) and the ``/bin``, ``/lib*``, ``/sbin``
  entries, read-only; the interpreter's own prefix if it lies elsewhere; a
  synthetic ``/etc`` (``passwd``/``group`` with root and the sandbox user,
  ``hosts``, ``nsswitch.conf``, ``ld.so.cache``, ``localtime``); a ``/dev``
  with ``null``, ``zero``, ``full``, ``random``, ``urandom``; a fresh
  ``/proc``; and ``/tmp`` (also bound on ``/var/tmp`` and ``/dev/shm``), a
  private tmpfs capped in bytes (``scratch_mb``) *and* inodes
  (``scratch_files``) that holds the working directory.  Nothing else of the
  host exists there: no ``/run`` or ``/var/run`` (host sockets), no host
  ``/tmp``, ``/home``, ``/root``, ``/work``, ``/srv``, ``/opt``, ``/mnt``,
  ``/sys``, ``/boot`` or host ``/etc``.
* **A cgroup per run** (cgroup v2 ``memory.max``/``pids.max``, or the v1
  ``memory`` and ``pids`` controllers; wherever the cgroup file system is
  writable): the whole run -- every process, its scratch files and the kernel
  memory they use -- is held to ``memory_mb + scratch_mb`` MiB without swap and
  ``max_processes + 1`` tasks, whatever each process's rlimits allow.
* **A seccomp filter** (x86_64 and aarch64): ``keyctl``, ``add_key`` and
  ``request_key`` fail with ``EPERM`` (no kernel keyring, so nothing carries
  over from one run to the next through it), as do ``unshare``, ``setns`` and
  ``clone`` with ``CLONE_NEWUSER`` (no user namespaces); ``clone3``, whose flags
  a filter cannot read, fails with ``ENOSYS`` (glibc then uses ``clone``).
  The program also starts in a fresh, empty session keyring.
* **rlimits** on CPU time, address space, file size, process count and open
  files, set in the child right before ``exec``.
* **Whole-tree cleanup.**  A small launcher process (:mod:`infra_pl.eval.sandbox_launcher`) starts
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

Each layer is probed once per process, strongest combination first; what does
not work is left out and named in :attr:`SandboxIsolation.missing` (and in a
:func:`warnings.warn`).  Without root there is no unprivileged uid and no
namespaces: the program runs as the calling user under rlimits, seccomp and (in
a delegated cgroup only) a cgroup; it can use the network, write to ``/tmp``
(files it leaves there survive) and read whatever that user can read.  If the
launcher itself had to be killed (it never finished within a second of the
limit), processes that left the process group could outlive the run in that mode.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import platform
import pwd
import re
import secrets
import selectors
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = [
    "SandboxError",
    "SandboxIsolation",
    "SandboxLimits",
    "SandboxResult",
    "STATUSES",
    "announce_isolation",
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
    "memory": "ran out of address space (MemoryError / 'Cannot allocate memory'), or the run's cgroup "
    "memory limit was hit (OOM-killed)",
    "file_size": "a file grew past max_file_mb (SIGXFSZ / 'File too large')",
    "killed": "killed by a signal not attributable to a specific limit (e.g. the kernel OOM killer, SIGSEGV)",
    "output_limit": "stdout or stderr exceeded max_output_bytes; the program was killed",
}

_NOBODY_FALLBACK_ID = 65534
_UNSHARE_CANDIDATES = ("/usr/bin/unshare", "/bin/unshare")
# Top-level host entries of the minimal root view: directories are bound read-only,
# symlinks (merged /usr) are recreated as they are.  Everything else of the host is absent.
_VIEW_SYSTEM_ENTRIES = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Parts of /usr that hold locally installed software rather than the distribution's;
# covered by empty read-only mounts unless the interpreter lives there.
_VIEW_HIDDEN_USR = ("/usr/local", "/usr/src")
_VIEW_DEVICES = ("null", "zero", "full", "random", "urandom")
_CGROUP_PREFIX = "infra_pl_sandbox-"
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
        memory_mb: RLIMIT_AS (virtual address space) per process, in MiB.  With
            a cgroup, the whole run (all processes, the scratch files and the
            kernel memory they use) is also held to ``memory_mb + scratch_mb``.
        max_file_mb: RLIMIT_FSIZE, the largest file a process may write, in MiB.
        max_processes: RLIMIT_NPROC (processes + threads) for the sandbox uid.
            The kernel counts it per uid on the whole host, so concurrent
            sandboxes share this budget; when the parent is not root it also
            includes the parent user's own processes and threads.  With a
            cgroup, each run also gets its own ``pids.max`` of this plus one
            (the launcher).
        max_output_bytes: cap on captured stdout and (separately) stderr; the
            program is killed when it writes more.
        max_open_files: RLIMIT_NOFILE.
        scratch_mb: size of the private tmpfs that backs the working directory,
            ``/tmp`` and the other world-writable directories (namespace mode
            only); bounds the program's total disk footprint.
        scratch_files: inodes (files, directories, links) the program may
            create in that tmpfs (namespace mode only); bounds the kernel memory
            that empty files would otherwise use without counting as bytes.
    """

    wall_timeout_s: float = 5.0
    cpu_time_s: int = 5
    memory_mb: int = 512
    max_file_mb: int = 8
    max_processes: int = 32
    max_output_bytes: int = 64 * 1024
    max_open_files: int = 64
    scratch_mb: int = 64
    scratch_files: int = 10_000

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
            "scratch_files",
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
            namespaces (minimal read-only root view, private ``/tmp`` capped in
            bytes and inodes, no network, whole-tree kill).
        unshare: path of the ``unshare`` binary used for the namespaces.
        note: why namespaces are off, if they are.
        cgroup: the per-run cgroup in use, e.g. ``"v2"`` or ``"v1 memory+pids"``;
            ``""`` when there is none (memory is then limited per process only).
        seccomp: whether programs run under the seccomp filter (no kernel
            keyring, no user namespaces).
        view_paths: directories outside the system ones (``/usr``, ``/lib*``,
            ...) that the root view binds read-only for the interpreter.
        missing: one line per isolation layer that does not work here, with the
            reason (empty when everything is in place).
    """

    interpreter: str
    uid: int | None
    gid: int | None
    namespaces: bool
    unshare: str | None = None
    note: str = ""
    cgroup: str = ""
    seccomp: bool = False
    view_paths: tuple[str, ...] = ()
    missing: tuple[str, ...] = field(default=(), compare=False)

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


def _interpreter_paths(interpreter: str) -> tuple[str, ...]:
    """Directories the interpreter needs in the root view: where its binary is, its (base) prefixes."""
    paths = {os.path.dirname(os.path.abspath(interpreter)), os.path.dirname(os.path.realpath(interpreter))}
    try:
        out = subprocess.run(
            [interpreter, "-I", "-S", "-c", "import sys; print(sys.base_prefix); print(sys.base_exec_prefix)"],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    paths.update(line for line in out.splitlines() if line.startswith("/"))
    return tuple(sorted(os.path.normpath(p) for p in paths if os.path.normpath(p) != "/"))


_isolation_lock = threading.Lock()
_isolation_cache: SandboxIsolation | None = None


def sandbox_isolation() -> SandboxIsolation:
    """Probe (once per process, cached) which isolation works here.

    Namespace mode is tried only as root (unprivileged ``unshare`` would need a
    user namespace, in which the program would again hold capabilities).  The
    candidates are probed strongest first -- namespaces with the root view, a
    cgroup and seccomp; then without the cgroup; then without seccomp; then the
    same without namespaces -- each by running a canary program through the
    whole setup; the first that works is used, and every layer left out is named
    in :attr:`SandboxIsolation.missing` and in a :func:`warnings.warn`.
    """
    global _isolation_cache
    with _isolation_lock:
        if _isolation_cache is not None:
            return _isolation_cache
        iso = _discover_isolation()
        if iso.missing:
            warnings.warn(
                "sandbox: reduced isolation on this machine: " + "; ".join(iso.missing),
                RuntimeWarning,
                stacklevel=2,
            )
        _isolation_cache = iso
        return iso


def _discover_isolation() -> SandboxIsolation:
    interpreter = find_interpreter()
    missing: list[str] = []
    is_root = os.geteuid() == 0
    if is_root:
        try:
            entry = pwd.getpwnam("nobody")
            uid, gid = entry.pw_uid, entry.pw_gid
        except KeyError:
            uid = gid = _NOBODY_FALLBACK_ID
        unshare = next((p for p in _UNSHARE_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("unshare")
        ns_note = "" if unshare else "the util-linux 'unshare' binary was not found"
    else:
        uid = gid = None
        unshare = None
        ns_note = "not running as root"
        missing.append(
            f"unprivileged user: not running as root (uid {os.geteuid()}), so programs run as this user "
            "and RLIMIT_NPROC counts this user's own processes too"
        )
    machine = platform.machine()
    seccomp = _seccomp_filter(machine) is not None
    seccomp_note = "" if seccomp else f"no filter for this architecture ({machine})"
    cgroup_note = _CGROUPS.setup()
    cgroup = _CGROUPS.kind
    base = SandboxIsolation(interpreter, uid, gid, False, None, ns_note, cgroup, seccomp)
    ladder = []
    if not ns_note:
        ladder.append(replace(base, namespaces=True, unshare=unshare, note="",
                              view_paths=_interpreter_paths(interpreter)))
    ladder.append(base)
    candidates: list[SandboxIsolation] = []
    for top in ladder:
        for cand in (top, replace(top, cgroup=""), replace(top, cgroup="", seccomp=False)):
            if cand not in candidates:
                candidates.append(cand)
    bare = candidates[-1]
    failures: dict[str, str] = {}
    chosen = bare
    for cand in candidates:
        if cand == bare and not cand.namespaces:
            break  # uid drop + rlimits + launcher: nothing to probe
        reason = _probe_namespaces(cand)
        if not reason:
            chosen = cand
            break
        layers = "+".join(x for x, on in (("namespaces", cand.namespaces), ("cgroup", cand.cgroup),
                                          ("seccomp", cand.seccomp)) if on)
        failures[layers] = reason
    probe_notes = "; ".join(f"with {k}: {v}" for k, v in failures.items())
    if not chosen.namespaces:
        note = ns_note or probe_notes or "probe failed"
        chosen = replace(chosen, note=note, view_paths=())
        if is_root:
            missing.append(
                f"namespaces: {note}; programs can use the network, leave files in /tmp, reach host Unix "
                "sockets and read world-readable host files, and files they create are not capped in number"
            )
        else:
            missing.append(
                "namespaces: not running as root; programs can use the network, leave files in /tmp, reach "
                "host Unix sockets and read whatever this user can read, and files they create are not capped "
                "in number"
            )
    if chosen.cgroup and cgroup_note:  # in use, but not every controller (e.g. v1 without pids)
        missing.append(f"cgroup: {cgroup_note}")
    if not chosen.cgroup:
        why = cgroup_note if not cgroup else f"the probe failed ({probe_notes})"
        missing.append(
            f"cgroup: {why}; memory is limited per process only (RLIMIT_AS), so a run's processes together "
            "and the kernel memory they use are not bounded, and RLIMIT_NPROC is shared by all runs"
        )
    if not chosen.seccomp:
        why = seccomp_note or f"the probe failed ({probe_notes})"
        missing.append(
            f"seccomp: {why}; programs can create user namespaces and use the kernel keyring (the sandbox "
            "user's keyring keeps keys from one run to the next)"
        )
    return replace(chosen, missing=tuple(missing))


_PROBE_PROGRAM = r"""
import json, os, socket
fields = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
try:
    cgroup = open("/proc/self/cgroup").read()
except OSError:
    cgroup = ""
print(json.dumps({"uid": os.getuid(), "ifaces": len(socket.if_nameindex()), "root": sorted(os.listdir("/")),
                  "seccomp": fields.get("Seccomp", "").strip(), "cgroup": cgroup}))
"""


def _probe_namespaces(iso: SandboxIsolation) -> str:
    """Run a canary through the sandbox as ``iso`` describes it; return '' if every layer is in place, else why not."""
    try:
        result = _run(_PROBE_PROGRAM, SandboxLimits(wall_timeout_s=10.0), "", iso)
    except (OSError, SandboxError) as exc:
        return f"probe failed: {exc}"
    try:
        seen = json.loads(result.stdout)
    except ValueError:
        seen = None
    if result.status != "ok" or not isinstance(seen, dict):
        return f"probe gave status={result.status!r} stdout={result.stdout[-200:]!r} stderr={result.stderr[-300:]!r}"
    problems = []
    if seen["uid"] != (iso.uid if iso.uid is not None else os.getuid()):
        problems.append(f"ran as uid {seen['uid']}")
    if iso.namespaces and seen["ifaces"] != 1:
        problems.append(f"{seen['ifaces']} network interfaces visible")
    if iso.namespaces and ("run" in seen["root"] or "tmp" not in seen["root"]):
        problems.append(f"root view not in place (/ holds {seen['root']})")
    if iso.seccomp and seen["seccomp"] != "2":
        problems.append(f"seccomp mode {seen['seccomp']!r}")
    if iso.cgroup and f"/{_CGROUP_PREFIX}{os.getpid()}/" not in seen["cgroup"]:
        problems.append(f"not in the run's cgroup ({seen['cgroup'].strip()!r})")
    return "; ".join(problems)


# --------------------------------------------------------------------------- #
# per-run cgroups
# --------------------------------------------------------------------------- #


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _unescape_mount_path(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _cgroup_dirs(proc_cgroup: str, mountinfo: str) -> tuple[tuple[str, str] | None, dict[str, tuple[str, str]]]:
    """This process's cgroup directories: ``(v2 dir, its mount point)`` and ``{v1 controller: (dir, mount point)}``.

    ``proc_cgroup`` is ``/proc/self/cgroup``, ``mountinfo`` ``/proc/self/mountinfo``; a
    hierarchy whose mounted root does not contain this process's cgroup is left out.
    """
    own: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            own[""] = path
        for name in controllers.split(","):
            if name:
                own[name] = path

    def locate(key: str, root: str, mount_point: str) -> tuple[str, str] | None:
        path = own.get(key)
        if path is None:
            return None
        if root != "/":
            if path != root and not path.startswith(root.rstrip("/") + "/"):
                return None
            path = path[len(root.rstrip("/")):]
        return os.path.normpath(mount_point + "/" + path.lstrip("/")), mount_point

    v2: tuple[str, str] | None = None
    v1: dict[str, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype, options = (
            _unescape_mount_path(fields[3]), _unescape_mount_path(fields[4]), tail[0], tail[2].split(","))
        if fstype == "cgroup2" and v2 is None:
            v2 = locate("", root, mount_point)
        elif fstype == "cgroup":
            for name in ("memory", "pids"):
                if name in options and name not in v1:
                    found = locate(name, root, mount_point)
                    if found:
                        v1[name] = found
    return v2, v1


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_groups(base: str) -> None:
    """Remove (empty) per-process groups left by sandbox parents that died without cleaning up."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(re.escape(_CGROUP_PREFIX) + r"(\d+)", name)
        if not match or int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
            continue
        _remove_group(os.path.join(base, name))


def _remove_group(group: str) -> None:
    """Remove a per-process cgroup directory and the (empty) leaf groups in it; leave it if that fails."""
    try:
        for sub in os.listdir(group):
            if os.path.isdir(os.path.join(group, sub)):
                os.rmdir(os.path.join(group, sub))
        os.rmdir(group)
    except OSError:
        pass


@dataclass
class _Slot:
    """One reusable leaf cgroup (one directory per v1 controller; one for v2)."""

    dirs: dict[str, str]
    oom_before: int = 0

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]


class _Cgroups:
    """Per-run cgroups below one group per sandbox parent (``<base>/infra_pl_sandbox-<pid>``).

    Leaf groups ("slots") are reused from run to run (creating and removing a
    memory cgroup per run would leave dying cgroups behind in the kernel); each
    run gets its limits written anew and its OOM-kill count read before and after.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.kind = ""
        self.version = 0
        self.groups: dict[str, str] = {}
        self.note: str | None = None
        self.free: list[_Slot] = []
        self.created = 0

    def setup(self, proc: str = "/proc/self") -> str:
        """Find or make this process's group; '' when complete, else what is missing (``kind`` says what works)."""
        with self.lock:
            if self.note is not None:
                return self.note
            try:
                v2, v1 = _cgroup_dirs(_read_text(f"{proc}/cgroup"), _read_text(f"{proc}/mountinfo"))
            except OSError as exc:
                self.note = f"cannot read this process's cgroup ({exc})"
                return self.note
            problems = []
            if v2 is not None:
                try:
                    controllers = set(_read_text(os.path.join(v2[0], "cgroup.controllers")).split())
                except OSError:
                    controllers = set()
                if {"memory", "pids"} <= controllers:
                    try:
                        group = self._make_v2_group(*v2)
                        self.groups, self.version, self.kind = {"memory": group, "pids": group}, 2, "v2"
                        self.note = ""
                        atexit.register(self.cleanup)
                        return ""
                    except OSError as exc:
                        problems.append(f"cgroup v2 at {v2[0]}: {exc}")
            for name, (directory, _) in sorted(v1.items()):
                try:
                    self.groups[name] = self._make_group(directory)
                except OSError as exc:
                    problems.append(f"cgroup v1 {name} at {directory}: {exc}")
            if self.groups:
                self.version, self.kind = 1, "v1 " + "+".join(sorted(self.groups))
                atexit.register(self.cleanup)
                problems += [f"no v1 {name} controller" for name in ("memory", "pids") if name not in self.groups]
            elif not problems:
                problems.append("no cgroup v2 hierarchy with the memory and pids controllers and no v1 memory/pids "
                                "hierarchy is mounted for this process")
            self.note = "; ".join(problems)
            return self.note

    @staticmethod
    def _make_group(base: str) -> str:
        _remove_stale_groups(base)
        group = os.path.join(base, f"{_CGROUP_PREFIX}{os.getpid()}")
        os.makedirs(group, exist_ok=True)
        return group

    def _make_v2_group(self, own: str, mount_point: str) -> str:
        """A group where memory and pids can be enabled for children.

        Our own cgroup can enable them for its children only if it holds no
        processes (the root cgroup is exempt); otherwise the group goes next to
        it, below the parent, which enables them already (we have them).
        """
        errors = []
        bases = [own] + ([os.path.dirname(own)] if os.path.normpath(own) != os.path.normpath(mount_point) else [])
        for base in bases:
            try:
                enabled = set(_read_text(os.path.join(base, "cgroup.subtree_control")).split())
                if not {"memory", "pids"} <= enabled:
                    _write_text(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
                group = self._make_group(base)
                enabled = set(_read_text(os.path.join(group, "cgroup.subtree_control")).split())
                if not {"memory", "pids"} <= enabled:
                    _write_text(os.path.join(group, "cgroup.subtree_control"), "+memory +pids")
                return group
            except OSError as exc:
                errors.append(f"{base}: {exc.strerror or exc}")
        raise OSError(errno.EACCES, "; ".join(errors))

    def acquire(self, limits: SandboxLimits) -> _Slot:
        if self.pid != os.getpid():  # a forked child: its parent's slots are not its to use
            with self.lock:
                self._reset()
            if self.setup() and not self.groups:
                raise SandboxError(f"no cgroup for the sandbox in this (forked) process: {self.note}")
        with self.lock:
            slot = self.free.pop() if self.free else None
            if slot is None:
                index, self.created = self.created, self.created + 1
        if slot is None:
            slot = _Slot({name: os.path.join(group, f"run{index}") for name, group in self.groups.items()})
            for directory in dict.fromkeys(slot.dirs.values()):
                os.makedirs(directory, exist_ok=True)
        try:
            self._configure(slot, limits)
        except OSError as exc:
            raise SandboxError(f"cannot set the limits of cgroup {slot.dirs}: {exc}") from exc
        slot.oom_before = self._oom_kills(slot)
        return slot

    def _configure(self, slot: _Slot, limits: SandboxLimits) -> None:
        memory = str((limits.memory_mb + limits.scratch_mb) * 1024 * 1024)
        pids = str(limits.max_processes + 1)  # + the launcher
        mem_dir, pids_dir = slot.dirs.get("memory"), slot.dirs.get("pids")
        if self.version == 2:
            assert mem_dir is not None
            _write_text(os.path.join(mem_dir, "memory.max"), memory)
            if os.path.exists(os.path.join(mem_dir, "memory.swap.max")):
                _write_text(os.path.join(mem_dir, "memory.swap.max"), "0")
        elif mem_dir is not None:
            memsw = os.path.join(mem_dir, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # memory+swap must never be below memory: lift it, set memory, then lower it
                _write_text(memsw, "-1")
            _write_text(os.path.join(mem_dir, "memory.limit_in_bytes"), memory)
            if os.path.exists(memsw):
                _write_text(memsw, memory)
        if pids_dir is not None:
            _write_text(os.path.join(pids_dir, "pids.max"), pids)

    def _oom_kills(self, slot: _Slot) -> int:
        mem_dir = slot.dirs.get("memory")
        if mem_dir is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in _read_text(os.path.join(mem_dir, name)).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    @staticmethod
    def _members(slot: _Slot) -> list[int]:
        pids: list[int] = []
        for path in slot.procs_files:
            try:
                pids += [int(p) for p in _read_text(path).split()]
            except (OSError, ValueError):
                pass
        return pids

    def release(self, slot: _Slot) -> int:
        """Wait until the slot is empty (kill what is left), put it back; return the run's OOM kills."""
        deadline = time.monotonic() + _DRAIN_GRACE_S
        killed = False
        while True:
            members = self._members(slot)
            if not members:
                break
            if time.monotonic() >= deadline:
                if killed:
                    # Still not empty: leave this slot out of the pool (removed at exit if it empties).
                    return max(self._oom_kills(slot) - slot.oom_before, 0)
                for pid in members:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                killed, deadline = True, time.monotonic() + _DRAIN_GRACE_S
            time.sleep(0.005)
        oom = max(self._oom_kills(slot) - slot.oom_before, 0)
        with self.lock:
            self.free.append(slot)
        return oom

    def cleanup(self) -> None:
        if self.pid != os.getpid():  # a forked child exiting: the groups are its parent's
            return
        with self.lock:
            for slot in self.free:
                for directory in dict.fromkeys(slot.dirs.values()):
                    try:
                        os.rmdir(directory)
                    except OSError:
                        pass
            self.free.clear()
            for group in dict.fromkeys(self.groups.values()):
                _remove_group(group)


_CGROUPS = _Cgroups()


# --------------------------------------------------------------------------- #
# seccomp filter
# --------------------------------------------------------------------------- #

# Per architecture: the AUDIT_ARCH value the kernel reports, and the syscall numbers the filter needs.
_SECCOMP_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {"add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "setns": 308,
                            "clone": 56, "clone3": 435}),
    "aarch64": (0xC00000B7, {"add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97, "setns": 268,
                             "clone": 220, "clone3": 435}),
}
# Fail with EPERM: the kernel keyring (state that outlives a run) and entering or creating namespaces.
_SECCOMP_DENIED = ("add_key", "request_key", "keyctl", "unshare", "setns")
_CLONE_NEWUSER = 0x10000000


def _seccomp_filter(machine: str) -> bytes | None:
    """The classic-BPF seccomp program for ``machine``, or ``None`` where it is not known.

    Foreign-ABI syscalls (i386 ``int 0x80`` on x86_64) kill the process, x32
    syscalls fail with ENOSYS, the calls in ``_SECCOMP_DENIED`` and ``clone``
    with ``CLONE_NEWUSER`` fail with EPERM, ``clone3`` (whose flags sit in
    memory the filter cannot read) with ENOSYS, so glibc falls back to ``clone``.
    """
    arch = _SECCOMP_ARCHES.get(machine)
    if arch is None or sys.byteorder != "little":
        return None
    audit_arch, nr = arch
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill_process, errno_base = 0x7FFF0000, 0x80000000, 0x00050000
    code: list[list] = [
        [ld_abs, 0, 0, 4],  # seccomp_data.arch
        [jeq, 1, 0, audit_arch],
        [ret, 0, 0, kill_process],
        [ld_abs, 0, 0, 0],  # seccomp_data.nr
    ]
    if machine == "x86_64":
        code.append([jge, "enosys", 0, 0x40000000])  # the x32 ABI
    code += [[jeq, "eperm", 0, nr[name]] for name in _SECCOMP_DENIED]
    code += [
        [jeq, "enosys", 0, nr["clone3"]],
        [jeq, 0, "allow", nr["clone"]],
        [ld_abs, 0, 0, 16],  # low half of args[0], the clone flags (little-endian)
        [jset, "eperm", "allow", _CLONE_NEWUSER],
    ]
    labels = {"allow": len(code), "eperm": len(code) + 1, "enosys": len(code) + 2}
    code += [[ret, 0, 0, allow], [ret, 0, 0, errno_base | errno.EPERM], [ret, 0, 0, errno_base | errno.ENOSYS]]
    out = bytearray()
    for i, (op, jt, jf, k) in enumerate(code):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += struct.pack("<HBBI", op, jt, jf, k)
    return bytes(out)


# --------------------------------------------------------------------------- #
# the minimal root view (namespace mode)
# --------------------------------------------------------------------------- #

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_RO_REMOUNT = _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV


def _covered_by_system_entries(path: str) -> bool:
    """Whether ``path`` is visible through the system entries (a needed path keeps its /usr part unhidden)."""
    return path.strip("/").split("/", 1)[0] in _VIEW_SYSTEM_ENTRIES


def _view_plan(iso: SandboxIsolation, limits: SandboxLimits, root: str) -> list[list]:
    """The operations (run by the launcher as root in the new mount namespace) that build the root view.

    ``root`` is the run's host directory; the view is assembled on a small
    tmpfs at ``root/view``, made read-only, moved onto ``/`` and chrooted into.
    """
    new = os.path.join(root, "view")
    plan: list[list] = [
        ["mount", None, "/", None, _MS_REC | _MS_PRIVATE, None],
        ["mount", "infra_pl_view", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=1024,mode=0755"],
    ]

    def bind_ro(path: str) -> None:
        plan.append(["mkdirs", new + path, 0o755])
        plan.append(["mount", path, new + path, None, _MS_BIND, None])
        plan.append(["mount", None, new + path, None, _RO_REMOUNT, None])

    for name in _VIEW_SYSTEM_ENTRIES:
        host = "/" + name
        if os.path.islink(host):
            plan.append(["symlink", os.readlink(host), new + host])
        elif os.path.isdir(host):
            bind_ro(host)
    needed = iso.view_paths
    for hidden in _VIEW_HIDDEN_USR:
        if os.path.isdir(hidden) and not any(p == hidden or p.startswith(hidden + "/") for p in needed):
            plan.append(["mount", "infra_pl_hidden", new + hidden, "tmpfs",
                         _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=4k,nr_inodes=2,mode=0755"])
    extra = sorted(p for p in needed if not _covered_by_system_entries(p) and os.path.isdir(p))
    for path in extra:
        if not any(path.startswith(other + "/") for other in extra):
            bind_ro(path)
    # /etc: a few synthetic files and the two the dynamic loader and time zone need.
    user = _account_name(iso.uid, pwd.getpwuid, "nobody") if iso.uid is not None else "nobody"
    plan += [
        ["mkdirs", new + "/etc", 0o755],
        ["write", new + "/etc/passwd",
         f"root:x:0:0:root:/root:/usr/sbin/nologin\n{user}:x:{iso.uid}:{iso.gid}:{user}:/tmp/work:/usr/sbin/nologin\n",
         0o644],
        ["write", new + "/etc/group", f"root:x:0:\n{user}:x:{iso.gid}:\n", 0o644],
        ["write", new + "/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644],
        ["write", new + "/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n", 0o644],
    ]
    if os.path.isfile("/etc/ld.so.cache"):
        plan.append(["write", new + "/etc/ld.so.cache", "", 0o644])
        plan.append(["mount", os.path.realpath("/etc/ld.so.cache"), new + "/etc/ld.so.cache", None, _MS_BIND, None])
        plan.append(["mount", None, new + "/etc/ld.so.cache", None, _RO_REMOUNT, None])
    if os.path.islink("/etc/localtime"):
        plan.append(["symlink", os.readlink("/etc/localtime"), new + "/etc/localtime"])
    elif os.path.isfile("/etc/localtime"):
        plan.append(["write", new + "/etc/localtime", "", 0o644])
        plan.append(["mount", "/etc/localtime", new + "/etc/localtime", None, _MS_BIND, None])
        plan.append(["mount", None, new + "/etc/localtime", None, _RO_REMOUNT, None])
    # /dev: the harmless character devices, bound from the host, and the usual links.
    plan.append(["mkdirs", new + "/dev/shm", 0o755])
    for name in _VIEW_DEVICES:
        if os.path.exists("/dev/" + name):
            plan.append(["write", new + "/dev/" + name, "", 0o644])
            plan.append(["mount", "/dev/" + name, new + "/dev/" + name, None, _MS_BIND, None])
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        plan.append(["symlink", target, new + "/dev/" + link])
    plan += [
        ["mkdirs", new + "/proc", 0o555],
        ["mount", "proc", new + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None],
        ["mkdirs", new + "/var/tmp", 0o755],
        ["mkdirs", new + "/tmp", 0o755],
        # The scratch tmpfs: bytes and inodes capped (+5 for what the sandbox puts there itself).
        ["mount", "infra_pl_sandbox", new + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV,
         f"size={limits.scratch_mb}m,nr_inodes={limits.scratch_files + 5},mode=1777"],
    ]
    for host_dir, private in (("/var/tmp", "/tmp/.var_tmp"), ("/dev/shm", "/tmp/.dev_shm")):
        plan.append(["mkdirs", new + private, 0o1777])
        plan.append(["mount", new + private, new + host_dir, None, _MS_BIND, None])
    owner = (iso.uid, iso.gid) if iso.uid is not None else (-1, -1)
    plan += [
        ["mkdirs", new + "/tmp/work", 0o700],
        ["copy", os.path.join(root, "work", "main.py"), new + "/tmp/work/main.py", 0o600],
        ["chown", new + "/tmp/work", *owner],
        ["chown", new + "/tmp/work/main.py", *owner],
        ["mount", None, new, None, _RO_REMOUNT, None],
        ["chroot", new],
    ]
    return plan


def _account_name(ident: int | None, lookup: Callable, default: str) -> str:
    try:
        return lookup(ident).pw_name
    except (KeyError, TypeError):
        return default

# --------------------------------------------------------------------------- #
# process launch
# --------------------------------------------------------------------------- #

# The launcher (infra_pl/eval/sandbox_launcher.py, stdlib only, importing nothing of infra_pl) runs
# as a script with the sandbox interpreter, ``-I -S``: it builds the root view, forks and execs the
# program under its limits, enforces the wall-clock limit, cleans up the whole process tree and
# reports the outcome on the status pipe; see its docstring.
_LAUNCHER_PATH = str(Path(__file__).resolve().with_name("sandbox_launcher.py"))


def _launcher_args(
    iso: SandboxIsolation,
    limits: SandboxLimits,
    status_fd: int,
    workdir: str,
    verdict_fd: int = -1,
    cgroup_procs: Sequence[str] = (),
    view: list[list] | None = None,
) -> list[str]:
    mib = 1024 * 1024
    machine = platform.machine()
    seccomp = _seccomp_filter(machine) if iso.seccomp else None
    if iso.seccomp and seccomp is None:
        raise SandboxError(f"no seccomp filter for {machine}")
    config = {
        "status_fd": status_fd,
        "uid": iso.uid if iso.uid is not None else -1,
        "gid": iso.gid if iso.gid is not None else -1,
        "workdir": workdir,
        "script": os.path.join(workdir, "main.py"),
        "python": iso.interpreter,
        "wall": float(limits.wall_timeout_s),
        "cpu": limits.cpu_time_s,
        "mem": limits.memory_mb * mib,
        "fsize": limits.max_file_mb * mib,
        "nproc": limits.max_processes,
        "nofile": limits.max_open_files,
        "verdict_fd": verdict_fd,
        "cgroup_procs": list(cgroup_procs),
        "oom_first": bool(cgroup_procs),
        "view": view,
        "seccomp": seccomp.hex() if seccomp else "",
        "keyctl": _SECCOMP_ARCHES.get(machine, (0, {}))[1].get("keyctl", -1),
    }
    return [iso.interpreter, "-I", "-S", _LAUNCHER_PATH, json.dumps(config)]


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


def _classify(
    report: str, sup: _Supervisor, limits: SandboxLimits, oom_kills: int = 0
) -> tuple[str, int | None, str]:
    """Map the launcher's report and the captured stderr to (status, returncode, sandbox note).

    ``oom_kills``: processes the kernel killed because the run's cgroup reached its memory limit.
    """
    stderr_text = bytes(sup.stderr).decode("utf-8", "replace")
    oom_note = (
        f"[sandbox] the run's memory limit of {limits.memory_mb + limits.scratch_mb} MiB (memory_mb + scratch_mb, "
        f"all its processes and the kernel memory they use) was reached: {oom_kills} process(es) OOM-killed"
    )
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
    if kind == "setupfail":
        raise SandboxError(f"the sandbox could not set up the run: {rest}")
    if kind == "startfail":
        return "error", None, f"[sandbox] the program could not be started: {rest}"
    fields = rest.split()
    if kind not in ("exit", "signal") or len(fields) != 2:
        if oom_kills:
            return "memory", None, oom_note
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
        if oom_kills:
            return "memory", -sig, oom_note
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
    if oom_kills:
        return "memory", code, oom_note
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
    slot: _Slot | None = None
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
        if iso.cgroup:
            slot = _CGROUPS.acquire(limits)
        cgroup_procs = slot.procs_files if slot is not None else []
        if iso.namespaces:
            os.mkdir(os.path.join(root, "view"), 0o755)
            assert iso.unshare is not None
            argv = [
                iso.unshare,
                "--mount",
                "--net",
                "--pid",
                "--ipc",
                "--fork",
                "--kill-child",
                *_launcher_args(
                    iso, limits, status_w, "/tmp/work", verdict_w, cgroup_procs, _view_plan(iso, limits, root)
                ),
            ]
        else:
            argv = _launcher_args(iso, limits, status_w, workdir, verdict_w, cgroup_procs)
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
        oom_kills = 0
        if slot is not None:
            oom_kills, slot = _CGROUPS.release(slot), None
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
        status, returncode, note = _classify(report, sup, limits, oom_kills)
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
        if slot is not None:
            _CGROUPS.release(slot)
        for fd in (status_r, status_w, verdict_r, verdict_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


_announced: list[str] = []


def announce_isolation(emit: Callable[[str], None] | None = None) -> list[str]:
    """Say once per process, loudly, which isolation layers are missing here; meant for the start of ``validate``.

    Returns the missing layers (one line each, with the reason; empty when the
    sandbox has every layer).  The notice goes to ``emit`` (default: stderr) the
    first time only; later calls just return the list.
    """
    iso = sandbox_isolation()
    missing = list(iso.missing)
    if missing and not _announced:
        layers = 4  # unprivileged user, namespaces + root view, cgroup, seccomp (rlimits are always on)
        text = "\n".join(
            [
                (
                    f"[infra-pl] WARNING: the code sandbox has REDUCED ISOLATION on this machine: {len(missing)} "
                    f"of {layers} isolation layers missing (rlimits still apply)"
                ),
                *(f"[infra-pl]   missing {line}" for line in missing),
                (
                    "[infra-pl]   model-generated code runs with these gaps; to evaluate isolated, see README.md, "
                    "'Running evaluation isolated'"
                ),
            ]
        )
        _announced.append(text)
        (emit or (lambda message: print(message, file=sys.stderr, flush=True)))(text)
    return missing


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
