"""How profiling is turned on and off: -X perf and -X perf_jit,
PYTHONPERFSUPPORT and PYTHON_PERF_JIT_SUPPORT, which of them wins, the
warnings about invalid values, the sys functions
(sys.activate_stack_trampoline() and friends) and the hook of each
subinterpreter."""

import json
import os
import re
import textwrap
import unittest

from test.support import import_helper
from test.test_perf_profiler.util import (
    TRY_ACTIVATE, PerfMap, PerfTestCase, entry_name)


# ---- Activation -------------------------------------------------------------

PROBE_SCRIPT = """\
import sys
{before}
def probe_func():
    return 1
probe_func()
print(int(sys.is_stack_trampoline_active()))
"""


class TestActivation(PerfTestCase):

    def probe(self, *args, before="", env=None, isolated=None):
        script = self.make_script(PROBE_SCRIPT.format(before=before))
        res = self.run_ok(*args, script, env=env, isolated=isolated)
        lines = res.out.splitlines()
        self.assertEqual(len(lines), 1, res)
        return res, bool(int(lines[0])), script

    def assertOn(self, *args, **kwargs):
        res, active, script = self.probe(*args, **kwargs)
        self.assertTrue(active, res)
        self.assertEqual(res.err, b"")
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "probe_func", filename=script)
        if "activate_stack_trampoline" not in kwargs.get("before", ""):
            # On from the start: the module's code was entered with it.
            self.assertNamedOnce(pmap, "<module>", filename=script)
        return res

    def assertOff(self, *args, **kwargs):
        """Off from the start: no map at all, nothing said."""
        res, active, script = self.probe(*args, **kwargs)
        self.assertFalse(active, res)
        self.assertNoMap(res.pid)
        self.assertNoJitdump(res.pid)
        return res

    def assertDeactivated(self, *args, **kwargs):
        """On at start-up, then off before probe_func ran."""
        res, active, script = self.probe(*args, **kwargs)
        self.assertFalse(active, res)
        self.assertEqual(res.err, b"")
        pmap = self.read_map(res.pid)
        self.assertNotNamed(pmap, "probe_func", filename=script)
        self.assertNamedOnce(pmap, "<module>", filename=script)
        return res

    def test_default_off(self):
        self.assertOff()
        self.assertOff(env={"PYTHONPATH": ""})

    def test_x_option(self):
        self.assertOn("-X", "perf")
        self.assertOn("-X", "perf=1")
        self.assertOn("-X", "perf=2")

    def test_x_option_empty_value(self):
        # "-X perf=" means on, like "-X perf" (as for -X frozen_modules=),
        # and wins over an environment variable that says off.
        res = self.assertOn("-X", "perf=")
        self.assertEqual(res.err, b"")
        self.assertOn("-X", "perf=", env={"PYTHONPERFSUPPORT": "0"})
        self.assertOff("-X", "perf=", "-X", "perf=0")
        self.assertJitOn("-X", "perf_jit=")
        self.assertJitOn("-X", "perf=0", "-X", "perf_jit=")

    def test_env_var(self):
        self.assertOn(env={"PYTHONPERFSUPPORT": "1"})

    def test_env_var_nonzero_integer(self):
        self.assertOn(env={"PYTHONPERFSUPPORT": "2"})

    def test_sys_activate(self):
        self.assertOn(before='sys.activate_stack_trampoline("perf")')

    def test_env_var_off_values(self):
        for value in ("0", ""):
            with self.subTest(value=value):
                res = self.assertOff(env={"PYTHONPERFSUPPORT": value})
                self.assertEqual(res.err, b"")

    def test_env_var_invalid(self):
        res = self.assertOff(env={"PYTHONPERFSUPPORT": "yes"})
        self.assertIn(b"PYTHONPERFSUPPORT", res.err)
        self.assertIn(b"invalid value", res.err)

    def test_x_option_invalid(self):
        res = self.assertOff("-X", "perf=maybe")
        self.assertIn(b"-X perf=maybe", res.err)
        self.assertIn(b"invalid value", res.err)

    def test_x_option_off(self):
        res = self.assertOff("-X", "perf=0")
        self.assertEqual(res.err, b"")

    def test_x_option_overrides_env(self):
        res = self.assertOff("-X", "perf=0", env={"PYTHONPERFSUPPORT": "1"})
        self.assertEqual(res.err, b"")
        self.assertOn("-X", "perf", env={"PYTHONPERFSUPPORT": "0"})

    def test_sys_overrides_x_option(self):
        self.assertDeactivated(
            "-X", "perf", before="sys.deactivate_stack_trampoline()")

    def test_sys_overrides_env(self):
        self.assertDeactivated(
            before="sys.deactivate_stack_trampoline()",
            env={"PYTHONPERFSUPPORT": "1"})

    def test_sys_activate_overrides_x_option_off(self):
        self.assertOn("-X", "perf=0",
                      before='sys.activate_stack_trampoline("perf")')

    def test_ignore_environment(self):
        env = {"PYTHONPERFSUPPORT": "1", "PYTHON_PERF_JIT_SUPPORT": "1"}
        self.assertOff("-E", env=env, isolated=False)
        self.assertOff("-I", env=env, isolated=False)

    def assertJitOn(self, *args, **kwargs):
        res, active, script = self.probe(*args, **kwargs)
        self.assertTrue(active, res)
        self.assertEqual(res.err, b"")
        names = self.jitdump_names(res.pid)
        self.assertEqual(names.count(entry_name("probe_func", script)), 1)
        pmap = PerfMap.read(res.pid)
        if pmap is not None:
            self.assertNotNamed(pmap, "probe_func", filename=script)

    def test_last_x_option_wins(self):
        self.assertOn("-X", "perf_jit", "-X", "perf")
        self.assertOn("-X", "perf_jit=1", "-X", "perf=1")
        self.assertOff("-X", "perf", "-X", "perf=0")
        self.assertOff("-X", "perf", "-X", "perf_jit=0")

    def test_last_x_option_wins_jit(self):
        self.assertJitOn("-X", "perf", "-X", "perf_jit")

    def test_jit_env_var(self):
        self.assertJitOn(env={"PYTHON_PERF_JIT_SUPPORT": "1"})

    def test_jit_env_var_wins_over_perf_env_var(self):
        self.assertJitOn(env={"PYTHONPERFSUPPORT": "1",
                              "PYTHON_PERF_JIT_SUPPORT": "1"})


