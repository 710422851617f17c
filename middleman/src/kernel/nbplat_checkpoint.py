# The platform's checkpoint helper, run once at start-up after nbplat_kernel.py (Middleman passes
# it as a second `exec_lines` entry; see middleman/src/kernel/helper.rs). It becomes the module
# `_nbplat_checkpoint` and adds two operations to `_nbplat`'s `nbplat_request`:
#
# - `checkpoint_save`: serialises the named globals of the user's namespace with cloudpickle,
#   each into its own file under `<start directory>/.nbplat/checkpoint/`, named by the SHA-256 of
#   its bytes. A name whose bytes did not change since it was last saved or restored is not
#   written again. A name that cannot be serialised, is larger than the per-name cap, or comes
#   after the time budget ran out is reported as "recompute" with the reason. Middleman sends it
#   at shutdown (the last save), and waits for it.
# - `checkpoint_restore`: loads the named files back into the user's namespace.
#
# The save after each cell is `queue_save`, the cell's user expression (`inline`): it only takes
# a snapshot of the names (pickled, with NumPy's and pandas' data buffers out of band, copied),
# hands it to a writer thread and returns; the thread hashes and writes the objects and then a
# report, `report-<id>.json`, which Middleman waits for. The next cell does not wait for the
# writing: it costs the cell a copy of what it defined, not the pickling's I/O and hashing. The
# writer works when the kernel is idle (or a snapshot has waited `WRITE_WITHIN`), at the lowest
# priority. A snapshot of a name still waiting to be written is replaced by a newer one of that
# name. A name too large to copy (`SNAPSHOT_MAX_BYTES`) is written at once, as at shutdown.
#
# Functions defined in cells are saved without their globals (cloudpickle would copy every global
# they use, a DataFrame included) and come back bound to the live namespace, methods of classes
# defined in cells too. Nothing here writes to stdout or the history; Middleman trusts nothing
# it reports: it checks the files' hashes itself.
import collections
import hashlib
import io
import json
import os
import struct
import sys
import threading
import time
import types

from IPython import get_ipython

CHECKPOINT_DIR = os.path.join(os.getcwd(), ".nbplat", "checkpoint")
REASON_CHARS = 300
# A name whose snapshot would be larger than this is written at once instead (a copy of it
# would cost as much, and twice its memory).
SNAPSHOT_MAX_BYTES = 64 << 20
# A save whose snapshots are smaller than this is written at once, and its report is the
# expression's value: handing it to the writer would cost more than writing it.
INLINE_MAX_BYTES = 256 << 10
# The writer works while the kernel is idle (no cell for `WRITE_WHEN_IDLE` seconds), so that
# it does not compete with cells for the CPU; a snapshot waits at most `WRITE_WITHIN` for that.
WRITE_WHEN_IDLE = 0.05
WRITE_WITHIN = 2.0
# Snapshots waiting for the writer beyond this make the next save wait (within its budget).
BACKLOG_MAX_BYTES = 256 << 20
# Objects with out-of-band buffers: this line, then the lengths (little-endian u64: the pickle,
# then each buffer), then the pickle and the buffers. Others are one plain pickle.
MAGIC = b"nbplat-checkpoint-2\n"
# The SHA-256 of what each name was last saved or restored as.
_saved = {}


class _TooLarge(Exception):
    pass


class _Sink:
    """A file that hashes and counts what is written, refusing past `cap` bytes."""

    def __init__(self, file, cap):
        self.file = file
        self.cap = cap
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data):
        self.size += memoryview(data).nbytes
        if self.size > self.cap:
            raise _TooLarge(f"larger than the limit of {self.cap} bytes per name")
        self.hash.update(data)
        return self.file.write(data)


def _ns():
    return get_ipython().user_ns


def _function(code, name, qualname, defaults, kwdefaults, closure, attrs, module, annotations):
    """A cell's function again, bound to the live namespace."""
    f = types.FunctionType(code, _ns(), name, defaults, closure)
    f.__qualname__ = qualname
    f.__kwdefaults__ = kwdefaults
    f.__module__ = module
    f.__annotations__ = annotations
    f.__dict__.update(attrs)
    return f


def _pickler_class():
    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, io.IOBase):
                # cloudpickle would save a read-only file's text and give back a StringIO.
                raise TypeError(f"cannot checkpoint an open file ({type(obj).__name__})")
            if type(obj) is types.FunctionType and obj.__globals__ is _ns():
                return _function, (
                    obj.__code__,
                    obj.__name__,
                    obj.__qualname__,
                    obj.__defaults__,
                    obj.__kwdefaults__,
                    obj.__closure__,
                    dict(obj.__dict__),
                    obj.__module__,
                    dict(getattr(obj, "__annotations__", None) or {}),
                )
            return super().reducer_override(obj)

    return Pickler


