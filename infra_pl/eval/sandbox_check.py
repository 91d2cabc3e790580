"""The test harness that :func:`infra_pl.eval.sandbox.check_code` runs inside the sandbox.

Stdlib only, run with ``python -I -S``; this file is copied into the sandbox as ``main.py``.

Why two processes: the verdict decides D_correct, so the program under test must not be able to
produce it. When the program and its tests ran in one interpreter, a wrong solution could print
the run's "tests finished" marker (it read it from its own script) and exit 0, or return an object
whose ``__eq__`` always says True. Here, as in execution-based benchmarks, the roles are split:

* the **harness** (this file's ``main``) holds the tests and the verdict channel. It reads the job
  from its stdin (an unlinked file), marks itself non-dumpable (so a same-uid process can neither
  ptrace it nor open its ``/proc/<pid>/{mem,fd}``), then starts
* the **candidate** process (``--candidate``): a fresh interpreter that loads the setup code and
  the program and answers requests on two pipes: call this, get that attribute, run the program
  as ``__main__`` with this stdin. It gets nothing else: no tests, no expected values, no verdict
  fd, stdin from /dev/null.

The tests run in the harness. Names the program defines are bound to proxies; every value that
comes back is decoded into plain, exactly typed builtins (int, float, str, bytes, list, tuple,
dict, set, frozenset, complex, Fraction, Decimal, None, bools), so ``==`` in an assert compares
plain values: the program cannot choose the comparison. Other objects stay in the candidate and
come back as handles (attribute access and calls go on through the pipe; a handle is never equal
to a plain value). A setup that defines ``run_stdio`` (``infra_pl.data.stdio_tests.HARNESS``) gets it
answered by the candidate. Only after every test passed does the harness write the job's nonce
to the verdict fd, which no other process holds.

Known limits: arguments travel by value (a test that checks how a call mutated its argument
sees the harness's copy), a harness-side function (a lambda) cannot be passed to the program, and
two objects made by the program's own classes compare with the program's ``__eq__``.
"""

import builtins
import decimal
import fractions
import io
import json
import linecache
import os
import signal
import subprocess
import sys
import traceback

MAX_MESSAGE = 64 * 1024 * 1024  # one request or response line
MAX_ITEMS = 1_000_000  # items materialised when a test iterates a handle


# ----------------------------------------------------------------------------- encoding
# Plain values travel as JSON; containers and non-JSON scalars carry a one-key tag.


