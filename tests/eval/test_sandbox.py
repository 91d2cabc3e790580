"""The sandbox's guarantees, demonstrated with hostile programs.

Every test is bounded by the sandbox's own (small) limits; the namespace-only
guarantees are skipped where the namespaces are not available.
"""

import ast
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

import infra_pl
from infra_pl.eval import sandbox
from infra_pl.eval.sandbox import (
    STATUSES,
    SandboxIsolation,
    SandboxLimits,
    check_code,
    check_many,
    run_python,
    sandbox_isolation,
)

ISO = sandbox_isolation()
IS_ROOT = os.geteuid() == 0
needs_namespaces = pytest.mark.skipif(not ISO.namespaces, reason=f"namespace isolation unavailable: {ISO.note}")
needs_uid_drop = pytest.mark.skipif(ISO.uid is None, reason="not root: programs run as the current user")
PROJECT_ROOT = Path(infra_pl.__file__).resolve().parents[1]
FAST = SandboxLimits(wall_timeout_s=3.0, cpu_time_s=3)


def uid_processes(uid: int) -> set[int]:
    """PIDs of processes (zombies included) whose real uid is ``uid``, read from /proc."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid:  # zombies included: they count towards RLIMIT_NPROC
            pids.add(int(entry))
    return pids


def assert_no_stray_processes(uid: int, before: set[int], within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        stray = uid_processes(uid) - before
        if not stray:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"stray sandbox processes still alive: {sorted(stray)}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- basics


def test_statuses_documented():
    assert set(STATUSES) == {"ok", "error", "timeout", "memory", "file_size", "killed", "output_limit"}


def test_limits_validated():
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=0)
    with pytest.raises(TypeError, match="cpu_time_s"):
        SandboxLimits(cpu_time_s=1.5)  # type: ignore[arg-type]


def test_hello_world_and_stdin():
    result = run_python("import sys\nprint(sys.stdin.read()[::-1])", stdin="abc")
    assert result.status == "ok" and result.passed
    assert result.returncode == 0
    assert result.stdout == "cba\n"
    assert result.duration_s < 3


def test_exception_is_error():
    result = run_python("raise ValueError('boom')")
    assert result.status == "error" and not result.passed
    assert result.returncode == 1
    assert "ValueError: boom" in result.stderr


def test_syntax_error_is_error():
    result = run_python("def f(:\n  pass")
    assert result.status == "error"
    assert "SyntaxError" in result.stderr


def test_only_stdlib_is_importable():
    result = run_python("import json, collections\ntry:\n    import torch\nexcept ImportError:\n    print('no torch')")
    assert result.status == "ok" and result.stdout == "no torch\n"


def test_launcher_runs_as_an_isolated_stdlib_only_script():
    """The launcher is its own file, started with ``-I -S`` (no site-packages, not its own directory on sys.path)."""
    argv = sandbox._launcher_args(ISO, FAST, status_fd=3, workdir="/tmp/work")
    assert argv[:4] == [ISO.interpreter, "-I", "-S", sandbox._LAUNCHER_PATH]
    assert json.loads(argv[4])["script"] == "/tmp/work/main.py"
    launcher = Path(sandbox._LAUNCHER_PATH)
    assert launcher.name == "sandbox_launcher.py" and launcher.is_file()
    imported = set()
    for node in ast.walk(ast.parse(launcher.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or ".").split(".")[0])
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


@needs_uid_drop
def test_runs_as_unprivileged_user():
    result = run_python("import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())")
    assert result.stdout.split(" ", 3) == [str(ISO.uid), str(ISO.uid), str(ISO.gid), "[]\n"]


def test_environment_does_not_leak(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    result = run_python("import os, json\nprint(json.dumps(dict(os.environ)))")
    assert result.status == "ok"
    env = json.loads(result.stdout)
    assert "SECRET_TOKEN" not in env
    assert set(env) == {"PATH", "HOME", "LANG", "PYTHONDONTWRITEBYTECODE"}
    assert env["PATH"] == "/usr/bin:/bin"


# --------------------------------------------------------------------------- check_code / check_many


def test_check_code_correct_and_wrong():
    good = check_code("def f(x):\n    return 5 * x", ["assert f(2) == 10", "assert f(0) == 0"])
    assert good.passed, good.stderr
    bad = check_code("def f(x):\n    return 4 * x", ["assert f(0) == 0", "assert f(2) == 10"])
    assert bad.status == "error"
    assert "test 1 failed: assert f(2) == 10" in bad.stderr


def test_check_code_setup_and_main_block():
    program = (
        "def f(xs: List[int]) -> int:\n    return sum(xs)\n\n"
        "if __name__ == '__main__':\n    print(f(list(map(int, input().split()))))\n"
    )
    result = check_code(program, ["assert f([1, 2]) == 3"], setup_code="from typing import List")
    assert result.passed, result.stderr  # the __main__ block (which reads stdin) did not run
    assert result.stdout == ""


def test_check_code_cannot_skip_tests_by_exiting():
    early_exit = check_code("def f():\n    return 0\nexit(0)", ["assert f() == 1"])
    assert early_exit.status == "error" and "before the tests ran" in early_exit.stderr
    hard_exit = check_code("import os\ndef f():\n    return 0\nos._exit(0)", ["assert f() == 1"])
    assert hard_exit.status == "error" and "before all tests ran" in hard_exit.stderr


def test_check_code_syntax_error_and_bad_tests_argument():
    assert check_code("def f(:", ["assert f() == 1"]).status == "error"
    with pytest.raises(ValueError, match="at least one test"):
        check_code("x = 1", [])
    with pytest.raises(TypeError):
        check_code("x = 1", "assert x == 1")


def test_check_many_keeps_order():
    jobs = [
        ("def f(x):\n    return x + 1", ["assert f(1) == 2"], ""),
        ("def f(x):\n    return x", ["assert f(1) == 2"], ""),
        ("def f(x):\n    return X + x", ["assert f(1) == 2"], "X = 1"),
    ]
    results = check_many(jobs, limits=FAST, workers=2)
    assert [r.passed for r in results] == [True, False, True]
    with pytest.raises(ValueError, match="job 0"):
        check_many([("x = 1", ["assert x"])])  # type: ignore[list-item]


# --------------------------------------------------------------------------- resource limits


def test_infinite_loop_times_out():
    limits = SandboxLimits(wall_timeout_s=1.0, cpu_time_s=30)
    t0 = time.monotonic()
    result = run_python("while True:\n    pass", limits)
    assert result.status == "timeout"
    assert result.returncode is None
    assert time.monotonic() - t0 < limits.wall_timeout_s + 2


def test_sleeping_program_times_out_with_its_children():
    # A child that starts its own session escapes a process-group kill; the PID
    # namespace must take it down anyway (fallback mode cannot, hence skipped).
    if not ISO.namespaces:
        pytest.skip("setsid escapes the process-group kill without a PID namespace")
    before = uid_processes(ISO.uid) if ISO.uid is not None else set()
    source = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)"
    t0 = time.monotonic()
    result = run_python(source, SandboxLimits(wall_timeout_s=1.0))
    assert result.status == "timeout"
    assert time.monotonic() - t0 < 3
    if ISO.uid is not None:
        assert_no_stray_processes(ISO.uid, before)


def test_background_children_do_not_outlive_the_program():
    before = uid_processes(ISO.uid) if ISO.uid is not None else set()
    source = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint('parent done')"
    t0 = time.monotonic()
    result = run_python(source, FAST)
    assert result.status == "ok" and result.stdout == "parent done\n"
    assert time.monotonic() - t0 < FAST.wall_timeout_s  # did not wait for the sleeping child
    if ISO.uid is not None:
        assert_no_stray_processes(ISO.uid, before)


def test_cpu_time_limit():
    limits = SandboxLimits(wall_timeout_s=10.0, cpu_time_s=1)
    t0 = time.monotonic()
    result = run_python("while True:\n    pass", limits)
    assert result.status == "timeout"
    assert "CPU time limit" in result.stderr
    assert time.monotonic() - t0 < 6


FORK_BOMBS = {
    "plain": "import os\nwhile True:\n    os.fork()",
    # swallows the EAGAIN from the process limit and keeps every slot busy until killed
    "persistent": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
}


@needs_uid_drop
@pytest.mark.parametrize("kind", sorted(FORK_BOMBS))
def test_fork_bomb_is_contained(kind):
    before = uid_processes(ISO.uid)
    limits = SandboxLimits(wall_timeout_s=2.0, cpu_time_s=3, max_processes=16, memory_mb=128)
    t0 = time.monotonic()
    result = run_python(FORK_BOMBS[kind], limits)
    elapsed = time.monotonic() - t0
    assert not result.passed
    assert result.status in {"error", "timeout", "output_limit", "killed"}
    assert elapsed < limits.wall_timeout_s + 2
    assert_no_stray_processes(ISO.uid, before)  # zombies included
    # and the machine is still usable for the next program
    assert run_python("print(1)").passed


def test_memory_hog_bytearray():
    result = run_python("b = bytearray(2 * 1024 ** 3)\nprint(len(b))", SandboxLimits(memory_mb=256))
    assert result.status == "memory", result
    assert "MemoryError" in result.stderr


def test_memory_hog_growing_list():
    source = "chunks = []\nwhile True:\n    chunks.append(bytearray(1024 * 1024))"
    result = run_python(source, SandboxLimits(memory_mb=256, wall_timeout_s=5.0))
    assert result.status == "memory", result


def test_file_size_bomb():
    source = "with open('big.bin', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 1024 * 1024)"
    result = run_python(source, SandboxLimits(max_file_mb=1))
    assert result.status == "file_size", result
    assert "File too large" in result.stderr


def test_file_size_bomb_signal_path():
    # With SIGXFSZ at its default action the kernel kills the process instead.
    source = (
        "import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
        "with open('big.bin', 'wb', buffering=0) as f:\n    for _ in range(100):\n        f.write(b'x' * 1024 * 1024)"
    )
    result = run_python(source, SandboxLimits(max_file_mb=1))
    assert result.status == "file_size", result


def test_huge_output_is_capped():
    limits = SandboxLimits(max_output_bytes=64 * 1024)
    t0 = time.monotonic()
    result = run_python("print('x' * 10 ** 8)", limits)
    assert result.status == "output_limit"
    assert len(result.stdout.encode()) <= limits.max_output_bytes
    assert time.monotonic() - t0 < 5


def test_print_loop_is_capped():
    limits = SandboxLimits(max_output_bytes=4096, wall_timeout_s=5.0)
    t0 = time.monotonic()
    result = run_python("import sys\nwhile True:\n    sys.stderr.write('y' * 100 + '\\n')", limits)
    assert result.status == "output_limit"
    assert "stderr exceeded" in result.stderr
    assert len(result.stderr.encode()) <= limits.max_output_bytes + 200  # + the sandbox's note
    assert time.monotonic() - t0 < 3


# --------------------------------------------------------------------------- file system and network


def test_cannot_write_into_the_project():
    target = PROJECT_ROOT / f"SHOULD_NOT_EXIST_{secrets.token_hex(4)}"
    result = run_python(f"open({str(target)!r}, 'w').write('escaped')")
    assert result.status == "error"
    assert not target.exists()


@needs_namespaces
def test_project_is_not_even_readable():
    marker = PROJECT_ROOT / "pyproject.toml"
    assert marker.exists()
    result = run_python(f"import os\nprint(os.path.exists({str(marker)!r}))")
    assert result.stdout == "False\n"


@needs_namespaces
def test_tmp_and_other_world_writable_dirs_are_private():
    token = secrets.token_hex(6)
    targets = [Path(d) / f"escape_test_{token}" for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d)]
    source = f"for p in {[str(t) for t in targets]!r}:\n    open(p, 'w').write('escaped')\nprint('written')"
    result = run_python(source)
    assert result.status == "ok", result.stderr  # writes succeed, but only inside the sandbox ...
    assert result.stdout == "written\n"
    for target in targets:  # ... and leave nothing behind on the host
        assert not target.exists(), target


def test_working_directory_is_removed_afterwards(monkeypatch):
    created = []
    real_mkdtemp = sandbox.tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        created.append(real_mkdtemp(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(sandbox.tempfile, "mkdtemp", recording_mkdtemp)
    result = run_python("open('out.txt', 'w').write('x')\nprint(open('out.txt').read())")
    assert result.stdout == "x\n"
    assert len(created) == 1 and not os.path.exists(created[0])


@needs_namespaces
def test_no_network():
    source = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 22), timeout=1)\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('blocked', type(exc).__name__)\n"
        "print([name for _, name in socket.if_nameindex()])\n"
    )
    result = run_python(source, FAST)
    assert result.status == "ok", result.stderr
    first, second = result.stdout.splitlines()
    assert first.startswith("blocked")
    assert second == "['lo']"  # a fresh network namespace: no real interfaces


@needs_namespaces
def test_own_pid_namespace():
    result = run_python("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    pids = json.loads(result.stdout)
    assert len(pids) <= 3  # the launcher (init) and the program itself


# --------------------------------------------------------------------------- fallback mode


@needs_uid_drop
def test_fallback_mode_still_drops_uid_and_enforces_limits():
    """Without namespaces, uid drop + rlimits + the launcher's cleanup must still contain hostile programs."""
    fallback = SandboxIsolation(ISO.interpreter, ISO.uid, ISO.gid, namespaces=False, note="test")
    who = sandbox._run("import os\nprint(os.getuid())", FAST, "", fallback)
    assert who.stdout.strip() == str(ISO.uid)  # guard: never run the fork bomb as root
    before = uid_processes(ISO.uid)
    limits = SandboxLimits(wall_timeout_s=2.0, cpu_time_s=3, max_processes=16, memory_mb=128)
    t0 = time.monotonic()
    bomb = sandbox._run(FORK_BOMBS["persistent"], limits, "", fallback)
    assert bomb.status == "timeout"
    assert time.monotonic() - t0 < limits.wall_timeout_s + 2
    assert_no_stray_processes(ISO.uid, before)
    # a setsid() escapee is outside the process group, but the launcher (a child
    # subreaper) still finds and kills it
    escapee = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('bye')"
    assert sandbox._run(escapee, FAST, "", fallback).stdout == "bye\n"
    assert_no_stray_processes(ISO.uid, before)
    hog = sandbox._run("b = bytearray(2 * 1024 ** 3)", SandboxLimits(memory_mb=256), "", fallback)
    assert hog.status == "memory"
    flood = sandbox._run("while True:\n    print('x' * 1000)", SandboxLimits(max_output_bytes=4096), "", fallback)
    assert flood.status == "output_limit" and len(flood.stdout) <= 4096
    assert_no_stray_processes(ISO.uid, before)


