"""Issue 18 item 7, "isolation gaps": each gap demonstrated by a program that used to get through.

Host Unix sockets, memory summed over processes, inode floods, the kernel keyring, user
namespaces, host directories -- and the loud notice when a layer is missing.  Tests of a
layer that this machine cannot provide are skipped, naming the reason.
"""

import ctypes
import errno
import json
import os
import platform
import secrets
import shutil
import socket
import tempfile
from dataclasses import replace

import pytest

from infra_pl.eval import sandbox
from infra_pl.eval.sandbox import (
    SandboxIsolation,
    SandboxLimits,
    announce_isolation,
    run_python,
    sandbox_isolation,
)

ISO = sandbox_isolation()
FAST = SandboxLimits(wall_timeout_s=5.0, cpu_time_s=5)
needs_namespaces = pytest.mark.skipif(not ISO.namespaces, reason=f"namespace isolation unavailable: {ISO.note}")
needs_cgroup = pytest.mark.skipif(
    "memory" not in ISO.cgroup and ISO.cgroup != "v2", reason=f"no memory cgroup here: {ISO.missing}"
)
needs_seccomp = pytest.mark.skipif(not ISO.seccomp, reason=f"no seccomp filter here: {ISO.missing}")
SYSCALLS = sandbox._SECCOMP_ARCHES.get(platform.machine(), (0, {}))[1]


def _run(source: str, limits: SandboxLimits = FAST, iso: SandboxIsolation = ISO):
    return sandbox._run(source, limits, "", iso)


# --------------------------------------------------------------------------- host Unix-domain sockets


@needs_namespaces
def test_host_unix_sockets_are_unreachable():
    """A listener in /run answered the sandboxed program; now neither path nor abstract sockets are reachable."""
    if not os.access("/run", os.W_OK):
        pytest.skip("/run is not writable here")
    token = secrets.token_hex(6)
    path = f"/run/infra_pl_test_{token}.sock"
    listeners = []
    try:
        for address in (path, f"\0infra_pl_test_{token}"):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(address)
            server.listen(8)
            listeners.append(server)
        os.chmod(path, 0o777)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)  # guard: the listener answers on the host
        probe.close()
        source = (
            "import socket\n"
            f"for address in ({path!r}, {'/var' + path!r}, '\\0infra_pl_test_{token}'):\n"
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "    try:\n"
            "        s.connect(address)\n"
            "        print('connected')\n"
            "    except OSError as exc:\n"
            "        print(type(exc).__name__)\n"
            "import os\nprint(os.path.exists('/run'), os.path.exists('/var/run'))\n"
        )
        result = _run(source)
        assert result.status == "ok", result.stderr
        lines = result.stdout.split()
        assert "connected" not in lines, result.stdout
        assert lines[:2] == ["FileNotFoundError", "FileNotFoundError"]  # no /run, no /var/run
        assert lines[2] == "ConnectionRefusedError"  # abstract sockets belong to the network namespace
        assert lines[3:] == ["False", "False"]
    finally:
        for server in listeners:
            server.close()
        if os.path.exists(path):
            os.unlink(path)


# --------------------------------------------------------------------------- memory over all processes


MEMORY_SPREAD = """
import os, sys, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        data = b'x' * (200 * 1024 * 1024)  # written, so resident
        time.sleep(2.0)
        os._exit(0)
    children.append(pid)
held = 0
for pid in children:
    _, status = os.waitpid(pid, 0)
    held += os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
print('held', held)
sys.exit(0 if held == len(children) else 1)
"""


def _memory_modes():
    modes = [pytest.param(ISO, id="as-probed")]
    if ISO.namespaces:
        modes.append(pytest.param(replace(ISO, namespaces=False, view_paths=()), id="without-namespaces"))
    return modes


@needs_cgroup
@pytest.mark.parametrize("iso", _memory_modes())
def test_memory_is_bounded_over_all_processes(iso):
    """4 children x 200 MiB each stayed under a 256 MiB per-process limit: 800 MiB held. Now the run is capped."""
    limits = SandboxLimits(memory_mb=256, scratch_mb=64, wall_timeout_s=15.0, cpu_time_s=10)
    result = _run(MEMORY_SPREAD, limits, iso)
    held = int(result.stdout.split()[-1]) if result.stdout.startswith("held") else 0
    assert held <= 1, result  # (256 + 64) MiB for the whole run: no two children fit
    assert result.status == "memory", result
    assert "OOM-killed" in result.stderr
    # and the slot is clean for the next run
    assert _run("print(sum(range(10)))", FAST, iso).stdout == "45\n"