def encode(value, ref=None, depth=0):
    """``value`` as JSON-able data. ``ref(obj)`` names an object that is not a plain value."""
    if depth > 200:
        raise ValueError("value nested too deeply")
    t = type(value)
    if value is None or t is bool:
        return value
    if isinstance(value, int):  # subclasses: the plain int they hold, read by int's own method
        return int.__int__(value)
    if isinstance(value, float):
        return {"$float": float.__repr__(float.__float__(value))}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(memoryview(value)).hex()}
    if isinstance(value, complex):
        return {"$complex": [complex.real.__get__(value), complex.imag.__get__(value)]}
    if t is fractions.Fraction:
        return {"$fraction": [int(value.numerator), int(value.denominator)]}
    if t is decimal.Decimal:
        return {"$decimal": decimal.Decimal.__str__(value)}
    if isinstance(value, list):
        return [encode(v, ref, depth + 1) for v in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, ref, depth + 1) for v in tuple.__iter__(value)]}
    if isinstance(value, dict):
        return {"$dict": [[encode(k, ref, depth + 1), encode(v, ref, depth + 1)] for k, v in dict.items(value)]}
    if isinstance(value, frozenset):
        return {"$frozenset": [encode(v, ref, depth + 1) for v in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"$set": [encode(v, ref, depth + 1) for v in set.__iter__(value)]}
    if ref is None:
        raise TypeError("cannot pass %s to the program in the sandbox" % t.__name__)
    return ref(value)


def decode(data, handle=None):
    """Inverse of :func:`encode`: plain builtins only (and handles, through ``handle``)."""
    if data is None or type(data) in (bool, int, str):
        return data
    if type(data) is float:
        return data
    if type(data) is list:
        return [decode(v, handle) for v in data]
    if type(data) is not dict or len(data) not in (1, 2):
        raise ValueError("malformed value from the program's process")
    tag, body = next(iter(data.items()))
    if tag == "$float":
        return float(body)
    if tag == "$bytes":
        return bytes.fromhex(body)
    if tag == "$complex":
        return complex(float(body[0]), float(body[1]))
    if tag == "$fraction":
        return fractions.Fraction(int(body[0]), int(body[1]))
    if tag == "$decimal":
        return decimal.Decimal(str(body))
    if tag == "$tuple":
        return tuple(decode(v, handle) for v in body)
    if tag == "$dict":
        return {decode(k, handle): decode(v, handle) for k, v in body}
    if tag == "$set":
        return {decode(v, handle) for v in body}
    if tag == "$frozenset":
        return frozenset(decode(v, handle) for v in body)
    if tag == "$ref" and handle is not None:
        return handle(int(body), str(data.get("type", "object")))
    raise ValueError("malformed value from the program's process")


def _send(stream, message):
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def _receive(stream):
    line = stream.readline(MAX_MESSAGE + 1)
    if not line:
        return None
    if not line.endswith("\n"):
        raise ValueError("message from the other process is too large or cut off")
    return json.loads(line)


# ----------------------------------------------------------------------------- candidate


def candidate(request_fd, response_fd):
    """Load setup and program, then answer the harness's requests until it closes the pipe."""
    requests = os.fdopen(request_fd, "r", encoding="utf-8")
    responses = os.fdopen(response_fd, "w", encoding="utf-8")
    namespace = {"__name__": "__solution__", "__builtins__": builtins, "exit": sys.exit, "quit": sys.exit}
    objects, handles = {}, {}
    program = {"source": ""}

    def ref(obj):
        key = id(obj)
        if key not in handles:
            handles[key] = len(objects)
            objects[handles[key]] = obj
        return {"$ref": handles[key], "type": type(obj).__name__}

    def run(source, filename):
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), namespace)

    def load(message):
        run(message["setup"], "<setup>")
        before = {k: id(v) for k, v in namespace.items()}
        program["source"] = message["program"]
        run(message["program"], "<program>")
        names = {}
        for name, value in list(namespace.items()):
            if name.startswith("__") or before.get(name) == id(value):
                continue
            if type(value).__name__ == "module" and hasattr(value, "__name__"):
                names[name] = {"module": str(value.__name__)}
                continue
            try:
                data = encode(value)
                if len(json.dumps(data)) > 1_000_000:
                    raise ValueError
                names[name] = {"value": data}
            except (TypeError, ValueError, RecursionError):
                names[name] = {"ref": ref(value)}
        return names

    def run_main(stdin_text):
        source = program["source"]
        buffer = io.BytesIO()
        out = io.TextIOWrapper(buffer, encoding="utf-8")
        saved = sys.stdin, sys.stdout
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin_text.encode("utf-8")), encoding="utf-8")
        sys.stdout = out
        try:
            main_ns = {"__name__": "__main__", "__builtins__": builtins, "exit": sys.exit, "quit": sys.exit}
            exec(compile(source, "<program>", "exec"), main_ns)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise AssertionError("program exited with status %r" % (exc.code,))
        finally:
            out.flush()
            sys.stdin, sys.stdout = saved
        return buffer.getvalue().decode("utf-8", "replace")

    def answer(message):
        op = message["op"]
        if op == "load":
            return {"names": load(message)}
        if op == "run_main":
            return {"v": encode(run_main(str(message["stdin"])))}
        target = objects[int(message["ref"])]
        if op == "call":
            args = decode(message["args"], lambda h, _t: objects[h])
            kwargs = decode(message["kwargs"], lambda h, _t: objects[h])
            result = target(*args, **kwargs)
        elif op == "getattr":
            result = getattr(target, str(message["name"]))
        elif op == "getitem":
            result = target[decode(message["key"], lambda h, _t: objects[h])]
        elif op == "contains":
            result = decode(message["item"], lambda h, _t: objects[h]) in target
        elif op == "eq":
            result = bool(target == objects[int(message["other"])])
        elif op == "iter":
            result = []
            for item in target:
                result.append(item)
                if len(result) > MAX_ITEMS:
                    raise ValueError("more than %d items" % MAX_ITEMS)
        elif op in ("len", "bool", "str", "repr", "int", "float", "index", "hash"):
            fn = {"len": len, "bool": bool, "str": str, "repr": repr, "int": int, "float": float,
                  "index": lambda x: x.__index__(), "hash": hash}[op]
            result = fn(target)
        else:
            raise ValueError("unknown request %r" % (op,))
        return {"v": encode(result, ref)}

    while True:
        message = _receive(requests)
        if message is None:
            return
        try:
            reply = answer(message)
        except SystemExit as exc:
            reply = {"exit": repr(exc.code)}
        except BaseException as exc:  # noqa: BLE001 - reported to the harness, which fails the test
            reply = {"raise": {"type": type(exc).__name__, "msg": str(exc)[:2000],
                               "tb": "".join(traceback.format_exception(exc))[-8000:]}}
        try:
            _send(responses, reply)
        except (TypeError, ValueError, RecursionError) as exc:
            _send(responses, {"raise": {"type": type(exc).__name__, "msg": str(exc)[:2000], "tb": ""}})