# --------------------------------------------------------------------------- discovery


def test_interpreter_must_be_world_executable_along_its_path():
    base = Path(tempfile.mkdtemp())  # pytest's tmp_path is mode 0700 itself
    try:
        base.chmod(0o755)
        private = base / "private"
        private.mkdir(mode=0o700)
        binary = private / "python3"
        shutil.copy(ISO.interpreter, binary)
        binary.chmod(0o755)
        assert not sandbox._world_executable(str(binary))  # like /root/.pyenv/... (/root is 0700)
        private.chmod(0o755)
        assert sandbox._world_executable(str(binary))
        binary.chmod(0o750)
        assert not sandbox._world_executable(str(binary))
        assert sandbox._world_executable(ISO.interpreter)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_isolation_falls_back_with_a_warning(monkeypatch):
    if not IS_ROOT:
        pytest.skip("namespaces are only probed as root")
    monkeypatch.setattr(sandbox, "_isolation_cache", None)
    monkeypatch.setattr(sandbox, "_probe_namespaces", lambda iso: "simulated failure")
    with pytest.warns(RuntimeWarning, match="simulated failure"):
        iso = sandbox_isolation()
    assert not iso.namespaces and iso.uid == ISO.uid
    assert sandbox_isolation() is iso  # cached: probed and warned once


