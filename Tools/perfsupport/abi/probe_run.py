"""Run by abi-check.sh with the PATCHED interpreter and -X perf: exercises
the perfprobe extension that was compiled against the STOCK headers."""

import os
import sys

import perfprobe


def probe_callback(i):
    return i * 2


print(perfprobe.call_each(probe_callback, 5))
code = probe_callback.__code__
expected = (code.co_argcount, code.co_firstlineno, code.co_name)
print("code_info", "ok" if perfprobe.code_info(probe_callback) == expected
      else "MISMATCH %r != %r" % (perfprobe.code_info(probe_callback),
                                  expected))
print("tstate", "ok" if perfprobe.tstate_check() else "MISMATCH")
active = getattr(sys, "is_stack_trampoline_active", None)
print("trampoline", "absent" if active is None else active())
print("pid=%d" % os.getpid())