# ----------------------------------------------------------------------------- harness


class ProgramEnded(Exception):
    """The candidate process ended (exit, crash, a limit) while the harness waited for it."""


class ProgramExited(Exception):
    """The program called exit() (SystemExit) where a value was expected."""


class ProgramError(Exception):
    """An exception of a type that is not a builtin, raised in the program's process."""


def _exception(info):
    kind = getattr(builtins, info.get("type", ""), None)
    message = str(info.get("msg", ""))
    if (isinstance(kind, type) and issubclass(kind, Exception) and kind.__module__ == "builtins"
            and kind not in (SystemExit, KeyboardInterrupt, GeneratorExit)):
        try:
            return kind(message)
        except Exception:  # noqa: BLE001 - constructors with other signatures (UnicodeError...)
            pass
    return ProgramError("%s: %s" % (info.get("type"), message))


class Channel:
    def __init__(self, process, requests, responses):
        self.process = process
        self.requests = requests
        self.responses = responses
        self.proxies = {}

    def ask(self, message):
        try:
            _send(self.requests, message)
            reply = _receive(self.responses)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:
            raise ProgramEnded()
        if "raise" in reply:
            info = reply["raise"]
            if info.get("tb"):
                sys.stderr.write(info["tb"])
            raise _exception(info)
        if "exit" in reply:
            raise ProgramExited(reply["exit"])
        return reply

    def value(self, message):
        return decode(self.ask(message)["v"], self.proxy)

    def proxy(self, handle, type_name):
        if handle not in self.proxies:
            self.proxies[handle] = Remote(self, handle, type_name)
        return self.proxies[handle]

    def encode(self, value):
        def ref(obj):
            if type(obj) is Remote and object.__getattribute__(obj, "_channel") is self:
                return {"$ref": object.__getattribute__(obj, "_handle")}
            raise TypeError("cannot pass %s to the program in the sandbox" % type(obj).__name__)
        return encode(value, ref)


class Remote:
    """An object that lives in the candidate process. Equal only to itself."""

    __slots__ = ("_channel", "_handle", "_type")

    def __init__(self, channel, handle, type_name):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "_type", type_name)

    def _ask(self, op, **fields):
        channel = object.__getattribute__(self, "_channel")
        return channel.value({"op": op, "ref": object.__getattribute__(self, "_handle"), **fields})

    def __call__(self, *args, **kwargs):
        channel = object.__getattribute__(self, "_channel")
        return self._ask("call", args=channel.encode(list(args)), kwargs=channel.encode(dict(kwargs)))

    def __getattr__(self, name):
        return self._ask("getattr", name=name)

    def __getitem__(self, key):
        return self._ask("getitem", key=object.__getattribute__(self, "_channel").encode(key))

    def __contains__(self, item):
        return self._typed(bool, self._ask("contains", item=object.__getattribute__(self, "_channel").encode(item)))

    def __iter__(self):
        return iter(self._typed(list, self._ask("iter")))

    def __len__(self):
        return self._typed(int, self._ask("len"))

    def __bool__(self):
        return self._typed(bool, self._ask("bool"))

    def __str__(self):
        return self._typed(str, self._ask("str"))

    def __repr__(self):
        try:
            return self._typed(str, self._ask("repr"))
        except Exception:  # noqa: BLE001 - repr is for messages
            return "<%s object in the program's process>" % object.__getattribute__(self, "_type")

    def __int__(self):
        return self._typed(int, self._ask("int"))

    def __float__(self):
        return self._typed(float, self._ask("float"))

    def __index__(self):
        return self._typed(int, self._ask("index"))

    def __eq__(self, other):
        # Against a plain value: never equal (the program does not get to say). Two of the program's
        # own objects (a test comparing f() with Point(1, 2), both made by the program's classes):
        # its own equality, as the test intends.
        if type(other) is Remote and object.__getattribute__(other, "_channel") is object.__getattribute__(self, "_channel"):
            return self is other or self._typed(bool, self._ask("eq", other=object.__getattribute__(other, "_handle")))
        return False

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return object.__hash__(self)

    @staticmethod
    def _typed(kind, value):
        if type(value) is not kind and not (kind is int and type(value) is bool):
            raise TypeError("the program returned %s where %s was expected" % (type(value).__name__, kind.__name__))
        return value


