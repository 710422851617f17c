# The platform's checkpoint helper, run once at start-up after nbplat_kernel.py (Middleman passes
# it as a second `exec_lines` entry; see middleman/src/kernel/helper.rs). It becomes the module
# `_nbplat_checkpoint` and adds two operations to `_nbplat`'s `nbplat_request`:
#
# - `checkpoint_save`: serialises the named globals of the user's namespace with cloudpickle,
#   each into its own file under `<start directory>/.nbplat/checkpoint/`, named by the SHA-256 of
#   its bytes. A name whose bytes did not change since it was last saved or restored is not
#   written again. A name that cannot be serialised, is larger than the per-name cap, or comes
#   after the time budget ran out is reported as "recompute" with the reason. Middleman sends it
#   on the main shell right after an execution, so it runs after that cell and before the next;
#   it does nothing when that cell failed.
# - `checkpoint_restore`: loads the named files back into the user's namespace.
#
# Functions defined in cells are saved without their globals (cloudpickle would copy every global
# they use, a DataFrame included) and come back bound to the live namespace, methods of classes
# defined in cells too. Nothing here writes to stdout or the history; Middleman trusts nothing
# it reports: it checks the files' hashes itself.
import hashlib
import io
import os
import sys
import time
import types

from IPython import get_ipython

CHECKPOINT_DIR = os.path.join(os.getcwd(), ".nbplat", "checkpoint")
REASON_CHARS = 300
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


def _user_names(ip):
    """The user's globals, as `%who` lists them (not IPython's own)."""
    hidden = ip.user_ns_hidden
    return [n for n in ip.user_ns if not n.startswith("_") and n not in hidden]


def _save(content):
    ip = get_ipython()
    if content.get("if_succeeded") and not getattr(ip, "last_execution_succeeded", True):
        return {"status": "ok", "skipped": "the cell failed", "names": []}
    ns = ip.user_ns
    names = content.get("names")
    if names is None:
        skip = set(content.get("except") or ())
        names = [n for n in _user_names(ip) if n not in skip]
    cap = int(content.get("max_name_bytes", 1 << 30))
    budget = float(content.get("budget_ms", 2000)) / 1000.0
    os.makedirs(CHECKPOINT_DIR, exist_ok=True)
    pickler = _pickler_class()
    start = time.monotonic()
    results = []
    for name in names:
        if name not in ns:
            _saved.pop(name, None)
            results.append({"name": name, "status": "absent"})
        elif isinstance(ns[name], types.ModuleType) and ns[name].__name__ in sys.modules:
            # Imported again by name on restore (a module is never state of its own).
            results.append({"name": name, "status": "module", "module": ns[name].__name__})
        elif time.monotonic() - start > budget:
            _saved.pop(name, None)
            reason = f"the checkpoint's time budget of {budget:g} s ran out"
            results.append({"name": name, "status": "recompute", "reason": reason})
        else:
            result = _save_one(name, ns[name], cap, pickler)
            if result["status"] == "recompute":
                _saved.pop(name, None)
            results.append(result)
    return {"status": "ok", "names": results, "seconds": time.monotonic() - start}


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
    its reply, with no request of its own (Middleman reads the JSON from the reply)."""
    import json

    content = json.loads(content_json)
    operation = {"checkpoint_save": _save, "checkpoint_restore": _restore}[content["op"]]
    return _Report(operation(content))


def _install():
    # Made by the kernel, so it is the kernel's: Middleman only puts files into it.
    try:
        os.makedirs(CHECKPOINT_DIR, exist_ok=True)
    except OSError:
        pass
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