# --------------------------------------------------------------------------- check_code: the verdict is not the program's


def test_check_code_program_cannot_print_the_success_marker():
    """Issue 18: a wrong solution read the per-run marker from its own script, printed it, exited 0."""
    program = (
        "import os, re, sys\n"
        "def f(x):\n    return 0\n"
        "seen = open(sys.argv[0]).read()\n"
        "for path in ('/proc/%d/fd/0' % os.getppid(), '/proc/%d/cmdline' % os.getppid(), '/proc/%d/environ' % os.getppid()):\n"
        "    try:\n        seen += open(path, errors='replace').read()\n"
        "    except OSError as exc:\n        print('unreadable', path, type(exc).__name__)\n"
        "print(seen[-4000:])\n"
        "for token in set(re.findall(r'[0-9a-f]{32}', seen)):  # a nonce, if any, on every descriptor\n"
        "    for fd in range(3, 64):\n"
        "        try:\n            os.write(fd, ('passed %s\\n' % token).encode())\n"
        "        except OSError:\n            pass\n"
        "for marker in re.findall(r'__infra_pl_tests_done_[0-9a-f]+__', seen)[:1]:\n"
        "    print(); print(marker)\n"
        "sys.stdout.flush()\n"
        "os._exit(0)\n"
    )
    result = check_code(program, ["assert f(2) == 10  # expected-value-the-program-must-not-see"])
    assert not result.passed and result.status == "error", result.stdout[-2000:]
    assert "expected-value-the-program-must-not-see" not in result.stdout  # the tests stay in the harness
    assert "unreadable /proc/" in result.stdout  # the harness's stdin (the job) is not reachable through /proc


