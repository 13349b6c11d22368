"""The packages of "make deb" in a clean Debian 12 root, as a user uses them.

    test_deb_root.py ROOT DEMO_PY DEBIAN_VERSION

Run by deb-test.sh as root, in a mount namespace where ROOT has /proc, /sys,
/dev and this machine's /tmp.  The checks run in order and stop at the
first failure:

  01  the root has Debian's own python3.11 (DEBIAN_VERSION, the one our
      packages are made from), no perf support
  02  deb-install.sh ("make deb-install") replaces exactly the packages
      that are installed, /usr/bin/python3.11 stays Debian's PIE build; then
      "apt install ./*.deb" installs every other package of "make deb"; a
      newer Debian version in the root's sources (a security update) is
      still apt's candidate: ours never hides Debian's updates
  03  python3.11 -m sysconfig shows PY_HAVE_PERF_TRAMPOLINE = 1; the
      interpreter was built with frame pointers
  04  this machine's perf record -g + perf report of -X perf running the
      documentation's example in the root names py::foo under py::bar under
      py::baz, for every interpreter the packages ship: python3.11 (PIE,
      python3.11-pie once python3.11-nopie diverts it), python3.11-nopie's,
      the debug python3.11d, and a program embedding libpython3.11.so
  05  Debian's own compiled python3-yaml, python3-numpy and python3-lxml do
      real work under -X perf and -X perf_jit, and their Python functions
      are in the perf map and the jitdump
  06  python3.11 -m venv, Debian's pure-Python wheel (python3-wheel-whl)
      installed in it with pip, run under -X perf: named in the map
  07  the packaged tests (libpython3.11-testsuite): python3.11 -m test
      test_perf_profiler test_perfmaps, with perf and gdb in the root and
      PERF_TESTS_REQUIRE_TOOLS=1 (a missing tool fails instead of skipping)
  08  apt install python3.11=3.11.2-6+deb12u8 ... goes back to Debian's
      packages; Debian's python3.11 and the compiled packages still work
"""

import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = DEMO = DEBIAN_VERSION = None
DEB_DIR = "/var/cache/perf-debs"      # inside the root
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
HAVE_PERF_LINE = re.compile(r'PY_HAVE_PERF_TRAMPOLINE = "?1"?$', re.M)

WORKLOAD = r"""
import os, sys
import yaml, numpy, lxml.etree, lxml.html

def use_yaml():
    doc = yaml.load("a: [1, 2, {b: c}]\nd: text\n", Loader=yaml.CSafeLoader)
    assert doc == {"a": [1, 2, {"b": "c"}], "d": "text"}, doc
    return yaml.dump(doc, Dumper=yaml.CSafeDumper)

def use_numpy():
    a = numpy.arange(10000.0).reshape(100, 100)
    b = numpy.linalg.inv(a @ a.T + numpy.eye(100) * 1e6)
    return float(numpy.round(numpy.trace(b) * 1e6, 3))

def use_lxml():
    tree = lxml.etree.fromstring("<a><b>x</b><b>y</b></a>")
    assert [b.text for b in tree.iter("b")] == ["x", "y"]
    return lxml.html.fromstring("<p>hello <b>world</b></p>").text_content()

print(os.getpid())
print(use_yaml().strip().replace("\n", " "), use_numpy(), use_lxml())
"""

# Modules whose Python code the workload runs; the map must name some of it.
PACKAGES = ("yaml", "numpy", "lxml")


