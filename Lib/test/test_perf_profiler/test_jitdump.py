"""The jitdump of the perf_jit backend (/tmp/jit-PID.dump): header,
records and names, through -X perf_jit, sys and a switch from perf."""

import collections
import os
import platform
import stat
import unittest

from test.test_perf_profiler.util import (
    CONTROL_CHARS, CONTROL_NAMES_SCRIPT, JitDump, PerfTestCase, entry_name,
    jitdump_path)


# ---- perf_jit: the jitdump --------------------------------------------------

JIT_SCRIPT = """\
import sys
{activation}
def foo():
    return sum(range(10))

def bar():
    return foo()

def baz():
    return bar()

class K:
    def method(self):
        return baz()

for _ in range(100):
    K().method()
print(int(sys.is_stack_trampoline_active()))
"""

ELF_MACHINES = {"x86_64": 62, "aarch64": 183}


class TestJitDump(PerfTestCase):

    def check_jitdump(self, *args, activation="",
                      qualnames=("foo", "bar", "baz", "K.method", "<module>")):
        script = self.make_script(JIT_SCRIPT.format(activation=activation))
        res = self.run_ok(*args, script)
        self.assertEqual(res.err, b"")
        self.assertEqual(res.out, b"1\n")
        path = jitdump_path(res.pid)
        self.assertTrue(os.path.exists(path), f"{path} was not written")
        st = os.lstat(path)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(st.st_uid, os.geteuid())
        dump = self.read_jitdump(res.pid)

        header = dump.header
        self.assertEqual(header.version, 1)
        self.assertEqual(header.total_size, 40)
        self.assertEqual(header.pid, res.pid)
        machine = platform.machine()
        if machine in ELF_MACHINES:
            self.assertEqual(header.elf_mach, ELF_MACHINES[machine])

        try:
            loads = dump.code_loads()
        except ValueError as exc:
            self.fail(f"invalid CODE_LOAD: {exc}")
        self.assertTrue(loads)
        indexes = [load.code_index for _, load in loads]
        self.assertEqual(len(indexes), len(set(indexes)),
                         "code_index not unique")
        for i, load in loads:
            self.assertEqual(load.pid, res.pid)
            self.assertGreater(load.code_size, 0)
            self.assertTrue(load.name.startswith(b"py::"), load.name)
            self.assertIsNone(CONTROL_CHARS.search(load.name), load.name)
            self.assertGreaterEqual(i, 2)
            previous = dump.records[i - 2:i]
            self.assertEqual(
                sorted(r.id for r in previous),
                [JitDump.CODE_DEBUG_INFO, JitDump.CODE_UNWINDING_INFO],
                f"records before CODE_LOAD of {load.name!r}")
            for record in previous:
                try:
                    if record.id == JitDump.CODE_DEBUG_INFO:
                        info = dump.parse_debug_info(record)
                        self.assertEqual(info.code_addr, load.code_addr)
                    else:
                        unwind = dump.parse_unwinding_info(record)
                        self.assertGreater(unwind.unwinding_size, 0)
                        self.assertLessEqual(unwind.eh_frame_hdr_size,
                                             unwind.unwinding_size)
                except ValueError as exc:
                    self.fail(f"invalid record: {exc}")

        names = collections.Counter(load.name for _, load in loads)
        for qualname in qualnames:
            name = entry_name(qualname, script)
            self.assertEqual(names[name], 1, name)
        return dump

    def test_x_option(self):
        self.check_jitdump("-X", "perf_jit")

    def test_sys_activate(self):
        self.check_jitdump(
            activation='sys.activate_stack_trampoline("perf_jit")',
            qualnames=("foo", "bar", "baz", "K.method"))

    def test_switch_backend(self):
        # From the map to the jitdump in one process: functions that run
        # after the switch are in the jitdump (<module> was entered before).
        self.check_jitdump(
            "-X", "perf",
            activation='sys.activate_stack_trampoline("perf_jit")',
            qualnames=("foo", "bar", "baz", "K.method"))

    def test_control_characters_in_names(self):
        # Replaced by '?' as in the perf map, in function names and in the
        # file names of the line tables: perf script prints one frame a
        # line, so a newline would add frames that no code has.
        script = self.make_script(CONTROL_NAMES_SCRIPT)
        res = self.run_ok("-X", "perf_jit", script)
        dump = self.read_jitdump(res.pid)
        names = [load.name for _, load in dump.code_loads()]
        files = [entry.name for record in dump.records
                 if record.id == JitDump.CODE_DEBUG_INFO
                 for entry in dump.parse_debug_info(record).entries]
        for name in names + files:
            self.assertIsNone(CONTROL_CHARS.search(name), name)
        for filename in ("a?b.py", "tab?here?.py"):
            self.assertEqual(files.count(filename.encode()), 2, filename)
            for qualname in ("f", "<module>"):
                self.assertEqual(
                    names.count(entry_name(qualname, filename)), 1,
                    (qualname, filename))
        self.assertEqual(names.count(entry_name("bad?name?", script)), 1)


if __name__ == "__main__":
    unittest.main()