def _reason(e):
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def _save_one(name, value, cap, pickler):
    tmp = os.path.join(CHECKPOINT_DIR, f".{name}.tmp")
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f, cap)
            pickler(sink, protocol=5).dump(value)
    except BaseException as e:  # noqa: BLE001 (any failure is the answer)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"name": name, "status": "recompute", "reason": _reason(e)}
    digest = sink.hash.hexdigest()
    if _saved.get(name) == digest:
        os.unlink(tmp)
        return {"name": name, "status": "unchanged", "sha256": digest, "bytes": sink.size}
    os.replace(tmp, os.path.join(CHECKPOINT_DIR, digest))
    _saved[name] = digest
    return {"name": name, "status": "saved", "sha256": digest, "bytes": sink.size}


class _Direct(Exception):
    """Too large for a snapshot: written at once."""


class _Capped(io.BytesIO):
    """A pickle's bytes in memory, up to the per-name cap and the snapshot's."""

    def __init__(self, cap):
        super().__init__()
        self.cap = cap

    def write(self, data):
        written = super().write(data)
        if self.tell() > self.cap:
            raise _TooLarge(f"larger than the limit of {self.cap} bytes per name")
        if self.tell() > SNAPSHOT_MAX_BYTES:
            raise _Direct()
        return written


def _snapshot(value, cap, pickler):
    """The bytes of `value` as an object file will hold them (a list of pieces), taken now."""
    buffers = []
    main = _Capped(cap)
    pickler(main, protocol=5, buffer_callback=buffers.append).dump(value)
    views = []
    for buffer in buffers:
        try:
            views.append(buffer.raw())
        except BufferError:
            raise _Direct() from None  # not contiguous: pickled in band instead
    size = main.tell() + sum(v.nbytes for v in views)
    if size > cap:
        raise _TooLarge(f"larger than the limit of {cap} bytes per name")
    if size > SNAPSHOT_MAX_BYTES:
        raise _Direct()
    if not views:
        return [main.getvalue()]
    header = MAGIC + struct.pack(f"<{len(views) + 2}Q", len(views), main.tell(), *(v.nbytes for v in views))
    # bytes() copies: the cell after this one may change the arrays in place.
    return [header, main.getvalue(), *(bytes(v) for v in views)]


class _Activity:
    """When the kernel last ran something (IPython's run hooks and the saves set it)."""

    running = False
    last = 0.0

    @classmethod
    def pre_run(cls, *_):
        cls.running = True

    @classmethod
    def post_run(cls, *_):
        cls.running = False
        cls.last = time.monotonic()

    @classmethod
    def idle_for(cls):
        return 0.0 if cls.running else time.monotonic() - cls.last


class _Job:
    def __init__(self, report, results, snapshots):
        self.created = time.monotonic()
        self.report = report
        self.results = results  # reports of names already settled (in order)
        self.snapshots = snapshots  # name -> pieces

    def bytes(self):
        return sum(len(p) for pieces in self.snapshots.values() for p in pieces)


class _Writer:
    """One thread that writes snapshots, in the order they were taken."""

    def __init__(self):
        self.jobs = collections.deque()
        self.cond = threading.Condition()
        self.busy = False
        self.flushing = False
        self.thread = None

    def backlog(self):
        return sum(j.bytes() for j in self.jobs)

    def submit(self, job, deadline):
        with self.cond:
            while self.backlog() + job.bytes() > BACKLOG_MAX_BYTES and self.jobs:
                left = deadline - time.monotonic()
                if left <= 0 or not self.cond.wait(left):
                    break
            if self.backlog() + job.bytes() > BACKLOG_MAX_BYTES and self.jobs:
                for name in job.snapshots:
                    _saved.pop(name, None)
                    reason = "the checkpoint writer is behind; saved again by its next run"
                    job.results.append({"name": name, "status": "recompute", "reason": reason})
                job.snapshots = {}
            # A newer snapshot of a name replaces one not written yet.
            for waiting in self.jobs:
                for name in job.snapshots:
                    waiting.snapshots.pop(name, None)
            self.jobs.append(job)
            self.cond.notify_all()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="nbplat-checkpoint", daemon=True)
                self.thread.start()

    def drain(self, timeout):
        """Waits until everything submitted is written (or `timeout` seconds pass)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.flushing = True
            self.cond.notify_all()
            try:
                while self.jobs or self.busy:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self.cond.wait(left)
            finally:
                self.flushing = False
        return True

    def _run(self):
        try:
            # Below the kernel's own threads: the next cell comes first (Linux: per thread).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while True:
            with self.cond:
                while not self.jobs:
                    self.cond.wait()
                job = self.jobs[0]
                # Idle time first: the cells running now go first, up to WRITE_WITHIN.
                while (
                    not self.flushing
                    and _Activity.idle_for() < WRITE_WHEN_IDLE
                    and time.monotonic() - job.created < WRITE_WITHIN
                ):
                    self.cond.wait(0.01)
                self.busy = True
            try:
                self._write(job)
            finally:
                with self.cond:
                    self.jobs.popleft()
                    self.busy = False
                    self.cond.notify_all()

    def idle(self):
        with self.cond:
            return not self.jobs and not self.busy

    def _write(self, job):
        _write_report(job.report, {"status": "ok", "names": _write(job, self.cond)})


def _write(job, lock=None):
    """Writes the job's snapshots; returns the report of all its names."""
    results = list(job.results)
    while True:
        if lock is None:
            if not job.snapshots:
                break
            name, pieces = job.snapshots.popitem()
        else:
            with lock:  # a newer save may take names out of it meanwhile
                if not job.snapshots:
                    break
                name = next(iter(job.snapshots))
                pieces = job.snapshots.pop(name)
        results.append(_write_pieces(name, pieces))
    return results