# --------------------------------------------------------------------------- inodes


@needs_namespaces
def test_scratch_files_are_capped_in_number():
    """411,000 empty files in 3.5 s grew kernel memory by 410 MiB: bytes were capped, inodes not."""
    source = (
        "import errno, os\n"
        "made = 0\n"
        "dirs = ['.', '/tmp', '/var/tmp', '/dev/shm']\n"
        "try:\n"
        "    for i in range(20000):\n"
        "        open(os.path.join(dirs[i % 4], 'f%d' % i), 'w').close()\n"
        "        made += 1\n"
        "    print(made, 'none')\n"
        "except OSError as exc:\n"
        "    print(made, errno.errorcode[exc.errno])\n"
    )
    result = _run(source, SandboxLimits(scratch_files=500, wall_timeout_s=10.0, cpu_time_s=10))
    assert result.status == "ok", result.stderr
    made, error = result.stdout.split()
    assert int(made) <= 500 and error == "ENOSPC", result.stdout


def test_scratch_files_validated():
    with pytest.raises(ValueError, match="scratch_files"):
        SandboxLimits(scratch_files=0)


# --------------------------------------------------------------------------- kernel keyring


KEYRING = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
nr = {nr}
def call(name, *args):
    value = libc.syscall(ctypes.c_long(nr[name]), *args)
    return value if value >= 0 else errno.errorcode[ctypes.get_errno()]
out = {{}}
out["get_session"] = call("keyctl", ctypes.c_long(0), ctypes.c_long(-3), ctypes.c_long(0))
out["get_user"] = call("keyctl", ctypes.c_long(0), ctypes.c_long(-4), ctypes.c_long(0))
out["add"] = call("add_key", b"user", b"{description}", b"left by run 1", ctypes.c_size_t(13), ctypes.c_long(-4))
out["search"] = call("keyctl", ctypes.c_long(10), ctypes.c_long(-4), b"user", b"{description}", ctypes.c_long(0))
out["request"] = call("request_key", b"user", b"{description}", None, ctypes.c_long(0))
print(json.dumps(out))
"""


@needs_seccomp
def test_kernel_keyring_keeps_nothing_between_runs():
    """A key added to the sandbox user's keyring in one run was found by the next."""
    description = f"infra_pl_test_{secrets.token_hex(6)}"
    source = KEYRING.format(nr=SYSCALLS, description=description)
    first = _run(source)
    second = _run(source)
    try:
        for result in (first, second):
            assert result.status == "ok", result.stderr
            seen = json.loads(result.stdout)
            assert seen == dict.fromkeys(("get_session", "get_user", "add", "search", "request"), "EPERM"), seen
    finally:
        added = json.loads(first.stdout).get("add") if first.status == "ok" else None
        if isinstance(added, int):  # only before the fix: remove the key again
            _run(f"import ctypes\nctypes.CDLL(None).syscall({SYSCALLS['keyctl']}, 21, {added})")


