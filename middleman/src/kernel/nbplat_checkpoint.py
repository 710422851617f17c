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
# The save after each cell is `queue_save`, run by IPython's post_run_cell hook when the cell
# succeeded and Middleman asked for it in the execute request's metadata: it only queues the
# names for a writer thread and returns. The writer pickles, hashes and writes them while the
# kernel is idle, at the lowest priority, then leaves a report, `report-<id>.json`, which
# Middleman waits for. A cell that starts while it writes stops it (IPython's pre_run_cell): what
# it was writing is thrown away and written again at the next idle time, so a name is never saved
# half changed. A name queued again before it was written is written once. Cells that keep the
# kernel busy for `WRITE_WITHIN` make the next save wait for the writing (within the budget).
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
import sys
import threading
import time
import types

from IPython import get_ipython

CHECKPOINT_DIR = os.path.join(os.getcwd(), ".nbplat", "checkpoint")
REASON_CHARS = 300
# The writer works while the kernel is idle (no cell for `WRITE_WHEN_IDLE` seconds), and stops
# when a cell starts; a save waits at most `WRITE_WITHIN` for that, then the cell after it waits
# for the writing instead.
WRITE_WHEN_IDLE = 0.05
WRITE_WITHIN = 2.0
# The SHA-256 of what each name was last saved or restored as.
_saved = {}


class _TooLarge(Exception):
    pass


class _Aborted(BaseException):
    """A cell started while the writer read the namespace: what it wrote is not used."""


class _Sink:
    """A file that hashes and counts what is written, refusing past `cap` bytes; `check` runs
    after each piece (the writer's: has a cell started?)."""

    def __init__(self, file, cap, check):
        self.file = file
        self.cap = cap
        self.check = check
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data):
        self.size += memoryview(data).nbytes
        if self.size > self.cap:
            raise _TooLarge(f"larger than the limit of {self.cap} bytes per name")
        self.hash.update(data)
        written = self.file.write(data)
        self.check()
        return written


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


def _save_one(name, value, cap, pickler, check=lambda: None, tmp_tag="s"):
    tmp = os.path.join(CHECKPOINT_DIR, f".{name}.{tmp_tag}.tmp")
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f, cap, check)
            pickler(sink, protocol=5).dump(value)
        check()
    except BaseException as e:  # noqa: BLE001 (any failure is the answer)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, (KeyboardInterrupt, _Aborted)):
            raise
        return {"name": name, "status": "recompute", "reason": _reason(e)}
    digest = sink.hash.hexdigest()
    if _saved.get(name) == digest:
        os.unlink(tmp)
        return {"name": name, "status": "unchanged", "sha256": digest, "bytes": sink.size}
    os.replace(tmp, os.path.join(CHECKPOINT_DIR, digest))
    _saved[name] = digest
    return {"name": name, "status": "saved", "sha256": digest, "bytes": sink.size}


class _Job:
    """A save after a cell: its names are written by the writer, then reported."""

    def __init__(self, report, results, names, cap):
        self.created = time.monotonic()
        self.report = report
        self.results = results  # reports of names already settled (in order)
        self.names = names  # still to write
        self.cap = cap