def _write_pieces(name, pieces):
    tmp = os.path.join(CHECKPOINT_DIR, f".{name}.w.tmp")
    hasher = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as f:
            for piece in pieces:
                hasher.update(piece)
                f.write(piece)
                size += len(piece)
        digest = hasher.hexdigest()
        if _saved.get(name) == digest:
            os.unlink(tmp)
            return {"name": name, "status": "unchanged", "sha256": digest, "bytes": size}
        os.replace(tmp, os.path.join(CHECKPOINT_DIR, digest))
    except Exception as e:  # noqa: BLE001 (the disk: any failure is the answer)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _saved.pop(name, None)
        return {"name": name, "status": "recompute", "reason": _reason(e)}
    _saved[name] = digest
    return {"name": name, "status": "saved", "sha256": digest, "bytes": size}


def _write_report(report, value):
    path = os.path.join(CHECKPOINT_DIR, f"report-{report}.json")
    try:
        with open(path + ".tmp", "w") as f:
            f.write(json.dumps(value))
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # Middleman gives up waiting; the names keep their last checkpoint


_writer = _Writer()


def _user_names(ip):
    """The user's globals, as `%who` lists them (not IPython's own)."""
    hidden = ip.user_ns_hidden
    return [n for n in ip.user_ns if not n.startswith("_") and n not in hidden]


def _names(ip, content):
    names = content.get("names")
    if names is None:
        skip = set(content.get("except") or ())
        names = [n for n in _user_names(ip) if n not in skip]
    return names


def _settle(name, ns, start, budget):
    """The report of a name that needs no pickling (absent, a module, out of time), or None."""
    if name not in ns:
        _saved.pop(name, None)
        return {"name": name, "status": "absent"}
    if isinstance(ns[name], types.ModuleType) and ns[name].__name__ in sys.modules:
        # Imported again by name on restore (a module is never state of its own).
        return {"name": name, "status": "module", "module": ns[name].__name__}
    if time.monotonic() - start > budget:
        _saved.pop(name, None)
        reason = f"the checkpoint's time budget of {budget:g} s ran out"
        return {"name": name, "status": "recompute", "reason": reason}
    return None


def _save(content):
    """Saves the names now (the last save): what the writer holds is written first."""
    ip = get_ipython()
    if content.get("if_succeeded") and not getattr(ip, "last_execution_succeeded", True):
        return {"status": "ok", "skipped": "the cell failed", "names": []}
    ns = ip.user_ns
    cap = int(content.get("max_name_bytes", 1 << 30))
    budget = float(content.get("budget_ms", 2000)) / 1000.0
    start = time.monotonic()
    _writer.drain(budget)
    os.makedirs(CHECKPOINT_DIR, exist_ok=True)
    pickler = _pickler_class()
    results = []
    for name in _names(ip, content):
        result = _settle(name, ns, start, budget) or _save_one(name, ns[name], cap, pickler)
        if result["status"] == "recompute":
            _saved.pop(name, None)
        results.append(result)
    return {"status": "ok", "names": results, "seconds": time.monotonic() - start}