def _set_non_dumpable():
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
    except Exception:  # noqa: BLE001 - no ctypes: the candidate process still never gets the secrets
        pass


def _fail(message):
    sys.stderr.write("[check_code] %s\n" % message)
    sys.stderr.flush()


def _end(process, channel, mirror=True):
    """Stop the candidate. If a signal ended it (and not ours), end the harness the same way, so
    the sandbox reports the limit it hit (CPU time, a crash) as for a single process."""
    try:
        channel.requests.close()
    except OSError:
        pass
    try:
        code = process.wait(timeout=2)
    except subprocess.TimeoutExpired:  # e.g. a thread it started still runs: not a signal of its own
        process.kill()
        process.wait()
        return "killed after the tests"
    if mirror and code < 0 and -code != signal.SIGPIPE:
        sys.stderr.flush()
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def harness(verdict_fd):
    _set_non_dumpable()
    os.set_inheritable(verdict_fd, False)
    job = json.loads(sys.stdin.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    request_r, request_w = os.pipe()
    response_r, response_w = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(sys.argv[0]), "--candidate", str(request_r), str(response_w)],
        stdin=subprocess.DEVNULL, pass_fds=(request_r, response_w), close_fds=True,
    )
    os.close(request_r)
    os.close(response_w)
    channel = Channel(process, os.fdopen(request_w, "w", encoding="utf-8"), os.fdopen(response_r, "r", encoding="utf-8"))
    namespace = {"__name__": "__check__", "__builtins__": builtins}
    try:
        names = channel.ask({"op": "load", "setup": job["setup"], "program": job["program"]})["names"]
    except ProgramExited as exc:
        _fail("the program called exit(%s) before the tests ran" % exc)
        _end(process, channel)
        return 1
    except ProgramEnded:
        code = _end(process, channel)
        _fail("the program ended (status %s) before all tests ran" % code)
        return 1
    except Exception as exc:  # noqa: BLE001 - the program raised while loading
        _fail("the program failed before the tests ran: %s" % (exc,))
        _end(process, channel)
        return 1
    # The job's setup code (trusted, from the data set) runs here too: test helpers and imports.
    linecache.cache["<setup>"] = (len(job["setup"]), None, job["setup"].splitlines(True), "<setup>")
    exec(compile(job["setup"], "<setup>", "exec"), namespace)
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    for name, spec in names.items():
        # Setup names (check_call, check_stdio...) and builtins (isinstance, all...) are never the
        # program's: a test's own checks cannot be replaced. A stdlib module name (math, for
        # math.isclose) is the real module, whatever the program bound to it.
        if name in namespace or hasattr(builtins, name):
            continue
        if name in stdlib:
            try:
                namespace[name] = __import__(name)
            except Exception:  # noqa: BLE001
                pass
            continue
        if "module" in spec:
            module = spec["module"]
            # -I -S: only the standard library is importable here anyway
            if module.partition(".")[0] in getattr(sys, "stdlib_module_names", {module.partition(".")[0]}):
                try:
                    namespace[name] = __import__(module, fromlist=["_"])
                except Exception:  # noqa: BLE001
                    pass
        elif "value" in spec:
            namespace[name] = decode(spec["value"])
        else:
            namespace[name] = channel.proxy(int(spec["ref"]["$ref"]), str(spec["ref"].get("type", "object")))
    if "run_stdio" in namespace:
        def run_stdio(stdin_text):
            return Remote._typed(str, channel.value({"op": "run_main", "stdin": str(stdin_text)}))

        namespace["run_stdio"] = run_stdio
    for i, test in enumerate(job["tests"]):
        try:
            exec(compile(test, "<test %d>" % i, "exec"), namespace)
        except ProgramEnded:
            code = _end(process, channel)
            _fail("test %d failed: %s" % (i, test))
            _fail("the program ended (status %s) before all tests ran" % code)
            return 1
        except BaseException:  # noqa: BLE001 - a failed test, whatever it raised
            _fail("test %d failed: %s" % (i, test))
            sys.stderr.write(traceback.format_exc()[-8000:])
            _end(process, channel)
            return 1
    os.write(verdict_fd, ("passed %s\n" % job["nonce"]).encode())
    os.close(verdict_fd)
    _end(process, channel, mirror=False)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--candidate":
        candidate(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(harness(int(sys.argv[1])))