def run(args, *, root=True, check=True, timeout=1800, env=None):
    cmd = (["chroot", ROOT] if root else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=timeout, env=env or ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with "
                             f"{proc.returncode}:\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def installed_versions(names):
    """{package: version} of those of names that are installed."""
    out = run(["dpkg-query", "-W", "-f",
               "${Package}\t${Version}\t${db:Status-Abbrev}\n", *names],
              check=False).stdout
    return {p: v for p, v, status in (line.split("\t", 2)
                                      for line in out.splitlines())
            if status.startswith("ii")}


def deb_packages():
    names = []
    for path in sorted(glob.glob(os.path.join(ROOT, DEB_DIR.lstrip("/"),
                                              "*.deb"))):
        names.append(subprocess.run(["dpkg-deb", "-f", path, "Package"],
                                    capture_output=True, text=True,
                                    check=True).stdout.strip())
    return names


def map_names(path):
    """The names of a perf map, "py::qualname:filename"."""
    with open(path) as f:
        return [line.rstrip("\n").split(" ", 2)[2] for line in f
                if line.strip()]


def perf_samples(script_output):
    """perf script's samples as lists of symbols, innermost first."""
    samples, frames = [], None
    for line in script_output.splitlines():
        if not line.strip():
            if frames:
                samples.append(frames)
            frames = None
        elif frames is None:
            frames = []
        else:
            parts = line.split(None, 1)
            if len(parts) == 2:
                frames.append(parts[1].rsplit(" (", 1)[0])
    if frames:
        samples.append(frames)
    return samples


class DebRoot(unittest.TestCase):
    packages = []

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="deb-test-", dir="/tmp")
        os.chmod(self.tmp, 0o755)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def python(self, args, check=True, env=None, exe="/usr/bin/python3.11"):
        return run([exe, *args], check=check, env=env)

    def remove_after(self, *paths):
        for path in paths:
            self.addCleanup(lambda p=path: os.path.exists(p) and os.unlink(p))

    def test_01_debian_python(self):
        self.assertEqual(installed_versions(["python3.11"]).get("python3.11"),
                         DEBIAN_VERSION)
        out = self.python(["-m", "sysconfig"]).stdout
        self.assertNotRegex(out, HAVE_PERF_LINE)

    def test_02_install_over_debian(self):
        names = deb_packages()
        self.assertIn("python3.11", names)
        self.assertIn("libpython3.11-testsuite", names)
        DebRoot.packages = names
        shutil.copy("/etc/resolv.conf", os.path.join(ROOT, "etc/resolv.conf"))
        run(["apt-get", "update", "-q"])
        # In place: ours for each of Debian's that is installed, no other.
        before = set(installed_versions(names))
        run(["sh", f"{DEB_DIR}/deb-install.sh", DEB_DIR])
        after = installed_versions(names)
        self.assertEqual(set(after), before)
        for name in before:
            self.assertTrue(after[name].endswith("+perf1"),
                            f"{name}: installed {after[name]}")
        diversions = run(["dpkg-divert", "--list", "/usr/bin/python3.11"]
                         ).stdout
        self.assertEqual(diversions.strip(), "", "python3.11 diverted")
        print(f"\n  deb-install replaced the {len(before)} installed: "
              f"{' '.join(sorted(before))}", flush=True)
        # Then every other package.
        run(["sh", "-c", f"cd {DEB_DIR} && apt-get install -y -q ./*.deb"])
        versions = installed_versions(names)
        for name in names:
            self.assertTrue(versions.get(name, "").endswith("+perf1"),
                            f"{name}: installed {versions.get(name)}")
        print(f"  then all {len(names)} packages of make deb: "
              f"{' '.join(names)}", flush=True)
        policy = run(["apt-cache", "policy", "python3.11"]).stdout
        candidate = re.search(r"Candidate: (\S+)", policy).group(1)
        ours = versions["python3.11"]
        if candidate != ours:
            # Debian's archive has a newer python3.11 than ours: apt must
            # want it (ours sorts below Debian's next revision).
            run(["dpkg", "--compare-versions", candidate, "gt", ours])
            print(f"  apt's candidate is Debian's {candidate}, newer than "
                  f"{ours}: a Debian update replaces ours", flush=True)

    def test_03_sysconfig_and_frame_pointers(self):
        out = self.python(["-m", "sysconfig"]).stdout
        self.assertRegex(out, HAVE_PERF_LINE)
        flags = self.python(["-c", "import sysconfig; print(sysconfig."
                             "get_config_var('CONFIGURE_CFLAGS'), sysconfig."
                             "get_config_var('PY_CFLAGS'))"]).stdout
        self.assertIn("-fno-omit-frame-pointer", flags)

    def test_04_host_perf_names_the_chain(self):
        embed = self.embedding_program()
        # python3.11-nopie (installed in 02) diverts /usr/bin/python3.11 to
        # python3.11-pie: the one Debian users run without it.
        self.assertTrue(os.path.exists(os.path.join(ROOT, "usr/bin/"
                                                    "python3.11-pie")))
        interpreters = [
            ("python3.11 (PIE)", "/usr/bin/python3.11-pie", 3000000),
            ("python3.11-nopie", "/usr/bin/python3.11", 3000000),
            ("python3.11d (debug)", "/usr/bin/python3.11d", 1000000),
            ("embedding libpython3.11.so", embed, 3000000),
        ]
        print(flush=True)
        for label, exe, count in interpreters:
            with self.subTest(label):
                self.check_chain(label, exe, count)

    def embedding_program(self):
        """A program that embeds the shared libpython3.11 (as mod_wsgi or
        an application does), built in the root with python3.11-config."""
        source = os.path.join(self.tmp, "embed.c")
        exe = os.path.join(self.tmp, "embed")
        with open(source, "w") as f:
            f.write("#include <Python.h>\n"
                    "int main(int argc, char **argv)\n"
                    "{\n    return Py_BytesMain(argc, argv);\n}\n")
        run(["sh", "-c", f"gcc -o {exe} {source} "
             "$(python3.11-config --cflags --embed) "
             "$(python3.11-config --ldflags --embed)"])
        libs = run(["ldd", exe]).stdout
        self.assertIn("libpython3.11.so.1.0", libs)
        return exe

    def check_chain(self, label, exe, count):
        demo = os.path.join(self.tmp, "demo.py")
        shutil.copy(DEMO, demo)
        data = os.path.join(self.tmp, "perf.data")
        run(["perf", "record", "-q", "-g", "-F", "999", "-o", data, "--",
             "chroot", ROOT, exe, "-X", "perf", demo, str(count)], root=False)
        script = run(["perf", "script", "-i", data, "-F", "pid,ip,sym,dso"],
                     root=False).stdout
        pids = {int(m) for m in re.findall(r"^\s*(\d+)\s*$", script, re.M)}
        for pid in pids:
            self.remove_after(f"/tmp/perf-{pid}.map")
        with_foo = complete = 0
        for frames in perf_samples(script):
            # "py::foo:/tmp/deb-test-.../demo.py" -> "py::foo"
            short = ["py::" + f[4:].split(":", 1)[0]
                     if f.startswith("py::") else f for f in frames]
            if "py::foo" not in short:
                continue
            with_foo += 1
            rest = short[short.index("py::foo"):]
            if "py::bar" in rest and "py::baz" in rest[rest.index("py::bar"):]:
                complete += 1
        report = run(["perf", "report", "-i", data, "--stdio", "--no-children",
                      "-g", "caller"], root=False).stdout
        for name in ("py::foo", "py::bar", "py::baz"):
            self.assertIn(name, report)
        print(f"  host perf, {label}: {complete} of {with_foo} samples in "
              f"py::foo have py::bar and py::baz above it", flush=True)
        self.assertGreaterEqual(with_foo, 50)
        self.assertGreater(complete, with_foo * 0.9)

    def workload(self, option):
        script = os.path.join(self.tmp, "workload.py")
        with open(script, "w") as f:
            f.write(WORKLOAD)
        out = self.python(["-X", option, script]).stdout.split("\n", 1)
        pid = int(out[0])
        self.remove_after(f"/tmp/perf-{pid}.map", f"/tmp/jit-{pid}.dump")
        self.assertIn("hello world", out[1])
        return pid

    def test_05_compiled_packages(self):
        pid = self.workload("perf")
        names = map_names(f"/tmp/perf-{pid}.map")
        for package in PACKAGES:
            where = f"/usr/lib/python3/dist-packages/{package}/"
            named = [n for n in names if where in n]
            self.assertTrue(named, f"no function of {where} in the map")
        pid = self.workload("perf_jit")
        with open(f"/tmp/jit-{pid}.dump", "rb") as f:
            dump = f.read()
        for package in PACKAGES:
            self.assertIn(f"/usr/lib/python3/dist-packages/{package}/"
                          .encode(),
                          dump)
        print(f"\n  yaml, numpy, lxml under -X perf and -X perf_jit: "
              f"{len(names)} names in the map", flush=True)

    def test_06_venv(self):
        venv = "/opt/perf-venv"
        self.python(["-m", "venv", venv])
        run(["sh", "-c", f"{venv}/bin/python -m pip install -q --no-index "
             f"/usr/share/python-wheels/wheel-*.whl"])
        out = run([f"{venv}/bin/python", "-X", "perf", "-c",
                   "import os, runpy, sys; print(os.getpid(), flush=True); "
                   "sys.argv = ['wheel', 'version']; "
                   "runpy.run_module('wheel', run_name='__main__')"]).stdout
        pid = int(out.split()[0])
        self.remove_after(f"/tmp/perf-{pid}.map")
        self.assertIn("wheel", out)
        names = map_names(f"/tmp/perf-{pid}.map")
        where = f"{venv}/lib/python3.11/site-packages/wheel/"
        self.assertTrue([n for n in names if where in n],
                        f"no function of {where} in the map")

    def test_07_packaged_tests(self):
        env = dict(ENV, PERF_TESTS_REQUIRE_TOOLS="1")
        proc = self.python(["-m", "test", "-v", "test_perf_profiler",
                            "test_perfmaps"], check=False, env=env)
        tail = proc.stdout[-1500:]
        # What failed: unittest's report of each failure, then the summary.
        failures = re.findall(r"^={20,}\n(?:FAIL|ERROR): "
                              r".*?(?=^={20,}|^-{20,}\nRan )",
                              proc.stdout, re.M | re.S)
        self.assertEqual(proc.returncode, 0,
                         "".join(failures)[-6000:] + tail
                         + proc.stderr[-1500:])
        self.assertIn("SUCCESS", tail)
        ran = re.findall(r"^Ran (\d+) tests", proc.stdout, re.M)
        skipped = re.findall(r"skipped ['\"](.*)['\"]$", proc.stdout, re.M)
        print(f"\n  packaged tests: {' + '.join(ran)} tests, "
              f"{len(skipped)} skipped", flush=True)
        for reason, count in sorted(collections.Counter(skipped).items()):
            print(f"    {count} skipped: {reason}", flush=True)

    def test_08_downgrade_to_debian(self):
        names = DebRoot.packages or deb_packages()
        run(["apt-get", "install", "-y", "-q", "--allow-downgrades",
             *[f"{n}={DEBIAN_VERSION}" for n in names]])
        versions = installed_versions(names)
        for name in names:
            self.assertEqual(versions.get(name), DEBIAN_VERSION, name)
        self.assertNotRegex(self.python(["-m", "sysconfig"]).stdout,
                            HAVE_PERF_LINE)
        out = self.python(["-c", "import yaml, numpy, lxml.etree; "
                           "print(numpy.arange(3).sum())"]).stdout
        self.assertEqual(out.strip(), "3")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    ROOT, DEMO, DEBIAN_VERSION = sys.argv[1:4]
    del sys.argv[1:]
    unittest.main(failfast=True, verbosity=2)