def queue_save(content):
    """The save after a cell: snapshots now, written by the writer thread, reported in
    `report-<content["report"]>.json`."""
    ip = get_ipython()
    ns = ip.user_ns
    report = int(content["report"])
    cap = int(content.get("max_name_bytes", 1 << 30))
    budget = float(content.get("budget_ms", 2000)) / 1000.0
    start = time.monotonic()
    _Activity.post_run()
    os.makedirs(CHECKPOINT_DIR, exist_ok=True)
    pickler = _pickler_class()
    results = []
    snapshots = {}
    for name in _names(ip, content):
        settled = _settle(name, ns, start, budget)
        if settled is None:
            try:
                snapshots[name] = _snapshot(ns[name], cap, pickler)
                continue
            except _Direct:
                settled = _save_one(name, ns[name], cap, pickler)
            except BaseException as e:  # noqa: BLE001 (any failure is the answer)
                if isinstance(e, KeyboardInterrupt):
                    raise
                settled = {"name": name, "status": "recompute", "reason": _reason(e)}
        if settled["status"] == "recompute":
            _saved.pop(name, None)
        results.append(settled)
    job = _Job(report, results, snapshots)
    if job.bytes() <= INLINE_MAX_BYTES and _writer.idle():
        # Base64 text: IPython shows it as a plain quoted string, cheaper than JSON's route.
        import base64

        written = {"status": "ok", "names": _write(job)}
        return "J" + base64.b64encode(json.dumps(written).encode()).decode()
    _writer.submit(job, start + budget)
    return report


def _restore(content):
    import importlib

    ns = _ns()
    results = []
    for item in content.get("names") or ():
        name = item.get("name", "")
        try:
            if not name.isidentifier():
                raise ValueError("not a Python name")
            if "module" in item:
                ns[name] = importlib.import_module(item["module"])
            else:
                digest = item["sha256"]
                ns[name] = _load(os.path.join(CHECKPOINT_DIR, digest))
                _saved[name] = digest
            results.append({"name": name, "status": "restored"})
        except BaseException as e:  # noqa: BLE001 (any failure is the answer)
            if isinstance(e, KeyboardInterrupt):
                raise
            results.append({"name": name, "status": "failed", "reason": _reason(e)})
    return {"status": "ok", "names": results}


def _load(path):
    import pickle

    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            f.seek(0)
            return pickle.load(f)
        (count,) = struct.unpack("<Q", f.read(8))
        lengths = struct.unpack(f"<{count + 1}Q", f.read(8 * (count + 1)))
        main = f.read(lengths[0])
        buffers = []
        for length in lengths[1:]:
            # Writable, as the arrays were: each buffer in a bytearray of its own.
            buffer = bytearray(length)
            if f.readinto(buffer) != length:
                raise EOFError("the checkpoint object is cut short")
            buffers.append(buffer)
        return pickle.loads(main, buffers=buffers)


class _Report:
    """A report shown as JSON: what a user expression gives back to Middleman."""

    def __init__(self, value):
        self.value = value

    def _repr_json_(self):
        return self.value

    def __repr__(self):
        return "<nbplat checkpoint report>"


def inline(content_json):
    """A save run as a cell's user expression: evaluated only when the cell succeeded, before
    its reply, with no request of its own. With a `report` id it is `queue_save`: the value is
    that id (queued) or its report in Base64 behind a "J" (small: written at once); without,
    the report is the value (as JSON)."""
    content = json.loads(content_json)
    if content.get("op") == "checkpoint_save" and "report" in content:
        return queue_save(content)
    operation = {"checkpoint_save": _save, "checkpoint_restore": _restore}[content["op"]]
    return _Report(operation(content))


def _install():
    # Made by the kernel, so it is the kernel's: Middleman only puts files into it.
    try:
        os.makedirs(CHECKPOINT_DIR, exist_ok=True)
    except OSError:
        pass
    ip = get_ipython()
    if ip is not None:
        ip.events.register("pre_run_cell", _Activity.pre_run)
        ip.events.register("post_run_cell", _Activity.post_run)
    helper = sys.modules.get("_nbplat")
    if helper is not None:
        helper.OPERATIONS["checkpoint_save"] = _save
        helper.OPERATIONS["checkpoint_restore"] = _restore


_module = type(sys)("_nbplat_checkpoint")
_module.__dict__.update({k: v for k, v in globals().items() if not k.startswith("__")})
_module.__doc__ = "The notebook platform's kernel checkpoints (save and restore globals)."
# A spec makes it an importable module to pickle (cloudpickle copies the functions of modules
# it cannot import by value): `_function` is saved by name and found here on restore.
import importlib.machinery  # noqa: E402

_module.__spec__ = importlib.machinery.ModuleSpec("_nbplat_checkpoint", None)
sys.modules["_nbplat_checkpoint"] = _module
_install()
