# Scoping edge cases, one cell per "# %%" block. Each is checked against Python's own
# ast and symtable (scripts/python/cell_scopes.py) by middleman/tests/analysis.rs.
# %%
x = 1
# %%
y = x + 1
# %%
print(y)
# %%
a, b = 1, 2
# %%
a, *rest = items
# %%
(p, (q, r)) = nested
# %%
obj.attr = value
# %%
container[key] = value
# %%
x += 1
# %%
counter += step
# %%
obj.count += 1
# %%
data[i] += 1
# %%
total: int = 0
# %%
declared: int
# %%
n: SomeType = make()
# %%
del x
# %%
del obj.attr, arr[0]
# %%
def f(a, b=default_b, *args, c: CType = default_c, **kwargs) -> RType:
    return a + b + c + free_name
# %%
def g():
    local = 1
    return local + outer
# %%
def h():
    global shared
    shared = 42
# %%
def reader():
    global shared
    return shared
# %%
def outer_fn():
    v = 1
    def inner():
        nonlocal v
        v += 1
        return v
    return inner
# %%
def closure():
    z = 1
    def inner():
        return z + w
    return inner
# %%
@decorator
def decorated():
    pass
# %%
@dec.attr(arg)
@other
def multi():
    return 1
# %%
class Point(Base, metaclass=Meta):
    dims = 2
    scale = dims * factor
    def norm(self):
        return dims + self.x
# %%
class Empty:
    pass
# %%
class WithGlobal:
    global made_here
    made_here = 1
# %%
@dataclass
class Row:
    name: str
    value: float = default_value
# %%
square = lambda v: v * v
# %%
adder = lambda v, k=offset: v + k + bias
# %%
squares = [i * i for i in range(n)]
# %%
evens = {i for i in numbers if i % 2 == 0}
# %%
mapping = {k: v for k, v in pairs.items()}
# %%
gen = (line.strip() for line in lines)
# %%
nested = [[i * j for j in cols] for i in rows]
# %%
filtered = [x for x in xs if x > threshold]
# %%
if (m := pattern.match(text)) is not None:
    print(m)
# %%
total = sum(last := v for v in values)
# %%
[found := item for item in seq if item]
# %%
def walrus_in_function():
    return [y := i for i in data]
# %%
for i in range(3):
    print(i)
# %%
for key, val in table.items():
    acc = val
# %%
while not done:
    step()
# %%
with open(path) as fh:
    content = fh.read()
# %%
with lock, ctx() as (left, right):
    pass
# %%
try:
    result = risky()
except ValueError as err:
    print(err)
except (TypeError, KeyError):
    result = None
else:
    ok = True
finally:
    cleanup()
# %%
try:
    import numpy as np
except ImportError:
    np = None
# %%
import os
# %%
import os.path
# %%
import xml.etree.ElementTree as ET
# %%
import a.b.c, d
# %%
from collections import defaultdict, OrderedDict as OD
# %%
from . import sibling
# %%
from .. import parent_mod as pm
# %%
from math import *
# %%
from os.path import *
print(join)
# %%
match command:
    case "quit":
        running = False
    case ["go", direction]:
        move(direction)
    case {"action": act, **others}:
        handle(act, others)
    case Point(x=px, y=0) as origin_pt:
        print(px, origin_pt)
    case [first, *tail]:
        print(first, tail)
    case Color.RED | Color.GREEN:
        pass
    case str() | bytes() as text_val if len(text_val) > limit:
        pass
    case _:
        pass
# %%
match value:
    case int(n) if n > 0:
        positive = n
# %%
print(f"{name!r} has {count:>{width}} items")
# %%
msg = f"{x + y=} and {obj.method(arg)}"
# %%
_private = 1
# %%
_hidden = compute(_other)
public = _hidden + visible
# %%
def _helper():
    return used_inside
# %%
__dunder__ = 1
# %%
print(len([]), sorted({}), isinstance(1, int))
# %%
list = [1, 2]
# %%
result = max(values, key=abs)
# %%
assert condition, message
# %%
raise ValueError(reason) from cause
# %%
async def fetch(url):
    async with session.get(url) as resp:
        async for chunk in resp.content:
            yield chunk
# %%
await asyncio.sleep(delay)
# %%
async def gather_all():
    return [await task for task in tasks]
# %%
def gen_fn():
    yield from source_iter
# %%
class Outer:
    class Inner:
        value = base_value
    inner_ref = Inner
# %%
class Meta(type):
    def __new__(mcs, name, bases, ns):
        return super().__new__(mcs, name, bases, ns)
# %%
def uses_class_var():
    class Local:
        attr = enclosing_missing
    return Local
# %%
def fn_with_local_class():
    shared_local = 1
    class C:
        attr = shared_local
    return C
# %%
class CompInClass:
    items = [1, 2]
    doubled = [v * 2 for v in items]
    scaled = [v * items_factor for v in range(3)]
# %%
if flag:
    conditional = 1
else:
    conditional = 2
# %%
x = 1; y = 2; z = x + y
# %%
def recursive(n):
    return 1 if n <= 1 else n * recursive(n - 1)
# %%
def uses_before_assign():
    print(later)
    later = 1
# %%
import sys
sys.path.append(extra_dir)
# %%
df = df[df["value"] > 0]
# %%
@property
def prop(self):
    return self._p
# %%
lambda: free_in_lambda
# %%
(lambda q=qdefault: q)()
# %%
def annotated(p: "Forward") -> "Other":
    pass
# %%
def defaults_eval(a=[i for i in source_list]):
    return a
# %%
x = [lambda: i for i in range(3)]
# %%
pairs = [(i, j) for i in range(3) for j in range(i) if j != skip]
# %%
try:
    pass
except* OSError as eg:
    print(eg.exceptions)
# %%
def kwonly(*, key=kdefault):
    return key
# %%
def posonly(a, /, b):
    return a + b + gvar
# %%
print(*args_list, **kwargs_dict)
# %%
value = cond_a if cond_b else cond_c
# %%
chained = a < b <= c
# %%
sliced = seq[start:stop:stride]
# %%
dict_unpack = {**base_dict, "k": v_new}
# %%
set_lit = {s1, s2}
# %%
def broken(:
    pass
# %%
return 5
# %%
def with_nonlocal_error():
    nonlocal nothing
# %%
class Decorated:
    @staticmethod
    def sm(x=class_default):
        return x
# %%
for _ in range(3):
    pass
# %%
with ctx as _tmp:
    pass
# %%
import numpy as _np_private
# %%
def shadows(print):
    return print
# %%
def uses_builtin_name():
    open = 1
    return open
