"""Tests for the perf map C API (Include/cpython/perfmaps.h).

PyUnstable_PerfMapState_Init/Fini(), PyUnstable_WritePerfMapEntry(),
PyUnstable_CopyPerfMapFile() and PyUnstable_PerfTrampoline_CompileCode(),
reached through the test hooks of _testinternalcapi, checked against the
exact lines they write.  The other cases of the C API (persistence after
fork(), a C extension writing from several threads) and the stress cases
are in test_perf_profiler, whose helpers this module uses.
"""

import os
import re
import stat
import sys
import sysconfig
import unittest

from test import support
from test.support import import_helper


# The package's helpers skip this module, at import, where the perf support
# cannot run (see test_perf_profiler/__init__.py).

from test.test_perf_profiler.util import PY_NAME, PerfTestCase, map_path


class CAPITests(PerfTestCase):
    """The C API through the hooks of _testinternalcapi."""

    def setUp(self):
        super().setUp()
        import_helper.import_module("_testinternalcapi")

    def map_data(self, pid):
        """The bytes of the map of pid."""
        return self.read_map(pid, python_only=False).data

    def test_write_entry(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            assert t.perf_map_state_init() == 0
            assert t.write_perf_map_entry(0x1234, 0x56, "my_jit_func") == 0
            t.perf_map_state_fini()
        """)
        self.assertEqual(self.map_data(pid), b"1234 56 my_jit_func\n")
        st = os.stat(map_path(pid))
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(st.st_uid, os.geteuid())

    def test_several_entries_in_order(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            assert t.perf_map_state_init() == 0
            for i in range(100):
                res = t.write_perf_map_entry(0x10000 + i * 0x100, i + 1,
                                             f"entry_{i}")
                assert res == 0, res
            t.perf_map_state_fini()
        """)
        expected = b"".join(
            b"%x %x entry_%d\n" % (0x10000 + i * 0x100, i + 1, i)
            for i in range(100))
        self.assertEqual(self.map_data(pid), expected)

    def test_extreme_values(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            assert t.write_perf_map_entry(0, 0, "zero") == 0
            assert t.write_perf_map_entry(2**64 - 1, 2**32 - 1, "max") == 0
            assert t.write_perf_map_entry(0xABCDEF, 0xFF, "upper") == 0
            assert t.write_perf_map_entry(0x10, 1, "long_" + "n" * 5000) == 0
            assert t.write_perf_map_entry(0x20, 2, "caf\\xe9 \\u20ac") == 0
            assert t.write_perf_map_entry(0x30, 3, "with spaces  in it") == 0
        """)
        self.assertEqual(self.map_data(pid),
                         b"0 0 zero\n"
                         b"ffffffffffffffff ffffffff max\n"
                         b"abcdef ff upper\n"
                         b"10 1 long_" + b"n" * 5000 + b"\n"
                         b"20 2 caf\xc3\xa9 \xe2\x82\xac\n"
                         b"30 3 with spaces  in it\n")

    def test_write_without_init(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            assert t.write_perf_map_entry(0xbeef, 0x8, "lazy") == 0
        """)
        self.assertEqual(self.map_data(pid), b"beef 8 lazy\n")

    def test_init_twice(self):
        _, (pid,) = self.run_child("""
            import os, _testinternalcapi as t
            assert t.perf_map_state_init() == 0
            assert t.perf_map_state_init() == 0
            assert os.path.getsize(f"/tmp/perf-{os.getpid()}.map") == 0
            assert t.write_perf_map_entry(0x1, 0x2, "one") == 0
            assert t.perf_map_state_init() == 0
            assert t.write_perf_map_entry(0x3, 0x4, "two") == 0
            t.perf_map_state_fini()
        """)
        self.assertEqual(self.map_data(pid), b"1 2 one\n3 4 two\n")

    def test_fini_then_write_appends(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            assert t.perf_map_state_init() == 0
            assert t.write_perf_map_entry(0xa, 0x1, "before_fini") == 0
            t.perf_map_state_fini()
            t.perf_map_state_fini()       # twice: harmless
            assert t.write_perf_map_entry(0xb, 0x2, "after_fini") == 0
            t.perf_map_state_fini()
            assert t.perf_map_state_init() == 0
            assert t.write_perf_map_entry(0xc, 0x3, "after_init") == 0
        """)
        self.assertEqual(self.map_data(pid),
                         b"a 1 before_fini\nb 2 after_fini\nc 3 after_init\n")

    def test_existing_map_is_appended_to(self):
        # A map that exists before the process writes is kept, never
        # truncated.
        _, (pid,) = self.run_child("""
            import os, _testinternalcapi as t
            path = f"/tmp/perf-{os.getpid()}.map"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"100 10 already_there\\n")
            os.close(fd)
            assert t.perf_map_state_init() == 0
            assert t.write_perf_map_entry(0x200, 0x20, "new") == 0
        """)
        self.assertEqual(self.map_data(pid),
                         b"100 10 already_there\n200 20 new\n")

    def test_control_characters_in_names(self):
        _, (pid,) = self.run_child(r"""
            import _testinternalcapi as t
            names = ["two\nlines", "tab\there", "cr\r", "del\x7f",
                     "\x01\x1f", "esc\x1b[31m"]
            for i, name in enumerate(names):
                assert t.write_perf_map_entry(i, 1, name) == 0
        """)
        self.assertEqual(self.map_data(pid),
                         b"0 1 two?lines\n"
                         b"1 1 tab?here\n"
                         b"2 1 cr?\n"
                         b"3 1 del?\n"
                         b"4 1 ??\n"
                         b"5 1 esc?[31m\n")

    def test_copy_perf_map_file(self):
        source = os.path.join(self.tmp, "other.map")
        content = (b"aaa0 10 first\n"
                   b"bbb0 20 second with spaces\n"
                   b"ccc0 30 last_without_newline")
        with open(source, "wb") as f:
            f.write(content)
        _, (pid,) = self.run_child("""
            import sys, _testinternalcapi as t
            assert t.write_perf_map_entry(0x1, 0x1, "own") == 0
            assert t.copy_perf_map_file(sys.argv[1]) == 0
        """, source)
        # Lines are copied as they are; a last line without a newline
        # gets one, so that the next entry starts a line of its own.
        self.assertEqual(self.map_data(pid), b"1 1 own\n" + content + b"\n")
        with open(source, "rb") as f:
            self.assertEqual(f.read(), content)

    def test_copy_large_perf_map_file(self):
        # More than the 64 KiB copy buffer, with a line longer than it.
        lines = [b"%x %x copied_%d" % (0x1000 + i, i % 200 + 1, i)
                 for i in range(6000)]
        lines.insert(3000, b"fff 1 huge_" + b"h" * 150_000)
        content = b"\n".join(lines) + b"\n"
        source = os.path.join(self.tmp, "big.map")
        with open(source, "wb") as f:
            f.write(content)
        _, (pid,) = self.run_child("""
            import sys, _testinternalcapi as t
            assert t.perf_map_state_init() == 0
            assert t.copy_perf_map_file(sys.argv[1]) == 0
            assert t.write_perf_map_entry(0x2, 0x2, "after_copy") == 0
        """, source)
        self.assertEqual(self.map_data(pid), content + b"2 2 after_copy\n")

    def test_copy_missing_file(self):
        missing = os.path.join(self.tmp, "missing.map")
        _, (pid,) = self.run_child("""
            import sys, _testinternalcapi as t
            assert t.copy_perf_map_file(sys.argv[1]) == -1
            assert t.write_perf_map_entry(0x5, 0x6, "still_works") == 0
            assert t.copy_perf_map_file(sys.argv[1]) == -1
            # a directory cannot be read
            assert t.copy_perf_map_file(sys.argv[2]) == -1
        """, missing, self.tmp)
        self.assertEqual(self.map_data(pid), b"5 6 still_works\n")

    def test_copy_own_map(self):
        # Copying the process's own map into itself must stop: either it
        # is refused, or what the map held when the copy began is appended
        # once.  A file size limit keeps a copy that never reaches the end
        # of its source (because it reads what it appends) from filling
        # /tmp.
        out, (pid,) = self.run_child("""
            import os, resource, signal, _testinternalcapi as t
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            path = f"/tmp/perf-{os.getpid()}.map"
            assert t.write_perf_map_entry(0x1, 0x1, "self_copy") == 0
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
            print(f"copy={t.copy_perf_map_file(path)}", flush=True)
        """)
        result = int(re.search(r"^copy=(-?\d+)$", out, re.M)[1])
        data = self.map_data(pid)
        line = b"1 1 self_copy\n"
        self.assertLessEqual(len(data), 2 * len(line),
                             f"copy returned {result} and the map grew to "
                             f"{len(data)} bytes (the file size limit)")
        # The copy is refused: the map cannot be its own parent.
        self.assertEqual(result, -1)
        self.assertEqual(data, line)

    def test_compile_trampoline_inactive_is_noop(self):
        _, (pid,) = self.run_child("""
            import os, sys, _testinternalcapi as t
            def not_compiled():
                pass
            assert not sys.is_stack_trampoline_active()
            assert t.compile_perf_trampoline(not_compiled.__code__) is None
            try:
                t.compile_perf_trampoline(not_compiled)
            except TypeError:
                pass
            else:
                raise AssertionError("TypeError not raised")
        """)
        self.assertNoMap(pid)

    def test_compile_trampoline_active(self):
        _, (pid,) = self.run_child("""
            import sys, _testinternalcapi as t
            def compiled_first():
                pass
            sys.activate_stack_trampoline("perf")
            t.compile_perf_trampoline(compiled_first.__code__)
            t.write_perf_map_entry(0x77, 0x7, "marker_after_compile")
            compiled_first()
            t.compile_perf_trampoline(compiled_first.__code__)
            sys.deactivate_stack_trampoline()
        """)
        pmap = self.read_map(pid, python_only=False)
        line = self.the_entry(pmap, "compiled_first", "<string>").line
        # Described when compiled, before it ran; not again afterwards.
        self.assertLess(pmap.lines.index(line),
                        pmap.lines.index(b"77 7 marker_after_compile"))

    def test_interpreter_and_c_api_share_the_map(self):
        _, (pid,) = self.run_child("""
            import _testinternalcapi as t
            def first():
                pass
            def second():
                pass
            def third():
                pass
            first()
            assert t.write_perf_map_entry(0xaaa000, 0x10, "c_entry_1") == 0
            second()
            assert t.write_perf_map_entry(0xbbb000, 0x20, "c_entry_2") == 0
            # Closing the map under the interpreter's feet: it reopens it.
            t.perf_map_state_fini()
            third()
            assert t.write_perf_map_entry(0xccc000, 0x30, "c_entry_3") == 0
        """, xoptions=("-X", "perf"))
        pmap = self.read_map(pid, python_only=False)
        order = [
            self.the_entry(pmap, "first", "<string>").line,
            b"aaa000 10 c_entry_1",
            self.the_entry(pmap, "second", "<string>").line,
            b"bbb000 20 c_entry_2",
            self.the_entry(pmap, "third", "<string>").line,
            b"ccc000 30 c_entry_3",
        ]
        positions = [pmap.lines.index(line) for line in order]
        self.assertEqual(positions, sorted(positions))
        for entry in pmap.entries:
            if entry.line not in order[1::2]:
                self.assertRegex(entry.name, PY_NAME)

    @support.requires_fork()
    def test_write_after_fork(self):
        # A forked child writes its own map, never its parent's.
        _, pids = self.run_child("""
            import os, _testinternalcapi as t
            assert t.write_perf_map_entry(0x1, 0x1, "parent_before") == 0
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    print(f"pid={os.getpid()}", flush=True)
                    assert t.write_perf_map_entry(0x2, 0x2, "child") == 0
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
            assert t.write_perf_map_entry(0x3, 0x3, "parent_after") == 0
        """)
        parent, child = pids
        self.assertEqual(self.map_data(parent),
                         b"1 1 parent_before\n3 3 parent_after\n")
        self.assertEqual(self.map_data(child), b"2 2 child\n")


if __name__ == "__main__":
    unittest.main()