@pytest.mark.parametrize("returned", [
    "Any()",  # __eq__ always True
    "I(0)",  # an int subclass whose __eq__ always says True: compared as the plain 0 it holds
    "L([0])",  # the same for a list subclass
])
def test_check_code_always_equal_objects_do_not_pass(returned):
    program = (
        "class Any:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n        return False\n"
        "    __hash__ = object.__hash__\n"
        "class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "class L(list):\n    def __eq__(self, other):\n        return True\n"
        f"def f(x):\n    return {returned}\n"
    )
    result = check_code(program, ["assert f(2) == 10", "assert f(3) == [1, 2]"])
    assert not result.passed and "test 0 failed" in result.stderr


def test_check_code_program_cannot_replace_the_test_helpers():
    from infra_pl.data.stdio_tests import call_setup, call_test

    program = "def check_call(*args, **kwargs):\n    pass\nclass Solution:\n    def add(self, a, b):\n        return a - b\n"
    result = check_code(program, [call_test("Solution().add", [1, 2], 3)], call_setup())
    assert not result.passed and "expected 3, got -1" in result.stderr


@pytest.mark.parametrize("test", [
    "assert math.isclose(f(2), 1.4142)", "assert isinstance(f(2), list)", "assert all([f(1) == 1])",
])
def test_check_code_program_cannot_replace_builtins_or_stdlib_modules_the_tests_use(test):
    program = ("class math:\n    isclose = staticmethod(lambda *a, **k: True)\n"
               "def isinstance(*a):\n    return True\ndef all(*a):\n    return True\ndef f(x):\n    return 0\n")
    assert not check_code(program, [test]).passed