# ---- The sys functions ------------------------------------------------------

class TestSysFunctions(PerfTestCase):

    def test_invalid_backend(self):
        script = self.make_script("""\
            import sys
            try:
                sys.activate_stack_trampoline("nope")
            except ValueError as exc:
                print(f"ValueError: {exc}")
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out.splitlines(),
                         [b"ValueError: invalid backend: nope", b"0"])
        self.assertNoMap(res.pid)

    def test_invalid_backend_type(self):
        script = self.make_script("""\
            import sys
            for args in [(1,), (None,), (b"perf",), ()]:
                try:
                    sys.activate_stack_trampoline(*args)
                except TypeError:
                    print("TypeError")
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out.splitlines(), [b"TypeError"] * 4 + [b"0"])
        self.assertNoMap(res.pid)

    def test_activate_twice(self):
        script = self.make_script("""\
            import sys
            def f():
                return 1
            sys.activate_stack_trampoline("perf")
            f()
            sys.activate_stack_trampoline("perf")
            f()
            print(int(sys.is_stack_trampoline_active()))
            """)
        for args in [(), ("-X", "perf")]:
            with self.subTest(args=args):
                res = self.run_ok(*args, script)
                self.assertEqual(res.out, b"1\n")
                self.assertEqual(res.err, b"")
                pmap = self.read_map(res.pid)
                self.assertNamedOnce(pmap, "f", filename=script)
                if args:
                    self.assertNamedOnce(pmap, "<module>", filename=script)

    def test_deactivate_when_inactive(self):
        script = self.make_script("""\
            import sys
            sys.deactivate_stack_trampoline()
            sys.deactivate_stack_trampoline()
            print(int(sys.is_stack_trampoline_active()))
            sys.activate_stack_trampoline("perf")
            sys.deactivate_stack_trampoline()
            sys.deactivate_stack_trampoline()
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out, b"0\n0\n")
        self.assertEqual(res.err, b"")

    def test_deactivate_before_anything_writes_nothing(self):
        script = self.make_script("""\
            import sys
            sys.deactivate_stack_trampoline()
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out, b"0\n")
        self.assertNoMap(res.pid)

    def test_other_eval_frame_function(self):
        import_helper.import_module("_testinternalcapi")
        script = self.make_script(textwrap.dedent("""\
            import sys, _testinternalcapi
            _testinternalcapi.set_eval_frame_record([])
            """) + TRY_ACTIVATE + textwrap.dedent("""\
            _testinternalcapi.set_eval_frame_default()
            sys.activate_stack_trampoline("perf")
            def after():
                return 1
            after()
            print(int(sys.is_stack_trampoline_active()))
            """))
        res = self.run_ok(script)
        lines = res.out.splitlines()
        self.assertEqual(len(lines), 3, res)
        self.assertTrue(lines[0].startswith(b"RuntimeError: "), lines[0])
        self.assertIn(b"another frame evaluation function", lines[0])
        self.assertEqual(lines[1:], [b"0", b"1"])
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "after", filename=script)

    def test_deactivate_and_reactivate(self):
        script = self.make_script("""\
            import sys
            def before():
                return 1
            def while_off():
                return 2
            def both():
                return 3
            def after():
                return 4
            sys.activate_stack_trampoline("perf")
            before()
            sys.deactivate_stack_trampoline()
            for _ in range(100):
                while_off(); both()
            sys.activate_stack_trampoline("perf")
            before(); both(); after()
            sys.deactivate_stack_trampoline()
            sys.activate_stack_trampoline("perf")
            for _ in range(100):
                before(); both(); after()
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out, b"1\n")
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "before", "both", "after", filename=script)
        self.assertNotNamed(pmap, "while_off", filename=script)

    def test_many_cycles(self):
        # Repeated activation must not exhaust anything (co_extra indexes,
        # memory) nor repeat lines.
        script = self.make_script("""\
            import sys
            def f():
                return 1
            for _ in range(5000):
                sys.activate_stack_trampoline("perf")
                f()
                sys.deactivate_stack_trampoline()
            print(int(sys.is_stack_trampoline_active()))
            """)
        res = self.run_ok(script)
        self.assertEqual(res.out, b"0\n")
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "f", filename=script)


# ---- Subinterpreters --------------------------------------------------------

# Run in the subinterpreter; formatted with the arguments of run_subinterp().
SUBINTERP_CODE = """\
import json, sys
result = {{"active_at_start": sys.is_stack_trampoline_active()}}
def sub_func():
    return 42
try:
    sys.activate_stack_trampoline({backend!r})
except RuntimeError as exc:
    result["error"] = str(exc)
result["active"] = sys.is_stack_trampoline_active()
sub_func()
if {deactivate!r}:
    sys.deactivate_stack_trampoline()
result["active_at_end"] = sys.is_stack_trampoline_active()
with open({result_file!r}, "w") as f:
    json.dump(result, f)
"""

SUBINTERP_SCRIPT = """
    import json, sys, _testcapi
    sub_code, result_file, main_active = sys.argv[1:]
    def main_func():
        pass
    if main_active == "yes":
        sys.activate_stack_trampoline("perf")
    else:
        # make the main interpreter known to the trampoline, inactive
        sys.activate_stack_trampoline("perf")
        sys.deactivate_stack_trampoline()
    before = sys.is_stack_trampoline_active()
    assert _testcapi.run_in_subinterp(sub_code) == 0
    after = sys.is_stack_trampoline_active()
    main_func()
    # The main interpreter can still (re)activate "perf".
    sys.activate_stack_trampoline("perf")
    def after_reactivation():
        pass
    after_reactivation()
    sys.deactivate_stack_trampoline()
    with open(result_file) as f:
        result = json.load(f)
    result.update(main_before=before, main_after=after)
    print("result=" + json.dumps(result), flush=True)
"""


class TestSubinterpreters(PerfTestCase):
    """The trampoline hook belongs to one interpreter."""

    def setUp(self):
        super().setUp()
        import_helper.import_module("_testcapi")

    def run_subinterp(self, main_active, sub_backend, sub_deactivates=True,
                      refused=False):
        """Run SUBINTERP_CODE in a subinterpreter, with the main interpreter
        active or not; check what both saw of the hook, and return the pid
        and the error of the subinterpreter's activation."""
        result_file = os.path.join(self.tmp, "result.json")
        sub_code = SUBINTERP_CODE.format(
            backend=sub_backend, deactivate=sub_deactivates,
            result_file=result_file)
        out, (pid,) = self.run_child(SUBINTERP_SCRIPT, sub_code, result_file,
                                     "yes" if main_active else "no")
        result = json.loads(re.search(r"^result=(.*)$", out, re.M)[1])
        error = result.pop("error", None)
        self.assertEqual(result, {
            # The main interpreter's hook is its own.
            "main_before": main_active, "main_after": main_active,
            # So is the subinterpreter's.
            "active_at_start": False, "active": not refused,
            "active_at_end": not refused and not sub_deactivates,
        })
        self.assertEqual(error is not None, refused, error)
        return pid, error

    def test_main_active(self):
        pid, _ = self.run_subinterp(True, "perf")
        pmap = self.read_map(pid)
        self.assertNamedOnce(pmap, "sub_func", "main_func",
                             "after_reactivation", filename="<string>")
        self.assertNoJitdump(pid)

    def test_main_inactive(self):
        pid, _ = self.run_subinterp(False, "perf")
        pmap = self.read_map(pid)
        self.assertNamedOnce(pmap, "sub_func", "after_reactivation",
                             filename="<string>")
        # main_func() ran with the main interpreter inactive.
        self.assertNotNamed(pmap, "main_func", filename="<string>")

    def test_other_backend_refused_while_main_active(self):
        pid, error = self.run_subinterp(True, "perf_jit", refused=True)
        self.assertIn("perf_jit", error)
        self.assertIn("another interpreter", error)
        pmap = self.read_map(pid)
        self.assertNotNamed(pmap, "sub_func", filename="<string>")
        self.assertNamedOnce(pmap, "main_func", filename="<string>")
        self.assertNoJitdump(pid)

    def test_other_backend_allowed_while_main_inactive(self):
        # The subinterpreter ends with perf_jit active; the main
        # interpreter switches back to perf afterwards.
        pid, _ = self.run_subinterp(False, "perf_jit", sub_deactivates=False)
        self.assertIn(entry_name("sub_func", "<string>"),
                      self.jitdump_names(pid))
        pmap = self.read_map(pid)
        self.assertNamedOnce(pmap, "after_reactivation", filename="<string>")


if __name__ == "__main__":
    unittest.main()