class _Writer:
    """One thread that writes the saves after cells, in order, from the live namespace, while
    the kernel is idle. A cell that starts stops it (`cell_starts`): what it was writing is
    thrown away and written again at the next idle time, since the cell may change it."""

    def __init__(self):
        self.jobs = collections.deque()
        self.cond = threading.Condition()
        self.flushing = 0
        self.running = False  # a cell is running
        self.last = 0.0  # when the kernel last did something
        self.aborted = False
        self.thread = None
        # No save is overdue before this (a write that did not fit the budget backs off).
        self.force_after = 0.0

    def cell_starts(self, *_):
        with self.cond:
            self.running = True
            self.aborted = True

    def cell_ends(self, *_):
        # No wake-up: with saves queued the writer looks again every WRITE_WHEN_IDLE / 2.
        with self.cond:
            self.running = False
            self.last = time.monotonic()

    def submit(self, job):
        with self.cond:
            self.last = time.monotonic()
            # A name a newer save writes is not written for an older one.
            newer = set(job.names)
            for waiting in self.jobs:
                waiting.names = [n for n in waiting.names if n not in newer]
            self.jobs.append(job)
            if len(self.jobs) == 1:
                self.cond.notify_all()  # the writer waits without a timeout when there is none
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="nbplat-checkpoint", daemon=True)
                self.thread.start()

    def overdue(self):
        with self.cond:
            now = time.monotonic()
            return bool(self.jobs) and now - self.jobs[0].created > WRITE_WITHIN and now >= self.force_after

    def drain(self, timeout):
        """Has everything submitted written now (the kernel waits, so nothing changes meanwhile),
        within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.flushing += 1
            self.cond.notify_all()
            try:
                while self.jobs:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self.cond.wait(left)
            finally:
                self.flushing -= 1
        return True

    def _check(self):
        if self.aborted:
            raise _Aborted()

    def _run(self):
        try:
            # Below the kernel's own threads: a cell comes first (Linux: per thread).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while True:
            with self.cond:
                while not self.jobs or not (
                    self.flushing
                    or (not self.running and time.monotonic() - self.last >= WRITE_WHEN_IDLE)
                ):
                    self.cond.wait(None if not self.jobs else WRITE_WHEN_IDLE / 2)
                # Under the lock a cell's start takes too: from here on it sets `aborted`.
                self.aborted = False
                job = self.jobs[0]
            if self._write(job):
                with self.cond:
                    self.jobs.popleft()
                    self.cond.notify_all()

    def _write(self, job):
        """Writes what is left of `job`; False if a cell started first."""
        try:
            os.makedirs(CHECKPOINT_DIR, exist_ok=True)
        except OSError:
            pass  # each name's save reports why it could not be written
        pickler = _pickler_class()
        ns = _ns()
        while True:
            with self.cond:
                if not job.names:
                    break
                name = job.names[0]
            settled = _settle(name, ns)
            try:
                result = settled or _save_one(
                    name, ns[name], job.cap, pickler, self._check, tmp_tag="w"
                )
            except _Aborted:
                return False
            if result["status"] == "recompute":
                _saved.pop(name, None)
            with self.cond:
                if job.names and job.names[0] == name:
                    job.names.pop(0)
                    job.results.append(result)
        _write_report(job.report, {"status": "ok", "names": job.results})
        return True


def _write_report(report, value):
    path = os.path.join(CHECKPOINT_DIR, f"report-{report}.json")
    try:
        with open(path + ".tmp", "w") as f:
            f.write(json.dumps(value))
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # Middleman gives up waiting; the names are rebuilt on resume


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


def _settle(name, ns, start=0.0, budget=float("inf")):
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
    """The save after a cell: queued for the writer (the next cell does not wait for it) and
    reported in `report-<content["report"]>.json`. A save queued `WRITE_WITHIN` ago and not
    written yet (cells kept the kernel busy) is written now."""
    ip = get_ipython()
    ns = ip.user_ns
    report = int(content["report"])
    cap = int(content.get("max_name_bytes", 1 << 30))
    budget = float(content.get("budget_ms", 2000)) / 1000.0
    results = []
    names = []
    for name in _names(ip, content):
        settled = _settle(name, ns)
        if settled is None:
            names.append(name)
        else:
            results.append(settled)
    overdue = _writer.overdue()
    _writer.submit(_Job(report, results, names, cap))
    if overdue and not _writer.drain(budget):
        # Too large to write within the budget: the next cell stops the write, and it is
        # done at the next idle time; cells are not held for it again for a while.
        _writer.force_after = time.monotonic() + 10 * WRITE_WITHIN
    return report


def _restore(content):
    import importlib
    import pickle

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
                with open(os.path.join(CHECKPOINT_DIR, digest), "rb") as f:
                    ns[name] = pickle.load(f)
                _saved[name] = digest
            results.append({"name": name, "status": "restored"})
        except BaseException as e:  # noqa: BLE001 (any failure is the answer)
            if isinstance(e, KeyboardInterrupt):
                raise
            results.append({"name": name, "status": "failed", "reason": _reason(e)})
    return {"status": "ok", "names": results}


def _post_run(result):
    """IPython's post_run_cell hook: the writer may work again, and the save Middleman asked
    for after this cell (the execute request's metadata) is queued if the cell succeeded."""
    _writer.cell_ends()
    try:
        parent = get_ipython().kernel.get_parent("shell") or {}
        content = (parent.get("metadata") or {}).get("nbplat_checkpoint")
    except Exception:  # noqa: BLE001 (not a kernel: nothing asked)
        return
    if not content or not getattr(result, "success", False):
        return
    try:
        queue_save(content)
    except BaseException as e:  # noqa: BLE001 (Middleman waits for a report: it gets one)
        reason = _reason(e)
        names = [{"name": n, "status": "recompute", "reason": reason} for n in content.get("names") or ()]
        _write_report(int(content.get("report", 0)), {"status": "ok", "names": names})


def _install():
    # Made by the kernel, so it is the kernel's: Middleman only puts files into it.
    try:
        os.makedirs(CHECKPOINT_DIR, exist_ok=True)
    except OSError:
        pass
    ip = get_ipython()
    if ip is not None:
        ip.events.register("pre_run_cell", _writer.cell_starts)
        ip.events.register("post_run_cell", _post_run)
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
