"""Programs under the trampolines: generators and coroutines are named,
specialised Python-to-Python calls stay specialised, and the output and exit
code of a program do not change."""

import unittest

from test.test_perf_profiler.util import BEHAVIOUR_SCRIPT, PerfTestCase


# ---- Generators, coroutines and program behaviour ---------------------------

ASYNC_SCRIPT = """\
import asyncio

def gen():
    for i in range(3):
        yield i

async def leaf():
    await asyncio.sleep(0)
    return 1

async def middle():
    return await leaf() + 1

async def agen():
    for i in range(3):
        yield i
        await asyncio.sleep(0)

async def top():
    total = await middle()
    async for value in agen():
        total += value
    return total

print(list(gen()), asyncio.run(top()), sum(x for x in range(5)))
"""


FAST_CALLS_SCRIPT = """\
import dis, sys

def exact(a, b):
    return a + b

def with_defaults(a, b=1):
    return a + b

def run():
    total = 0
    for i in range(300):
        total += exact(i, 1)
        total += with_defaults(i)
    return total

def specialised_calls():
    ops = {i.opname for i in dis.get_instructions(run, adaptive=True)}
    return sorted(op for op in ops if op.startswith("CALL_PY"))

run()                                   # the call sites specialise
if "generic" in sys.argv:
    import _testinternalcapi
    _testinternalcapi.set_perf_trampoline_generic_calls(True)
sys.activate_stack_trampoline("perf")
print(run(), specialised_calls())
"""


class TestFastCalls(PerfTestCase):
    """Under the perf trampoline's hook, and no other, Python-to-Python calls
    stay specialised and still enter the callee's trampoline."""

    def test_specialised_calls_use_trampolines(self):
        script = self.make_script(FAST_CALLS_SCRIPT)
        res = self.run_ok(script)
        self.assertEqual(
            res.out.decode(),
            "90300 ['CALL_PY_EXACT_ARGS', 'CALL_PY_WITH_DEFAULTS']\n")
        # The specialised calls went through the hook: the callees, first
        # run after the activation, have their trampolines.
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "exact", "with_defaults", "run",
                             filename=script)

    def test_other_hooks_deoptimise(self):
        # The same hook under another name takes the generic road, as any
        # PEP 523 hook does in stock 3.11: the call sites deoptimise.
        script = self.make_script(FAST_CALLS_SCRIPT)
        res = self.run_ok(script, "generic")
        self.assertEqual(res.out.decode(), "90300 []\n")
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "exact", "with_defaults", "run",
                             filename=script)


class TestBehaviour(PerfTestCase):

    def test_generators_and_coroutines_named(self):
        script = self.make_script(ASYNC_SCRIPT)
        res = self.run_ok("-X", "perf", script)
        self.assertEqual(res.out, b"[0, 1, 2] 5 10\n")
        pmap = self.read_map(res.pid)
        self.assertNamedOnce(pmap, "gen", "leaf", "middle", "agen", "top",
                             "<genexpr>", "<module>", filename=script)

    def test_output_unchanged(self):
        script = self.make_script(BEHAVIOUR_SCRIPT)
        plain = self.run_python(script)
        self.assertEqual(plain.rc, 3, plain)
        self.assertIn(b"deep failure", plain.out)
        runs = {
            "-X perf": self.run_python("-X", "perf", script),
            "PYTHONPERFSUPPORT": self.run_python(
                script, env={"PYTHONPERFSUPPORT": "1"}),
            "sys": self.run_python(
                "-c", "import sys, runpy; "
                "sys.activate_stack_trampoline('perf'); "
                f"runpy.run_path({script!r}, run_name='__main__')"),
        }
        for how, res in runs.items():
            with self.subTest(how=how):
                self.assertEqual(res.rc, plain.rc)
                self.assertEqual(res.out, plain.out)
                self.assertEqual(res.err, plain.err)
                pmap = self.read_map(res.pid)
                self.assertNamedOnce(pmap, "fib", "echo", "fails", "produce",
                                     "Two.value", "managed", filename=script)


if __name__ == "__main__":
    unittest.main()