def test_program_starts_in_a_fresh_session_keyring_even_without_seccomp():
    """The parent's session keyring (possessed by its children, whatever their uid) is not inherited."""
    if "keyctl" not in SYSCALLS:
        pytest.skip(f"no syscall table for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    mine = libc.syscall(ctypes.c_long(SYSCALLS["keyctl"]), ctypes.c_long(0), ctypes.c_long(-3), ctypes.c_long(0))
    if mine < 0:
        pytest.skip(f"no session keyring here ({os.strerror(ctypes.get_errno())})")
    source = (
        "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.syscall.restype = ctypes.c_long\n"
        f"print(libc.syscall(ctypes.c_long({SYSCALLS['keyctl']}), ctypes.c_long(0), ctypes.c_long(-3), "
        "ctypes.c_long(0)))\n"
    )
    plain = replace(ISO, seccomp=False, cgroup="", namespaces=False, view_paths=())
    result = _run(source, FAST, plain)
    assert result.status == "ok", result.stderr
    assert int(result.stdout) not in (mine, -1), (mine, result.stdout)


# --------------------------------------------------------------------------- user namespaces


@needs_seccomp
def test_user_namespaces_are_unavailable_but_threads_and_subprocesses_work():
    """unshare(CLONE_NEWUSER) succeeded for the sandboxed program."""
    source = (
        "import ctypes, errno, os, subprocess, sys, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "out = []\n"
        "for flags in (0x10000000, 0x10000000 | 0x00020000):  # CLONE_NEWUSER, + CLONE_NEWNS\n"
        "    out.append(errno.errorcode.get(ctypes.get_errno()) if libc.unshare(flags) else 'created')\n"
        "libc.syscall.restype = ctypes.c_long\n"
        f"pid = libc.syscall({SYSCALLS.get('clone', -1)}, ctypes.c_ulong(0x10000000 | 17), None, None, None, None)\n"
        "if pid == 0:\n    os._exit(0)\n"
        "out.append(errno.errorcode.get(ctypes.get_errno()) if pid < 0 else 'created')\n"
        "box = []\nt = threading.Thread(target=box.append, args=(1,)); t.start(); t.join()\n"
        "out.append(subprocess.run([sys.executable, '-c', 'print(7)'], capture_output=True, text=True).stdout.strip())\n"
        "out.append(subprocess.run(['unshare', '--user', 'true'], capture_output=True).returncode != 0)\n"
        "print(out, box)\n"
    )
    result = _run(source)
    assert result.status == "ok", result.stderr
    assert result.stdout == "['EPERM', 'EPERM', 'EPERM', '7', True] [1]\n"


def test_seccomp_filter_program():
    for machine in sandbox._SECCOMP_ARCHES:
        program = sandbox._seccomp_filter(machine)
        assert program is not None and len(program) % 8 == 0 and len(program) // 8 < 64
    assert sandbox._seccomp_filter("mips") is None


# --------------------------------------------------------------------------- host directories


@needs_namespaces
def test_only_a_minimal_read_only_view_of_the_host_is_visible():
    """Host directories other than the four hidden ones (/work, /home, /root, /srv) were readable."""
    base = next((d for d in ("/opt", "/var/lib", "/mnt", "/media") if os.access(d, os.W_OK)), None)
    if base is None:
        pytest.skip("no writable host directory to place a marker in")
    marker_dir = tempfile.mkdtemp(prefix="infra_pl_marker_", dir=base)
    try:
        os.chmod(marker_dir, 0o755)
        marker = os.path.join(marker_dir, "secret.txt")
        with open(marker, "w") as f:
            f.write("host data")
        os.chmod(marker, 0o644)
        source = (
            "import json, os\n"
            "def ls(path):\n"
            "    try:\n        return sorted(os.listdir(path))\n"
            "    except OSError as exc:\n        return type(exc).__name__\n"
            f"print(json.dumps({{'marker': os.path.exists({marker!r}), 'root': ls('/'), 'etc': ls('/etc'),\n"
            "    'var': ls('/var'), 'usr_local': ls('/usr/local'), 'sys': ls('/sys'), 'dev': ls('/dev'),\n"
            "    'writable': [d for d in ('/', '/usr', '/etc', '/dev') if os.access(d, os.W_OK)]}))\n"
        )
        result = _run(source)
        assert result.status == "ok", result.stderr
        seen = json.loads(result.stdout)
        assert seen["marker"] is False
        extra_tops = {p.strip("/").split("/")[0] for p in ISO.view_paths}
        allowed = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr", "var"}
        assert set(seen["root"]) <= allowed | extra_tops, seen["root"]
        assert not {"run", "home", "root", "work", "srv", "opt", "mnt", "sys", "boot", "media"} & (
            set(seen["root"]) - extra_tops
        )
        assert set(seen["etc"]) <= {"passwd", "group", "hosts", "nsswitch.conf", "ld.so.cache", "localtime"}
        assert seen["var"] == ["tmp"] and seen["sys"] == "FileNotFoundError"
        if not any(p.startswith("/usr/local") for p in ISO.view_paths):
            assert seen["usr_local"] == []
        assert set(seen["dev"]) <= {"null", "zero", "full", "random", "urandom", "fd", "stdin", "stdout", "stderr",
                                    "shm"}
        assert seen["writable"] == []
    finally:
        shutil.rmtree(marker_dir, ignore_errors=True)


# --------------------------------------------------------------------------- the notice at validate start


def test_reduced_isolation_is_announced_once(monkeypatch):
    reduced = replace(ISO, cgroup="", seccomp=False, missing=("cgroup: none here", "seccomp: none here"))
    monkeypatch.setattr(sandbox, "_isolation_cache", reduced)
    monkeypatch.setattr(sandbox, "_announced", [])
    said = []
    assert announce_isolation(said.append) == ["cgroup: none here", "seccomp: none here"]
    assert announce_isolation(said.append) == ["cgroup: none here", "seccomp: none here"]
    assert len(said) == 1  # once per process
    assert "REDUCED ISOLATION" in said[0] and "2 of 4 isolation layers missing" in said[0]
    assert "cgroup: none here" in said[0] and "Running evaluation isolated" in said[0]
    monkeypatch.setattr(sandbox, "_isolation_cache", replace(ISO, missing=()))
    monkeypatch.setattr(sandbox, "_announced", [])
    assert announce_isolation(said.append) == [] and len(said) == 1  # nothing to say


def test_without_root_the_notice_names_what_is_missing(monkeypatch, capsys):
    if os.geteuid() != 0:
        pytest.skip("already not root: see the real notice")
    monkeypatch.setattr(sandbox, "_isolation_cache", None)
    monkeypatch.setattr(sandbox, "_announced", [])
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.warns(RuntimeWarning, match="not running as root"):
        iso = sandbox_isolation()
    monkeypatch.undo()
    assert not iso.namespaces and iso.uid is None
    text = " ".join(iso.missing)
    assert "unprivileged user: not running as root" in text and "namespaces: not running as root" in text
    monkeypatch.setattr(sandbox, "_isolation_cache", iso)
    monkeypatch.setattr(sandbox, "_announced", [])
    announce_isolation()
    err = capsys.readouterr().err
    assert "REDUCED ISOLATION" in err and "not running as root" in err


# --------------------------------------------------------------------------- cgroup discovery


def test_cgroup_dirs_are_found_for_v1_v2_and_bind_mounted_roots():
    v1 = sandbox._cgroup_dirs(
        "4:memory:/jobs/a\n8:pids:/\n0::/\n",
        "30 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "31 25 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        "32 25 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
    )
    assert v1 == (
        ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified"),
        {"memory": ("/sys/fs/cgroup/memory/jobs/a", "/sys/fs/cgroup/memory"),
         "pids": ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids")},
    )
    # a container that sees only its own subtree, mounted at /sys/fs/cgroup
    v2 = sandbox._cgroup_dirs(
        "0::/kubepods/pod1/c1\n",
        "40 30 0:30 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
    )
    assert v2 == (("/sys/fs/cgroup/c1", "/sys/fs/cgroup"), {})
    # our cgroup outside the mounted subtree: unusable
    assert sandbox._cgroup_dirs("0::/other\n", "40 30 0:30 /mine /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n") == (
        None, {})


def test_cgroup_v2_group_goes_next_to_a_cgroup_that_holds_processes(monkeypatch, tmp_path):
    """Enabling controllers below a cgroup with processes fails (EBUSY): the group goes below its parent."""
    own = tmp_path / "service"
    own.mkdir()
    writes = []

    def fake_read(path):
        return "memory pids" if os.path.dirname(path) == str(tmp_path) else ""

    def fake_write(path, text):
        if path == str(own / "cgroup.subtree_control"):
            raise OSError(errno.EBUSY, "Device or resource busy")
        writes.append((path, text))

    monkeypatch.setattr(sandbox, "_read_text", fake_read)
    monkeypatch.setattr(sandbox, "_write_text", fake_write)
    group = sandbox._Cgroups()._make_v2_group(str(own), str(tmp_path.parent))
    assert group == str(tmp_path / f"{sandbox._CGROUP_PREFIX}{os.getpid()}")
    assert writes == [(os.path.join(group, "cgroup.subtree_control"), "+memory +pids")]


@needs_cgroup
def test_a_forked_process_gets_its_own_cgroup_group():
    """Slots are per process: a forked child must not hand out (or clean up) its parent's."""
    read_r, read_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            result = run_python("print(open('/proc/self/cgroup').read())", FAST)
            os.write(read_w, result.stdout.encode())
        finally:
            os._exit(0)
    os.close(read_w)
    with os.fdopen(read_r) as f:
        seen = f.read()
    os.waitpid(pid, 0)
    for group in set(sandbox._CGROUPS.groups.values()):  # the child left with os._exit: its group is stale
        sandbox._remove_stale_groups(os.path.dirname(group))
        assert not os.path.exists(os.path.join(os.path.dirname(group), f"{sandbox._CGROUP_PREFIX}{pid}"))
    assert f"/{sandbox._CGROUP_PREFIX}{pid}/run0" in seen
    mine = run_python("print(open('/proc/self/cgroup').read())", FAST).stdout
    assert f"/{sandbox._CGROUP_PREFIX}{os.getpid()}/" in mine
