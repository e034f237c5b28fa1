"""bnexp.startup: the training stack is imported once, its objects frozen out of the GC's walks,
while garbage made before and after is still collected."""

from __future__ import annotations

import json
import subprocess
import sys

# Run in a fresh interpreter: this test process has imported bnexp.train already.
PROBE = r"""
import gc, json, sys, weakref

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

from bnexp.startup import import_trainer
assert "torch" not in sys.modules
gc.collect()  # the allocation count starts at 0: no automatic collection frees `before`
before = cycle()  # unreachable garbage made before the import
module = import_trainer()
frozen = gc.get_freeze_count()
after = cycle()  # garbage made after it
gc.collect()
again = import_trainer()
print(json.dumps({
    "same_module": module is again and module is sys.modules["bnexp.train"],
    "dynamo": "torch._dynamo" in sys.modules,
    "frozen": frozen,
    "frozen_again": gc.get_freeze_count(),
    "gc_enabled": gc.isenabled(),
    "before_freed": before() is None,
    "after_freed": after() is None,
}))
"""


def test_import_trainer_freezes_the_imports_once_and_keeps_collecting():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True).stdout
    r = json.loads(out.splitlines()[-1])
    assert r["same_module"] and r["dynamo"]
    assert r["frozen"] > 100_000  # torch's objects: hundreds of thousands
    assert r["frozen_again"] == r["frozen"]  # a second job in the process freezes nothing
    assert r["gc_enabled"]
    assert r["before_freed"], "garbage from before the import was frozen instead of freed"
    assert r["after_freed"], "the GC no longer collects cycles made after the import"


def test_import_trainer_leaves_a_disabled_gc_disabled():
    code = ("import gc; gc.disable(); from bnexp.startup import import_trainer; "
            "import_trainer(); print(gc.isenabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