def test_check_code_still_accepts_correct_programs_of_every_kind():
    from infra_pl.data.stdio_tests import call_setup, call_test, stdio_setup, stdio_test

    program = (
        "import collections, math\n"
        "from fractions import Fraction\n"
        "Point = collections.namedtuple('Point', 'x y')\n"
        "def counts(s):\n    return collections.Counter(s)\n"
        "def point():\n    return Point(1, 2)\n"
        "def half():\n    return Fraction(1, 2)\n"
        "def root(x):\n    if x < 0:\n        raise ValueError('negative')\n    return math.sqrt(x)\n"
        "def evens(n):\n    return (i for i in range(n) if i % 2 == 0)\n"
        "class Stack:\n    def __init__(self):\n        self.items = []\n"
        "    def push(self, x):\n        self.items.append(x)\n    def pop(self):\n        return self.items.pop()\n"
        "    def __len__(self):\n        return len(self.items)\n"
    )
    tests = [
        "assert counts('aab') == {'a': 2, 'b': 1}",
        "assert point() == (1, 2) and point()[1] == 2",
        "assert half() == Fraction(1, 2)",
        "assert math.isclose(root(2), 1.41421356, rel_tol=1e-6)",
        "try:\n    root(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no ValueError')",
        "assert list(evens(5)) == [0, 2, 4]",
        "s = Stack(); s.push(3); s.push(4)\nassert s.pop() == 4 and len(s) == 1 and s.items == [3]",
        "assert isinstance(counts(''), dict) and root(0) is not None",
    ]
    result = check_code(program, tests, setup_code="from fractions import Fraction")
    assert result.passed, result.stderr
    made = "from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\n\ndef f():\n    return P(1)\n"
    both = check_code(made, ["assert f() == P(1) and f() != P(2)", "assert f() != (1,) and f().x == 1"])
    assert both.passed, both.stderr  # two of the program's objects compare with its own __eq__
    solution = "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        return (0, 1)"
    assert check_code(solution, [call_test("Solution().twoSum", [[2, 7], 9], [0, 1])], call_setup()).passed
    script = "n = int(input())\nprint(n * 2)\nprint('done')"
    inputs = ["3\n", "5\n"]
    stdio = check_code(script, [stdio_test(i, f"{2 * int(i)}\ndone\n") for i in inputs], stdio_setup(inputs))
    assert stdio.passed, stdio.stderr


def test_check_code_limits_hit_inside_a_test_keep_their_status():
    spin = check_code("def f():\n    while True:\n        pass\n", ["assert f() == 1"],
                      limits=SandboxLimits(wall_timeout_s=10.0, cpu_time_s=1))
    assert spin.status == "timeout"
    hog = check_code("def f():\n    return bytearray(2 * 1024 ** 3)\n", ["assert f() == 1"], limits=SandboxLimits(memory_mb=256))
    assert hog.status == "memory"
