# Build, test and export perf profiler support for CPython 3.11 (3.11.2 by
# default): -X perf, -X perf_jit and the sys stack-trampoline functions as in
# newer CPython releases, plus binary compatibility with stock 3.11, fast
# Python-to-Python calls under the trampoline and gdb backtraces through it.
#
# "make help" lists the targets and variables.  GNU make; every variable
# below can be overridden on the command line (make VAR=value target).
#
# Layout under build/ (everything here is generated; "make clean" removes all
# of it except build/download/, "make distclean" removes build/ entirely):
#
#   build/download/            Debian's orig tarball python3.11_3.11.2.orig.tar.gz
#                              (+ the .dsc/.debian.tar.xz apt fetched, apt-get.log)
#   build/pristine/Python-3.11.N/  the unpacked source, never modified
#   build/pristine/cpython     symlink to it (the name the scripts use)
#   build/src/cpython/         working tree: pristine + new files laid in +
#                              patches/series applied (generated ones included)
#   build/stamps/              make's stamps: source-id, newfiles.list,
#                              patched, laid-in
#   build/fp/                  out-of-tree build with frame pointers (default);
#                              build.log, perfsupport-config, smoke.out
#   build/nofp/                out-of-tree build without (FRAME_POINTERS=no)
#   build/demo.py, build/demo/ the perf demo: script, perf.data, report.txt,
#                              flamegraph-python.html (VIEW=), flamegraph-gecko.json
#   build/flamegraph/          d3-flame-graph's HTML template, installed by npm ci
#                              from Tools/perfsupport/flamegraph/package-lock.json
#   build/flamegraph-test/     recordings, flame graphs and screenshot of
#                              "make flamegraph-test"
#   build/regen/, build/regen-check/  scratch trees of "make regen" and
#                              "make check-regen" (removed when they succeed)
#   build/perf-support-3.11.patch  combined patch written by "make patch"
#   build/export/              scratch files of "make patch"
#   build/check-patch/         fresh tree the combined patch is checked on
#                              (and, for check-patch, built in place)
#   build/test/                logs of "make test", one per step
#   build/abi/                 "make abi-check": stock and patched shared builds
#   build/deb/                 "make deb": the .deb files, build.log; src/ the
#                              package tree; root-base.tar, the Debian 12 root
#                              of "make deb-test" (made once)
#
# The new files under Python/ Include/ Lib/ Doc/ Misc/ Modules/ Tools/ (but
# not Tools/perfsupport/ or Tools/bench/) are laid into the working tree at
# the same path.  When a file in patches/ changes, the working tree is
# re-created from pristine and the whole series re-applied; when only a new
# file changes, only that file is copied again.  Files whose content did not
# change keep their mtime, so the CPython builds recompile only what changed.

.DEFAULT_GOAL := all
SHELL := /bin/sh
# Steps share trees and builds: never run them in parallel (CPython's own make
# gets -j$(nproc) from build.sh).
.NOTPARALLEL:

TOP := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
PS  := $(TOP)/Tools/perfsupport

# ---- variables ------------------------------------------------------------
# Source tree: empty = Debian's python3.11 orig tarball (fetched with apt);
# or a Python-3.11.x tarball (.tar.xz, .tgz, .tar.gz) or directory.
SOURCE ?=
DEB_VERSION ?= 3.11.2-6+deb12u8
ORIG_NAME ?= python3.11_3.11.2.orig.tar.gz
ORIG_SHA256 ?= 2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849

# yes: build in build/fp with frame pointers; no: build/nofp without.
FRAME_POINTERS ?= yes
ARCH := $(shell uname -m)
ifneq ($(filter aarch64 arm64,$(ARCH)),)
FP_CFLAGS ?= -fno-omit-frame-pointer
else
FP_CFLAGS ?= -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer
endif
# Extra CFLAGS for both builds (e.g. OPT_CFLAGS=-O3 or -g3).
OPT_CFLAGS ?=
# Passed to configure as is (e.g. --enable-optimizations --with-lto
# --enable-shared --prefix=/opt/py311perf).
CONFIGURE_FLAGS ?=
# Compiler; ccache is put in front of it when found (CCACHE= disables).
ifeq ($(origin CC),default)
CC := gcc
endif
CCACHE ?= $(shell command -v ccache 2>/dev/null)
BUILD_CC = $(if $(CCACHE),ccache $(CC),$(CC))
# Interpreter that runs Argument Clinic for "make regen".
PYTHON_FOR_REGEN ?= python3
# Script profiled by "make demo" (default: the demo written to build/demo.py).
SCRIPT ?=
# Flame graphs ("make demo", "make flamegraph"): python (interpreter frames
# between Python frames folded away), native (every frame, as perf's own
# flamegraph script draws them) or both.
VIEW ?= python
# "make flamegraph": the perf.data to draw, and the directory of the outputs
# (default: the directory of DATA).
DATA ?=
OUT ?=
# Staging root for "make install" (CPython's DESTDIR).
DESTDIR ?=
# "make test" also runs check-patch (an extra in-tree build); CHECK_PATCH=no skips it.
CHECK_PATCH ?= yes
# "make test" also runs abi-check (two --enable-shared builds); ABI_CHECK=no
# skips it.
ABI_CHECK ?= yes
# "make test" also runs the sanitizer step (a build with AddressSanitizer and
# UndefinedBehaviorSanitizer, then "make sanitize QUICK=1"); SANITIZE_CHECK=no
# skips it.
SANITIZE_CHECK ?= yes

BUILD    := $(TOP)/build
STAMPS   := $(BUILD)/stamps
SRC      := $(BUILD)/src/cpython
PRISTINE := $(BUILD)/pristine/cpython
FLAVOR   := $(if $(filter no,$(FRAME_POINTERS)),nofp,fp)

ifeq ($(filter yes no,$(FRAME_POINTERS)),)
$(error FRAME_POINTERS must be yes or no, not '$(FRAME_POINTERS)')
endif
ifneq ($(words $(VIEW)) $(filter python native both,$(VIEW)),1 $(VIEW))
$(error VIEW must be python, native or both, not '$(VIEW)')
endif

# Sanitizers (comma-separated: address, undefined, thread): with SANITIZE
# set, "make build" builds build/san-NAMES ("," -> "_", e.g.
# build/san-address_undefined) with frame pointers and 3.11's sanitizer
# configure options, leaving build/fp and build/nofp alone.
SANITIZE ?=
comma := ,
empty :=
space := $(empty) $(empty)
SAN_NAMES = $(subst $(comma),_,$(subst $(space),,$(strip $(SANITIZE))))
ifneq ($(SAN_NAMES),)
FLAVOR := san-$(SAN_NAMES)
endif

# Everything the scripts need comes through the environment.
export PS_TOP := $(TOP)
export PS_BUILD := $(BUILD)
export PS_SRC := $(SRC)
export PS_PRISTINE := $(PRISTINE)
export PS_STAMPS := $(STAMPS)
export PS_PATCHES := $(TOP)/patches
export PS_SOURCE := $(SOURCE)
export PS_DEB_VERSION := $(DEB_VERSION)
export PS_ORIG_NAME := $(ORIG_NAME)
export PS_ORIG_SHA256 := $(ORIG_SHA256)
export PS_FP_CFLAGS := $(FP_CFLAGS)
export PS_OPT_CFLAGS := $(OPT_CFLAGS)
export PS_CONFIGURE_FLAGS := $(CONFIGURE_FLAGS)
export PS_CC = $(BUILD_CC)
export PS_PYTHON_FOR_REGEN := $(PYTHON_FOR_REGEN)
export PS_SCRIPT := $(SCRIPT)
export PS_VIEW := $(VIEW)
export PS_CHECK_PATCH := $(CHECK_PATCH)
export PS_ABI_CHECK := $(ABI_CHECK)
export PS_SANITIZE_CHECK := $(SANITIZE_CHECK)
export PS_DESTDIR := $(DESTDIR)

# Inputs of the working tree.
PATCH_FILES := $(wildcard $(TOP)/patches/*)
NEW_FILES   := $(shell PS_TOP='$(TOP)'; . '$(PS)/common.sh'; list_new_files)

.PHONY: all deps fetch source build build-fp build-nofp demo demo-optional \
        flamegraph flamegraph-test \
        test patch check-patch regen check-regen install abi-check bench build-stock \
        clean distclean help \
        FORCE

# ---- main targets -----------------------------------------------------------
all:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory build
ifeq ($(FLAVOR),fp)
	@$(MAKE) --no-print-directory demo-optional
else
	@echo "[all] demo skipped: it profiles the frame-pointer build (run 'make demo')"
endif
	@echo "[all] done: $(BUILD)/$(FLAVOR)/python"

deps:
	sh $(PS)/install-deps.sh

fetch:
	@sh $(PS)/fetch-source.sh

source: $(STAMPS)/laid-in

build: build-$(FLAVOR)

build-fp build-nofp: build-%: source
	@sh $(PS)/build.sh $*

# ---- stamps -----------------------------------------------------------------
# source-id is rewritten by fetch-source.sh only when the source changes.
$(STAMPS)/source-id: FORCE
	@sh $(PS)/fetch-source.sh

$(STAMPS)/pristine: $(STAMPS)/source-id
	@sh $(PS)/prepare-tree.sh pristine
	@touch $@

$(STAMPS)/newfiles.list: FORCE
	@mkdir -p $(STAMPS)
	@. $(PS)/common.sh && list_new_files | write_if_changed $@

$(STAMPS)/patched: $(STAMPS)/pristine $(PATCH_FILES) $(STAMPS)/newfiles.list
	@sh $(PS)/prepare-tree.sh patched
	@touch $@

$(STAMPS)/laid-in: $(STAMPS)/patched $(addprefix $(TOP)/,$(NEW_FILES))
	@sh $(PS)/prepare-tree.sh lay-in
	@touch $@

# ---- demo, tests ------------------------------------------------------------
demo: build-fp
	@sh $(PS)/demo.sh

# Used by "all" right after the build: a machine where perf cannot record
# still ends successfully.
demo-optional:
	@sh $(PS)/demo.sh --optional

# Flame graphs of any recording: DATA-python.html (or -native.html, both
# with VIEW=both) and DATA-gecko.json, next to DATA or in OUT.
flamegraph:
	@if [ -z '$(DATA)' ]; then \
	    echo 'usage: make flamegraph DATA=path/to/perf.data [VIEW=python|native|both] [OUT=dir]' >&2; \
	    exit 2; \
	fi
	@python3 $(PS)/flamegraph.py --view $(VIEW) $(if $(OUT),--out-dir '$(OUT)') '$(DATA)'

# The flame graphs on real recordings of build/fp and build/nofp, and in
# headless Chromium (about 30 s).
flamegraph-test:
	@python3 $(PS)/test_flamegraph.py -v

test: deps
	+@PS_MAKE='$(MAKE)' sh $(PS)/run-tests.sh

# ---- generated patches, export ------------------------------------------------
regen: $(STAMPS)/pristine
	@sh $(PS)/regen.sh write

check-regen: $(STAMPS)/pristine
	@sh $(PS)/regen.sh check

patch: source
	@sh $(PS)/export-patch.sh

check-patch: source
	@sh $(PS)/export-patch.sh --build

install: build-fp
	@sh $(PS)/install.sh

# ABI comparison of stock and patched libpython: both trees built
# --enable-shared into build/abi/, abidiff, and an extension and an embedding
# program compiled against stock headers run on the patched library.
abi-check: source
	@sh $(PS)/abi-check.sh $(PRISTINE)/ $(SRC) $(BUILD)/abi

# AArch64, executed: cross-build build/aarch64 and build/aarch64-bti (BTI +
# pointer authentication) with build/fp/python as the build Python, and run
# the perf tests on both under qemu-user (Tools/perfsupport/aarch64.sh).
.PHONY: aarch64-test
aarch64-test: build-fp
	@sh $(PS)/aarch64.sh

# ---- Debian 12 packages -----------------------------------------------------------
# Debian's own source package python3.11 ($(DEB_VERSION)) with this
# project's patches appended to its quilt series, frame pointers and version
# $(DEB_VERSION)+perf1 (Tools/perfsupport/deb.sh).  deb: the .deb files in
# build/deb/ (FULL=1: with Debian's PGO and LTO, hours instead of ~25 min);
# check-deb: Debian's series plus ours applies with no fuzz and carries
# exactly this project's files (in make test); deb-test: the packages
# installed over Debian's in a clean Debian 12 root and used there;
# deb-install: on this machine, ours in place of each of Debian's that is
# installed (and no other: DRY_RUN=1 lists them).
FULL ?=
DRY_RUN ?=
.PHONY: deb check-deb deb-test deb-install
deb: fetch
	@PS_DEB_FULL='$(FULL)' sh $(PS)/deb.sh build

check-deb: fetch
	@sh $(PS)/deb.sh check

deb-test:
	@sh $(PS)/deb-test.sh

deb-install:
	@sh $(PS)/deb-install.sh $(if $(DRY_RUN),--dry-run) $(BUILD)/deb

# The benchmark suite in that root: Debian's python3.11 as "stock" against
# ours with the perf support off, on and the rest (build/deb/bench.md).
.PHONY: deb-bench
deb-bench:
	@sh $(PS)/deb-test.sh --bench

# ---- benchmarks -------------------------------------------------------------
# The stock interpreter the benchmarks compare with: the pristine tree built
# with the flags of build/$(FLAVOR).
STOCK_BUILD := $(BUILD)/stock-$(FLAVOR)
BENCH_PYTHON ?= python3
QUICK ?=
CALLGRIND ?=
BENCH_OUT ?= $(BUILD)/bench/report$(if $(QUICK),-quick).md

build-stock: $(STAMPS)/pristine
	@PS_FP_CFLAGS='$(if $(filter nofp,$(FLAVOR)),,$(FP_CFLAGS))' \
	    sh $(TOP)/Tools/bench/build-stock.sh $(PRISTINE) $(STOCK_BUILD)

bench: build-$(FLAVOR) build-stock
	@mkdir -p $(dir $(BENCH_OUT))
	$(BENCH_PYTHON) $(TOP)/Tools/bench/run.py \
	    --stock $(STOCK_BUILD)/python --patched $(BUILD)/$(FLAVOR)/python \
	    $(if $(QUICK),--quick) $(if $(CALLGRIND),--callgrind) --out $(BENCH_OUT)

# ---- sanitizers, CPython's regression suite ------------------------------------
.PHONY: sanitize regrtest

# build/san-NAMES: the patched tree with frame pointers and sanitizers.
build-san-%: source
	@PS_SANITIZE='$(subst _,$(comma),$*)' sh $(PS)/build.sh san

# The perf tests and the frame/thread/signal suites on a sanitizer build
# (SANITIZE, default address,undefined), profiling off, PYTHONPERFSUPPORT=1,
# PYTHON_PERF_JIT_SUPPORT=1; QUICK=1: the perf tests under the two backends;
# TESTS=: other modules.
SAN_TEST_NAMES = $(or $(SAN_NAMES),address_undefined)
SANITIZE_TIMEOUT ?= 1800
sanitize: build-san-$(SAN_TEST_NAMES)
	@PS_QUICK='$(QUICK)' PS_TIMEOUT='$(SANITIZE_TIMEOUT)' PS_TESTS='$(TESTS)' \
	    PS_REGRTEST_OPTS='$(REGRTEST_OPTS)' \
	    sh $(PS)/sanitize.sh $(BUILD)/san-$(SAN_TEST_NAMES)

# CPython's whole "python -m test -j2" (or TESTS="test_a test_b") on
# build/$(FLAVOR), profiling off, PYTHONPERFSUPPORT=1 and
# PYTHON_PERF_JIT_SUPPORT=1, and on stock 3.11 built with the same flags;
# table of the modules whose result differs from stock:
# build/regrtest/table.md.  REGRTEST_TIMEOUT: regrtest's --timeout (3.11's
# own "make buildbottest" value); REGRTEST_OPTS: more regrtest options.
TESTS ?=
REGRTEST_TIMEOUT ?= 1200
REGRTEST_OPTS ?=
ifneq ($(SAN_NAMES),)
regrtest:
	@echo "[regrtest] the stock build has no sanitizers: run it without SANITIZE=" >&2; exit 2
else
regrtest: build-$(FLAVOR) build-stock
	@PS_TESTS='$(TESTS)' PS_TIMEOUT='$(REGRTEST_TIMEOUT)' \
	    PS_REGRTEST_OPTS='$(REGRTEST_OPTS)' \
	    sh $(PS)/regrtest.sh $(BUILD)/$(FLAVOR) $(STOCK_BUILD)
endif

# ---- cleaning -------------------------------------------------------------------
clean:
	@echo "[clean] removing build trees (keeping build/download)"
	@if [ -d $(BUILD) ]; then \
	    find $(BUILD) -mindepth 1 -maxdepth 1 ! -name download -exec rm -rf {} +; \
	fi

distclean:
	@echo "[clean] removing build/"
	rm -rf $(BUILD)

FORCE:

help:
	@echo 'perf profiler support for CPython 3.11: build, test, export.'
	@echo
	@echo 'Targets:'
	@echo '  all          (default) deps, fetch, build, demo (demo may only report that perf cannot record)'
	@echo '  deps         install build dependencies, perf, ccache, autoconf2.69 (Tools/perfsupport/install-deps.sh, root)'
	@echo '  fetch        download/verify the 3.11 source (build/download/) or check SOURCE='
	@echo '  source       unpack pristine, lay in new files, apply patches/series -> build/src/cpython'
	@echo '  build        out-of-tree build in build/fp (FRAME_POINTERS=yes) or build/nofp, plus a smoke check'
	@echo '  demo         perf record + perf report of a nested foo/bar/baz script with -X perf (SCRIPT= to change),'
	@echo '               and its flame graph: build/demo/flamegraph-python.html (VIEW=), flamegraph-gecko.json'
	@echo '  flamegraph   flame graph of a recording: make flamegraph DATA=perf.data [VIEW=python|native|both]'
	@echo '               [OUT=dir]: NAME-VIEW.html (one self-contained file), NAME-gecko.json (Firefox Profiler); NAME: DATA without .data'
	@echo '  flamegraph-test  the flame graphs checked on real recordings and in headless Chromium'
	@echo '  test         builds fp and nofp, check-regen, perf tests, stock suites, check-patch; summary table'
	@echo '  regen        regenerate patches/90-regen-configure.patch and 91-regen-clinic.patch'
	@echo '  check-regen  fail if the committed generated patches are out of date'
	@echo '  patch        write build/perf-support-3.11.patch (pristine -> patched) and verify it applies'
	@echo '  check-patch  patch + plain ./configure && make on a fresh tree, check -X perf works'
	@echo '  install      make install of build/fp (honours --prefix in CONFIGURE_FLAGS, and DESTDIR=)'
	@echo '  abi-check    stock vs patched libpython: abidiff, and an extension and an embedding'
	@echo '               program built on stock headers run on the patched library (build/abi)'
	@echo '  aarch64-test cross-build for AArch64 (plain and BTI/PAC) and run the perf tests under qemu-user'
	@echo '  bench        benchmarks: stock vs patched, off vs -X perf, the generic road, -X perf_jit'
	@echo '               (QUICK=1: under 3 minutes; CALLGRIND=1: instruction counts too)'
	@echo '  build SANITIZE=address,undefined  (or thread): the patched tree with frame pointers'
	@echo '               and 3.11'"'"'s sanitizer options, in build/san-address_undefined'
	@echo '  sanitize     on that build (SANITIZE=, default address,undefined): perf tests and the'
	@echo '               frame/thread/signal suites, profiling off, -X perf, -X perf_jit; any'
	@echo '               sanitizer report fails (QUICK=1: only the perf tests, under the two backends)'
	@echo '  regrtest     CPython'"'"'s whole "python -m test -j2" on build/fp off, perf, perf_jit and on'
	@echo '               build/stock-fp; table of the modules that differ from stock (TESTS= for a subset)'
	@echo '  deb          Debian 12 packages: Debian'"'"'s python3.11 source + our patches, frame pointers,'
	@echo '               version $(DEB_VERSION)+perf1, in build/deb/ (FULL=1: Debian'"'"'s PGO and LTO too)'
	@echo '  check-deb    Debian'"'"'s patch series plus ours applies with quilt, no fuzz, exactly our files'
	@echo '  deb-test     the packages of make deb over Debian'"'"'s in a clean Debian 12 root (mmdebstrap)'
	@echo '  deb-bench    benchmarks in that root: Debian'"'"'s python3.11 against ours (build/deb/bench.md)'
	@echo '  deb-install  as root: ours in place of the python3.11 packages installed here, no others'
	@echo '               (DRY_RUN=1: list them)'
	@echo '  clean        remove build trees, keep build/download'
	@echo '  distclean    remove build/'
	@echo
	@echo 'Variables (current value):'
	@echo '  SOURCE=$(SOURCE)   (empty: Debian orig tarball $(ORIG_NAME))'
	@echo '  FRAME_POINTERS=$(FRAME_POINTERS)   FP_CFLAGS=$(FP_CFLAGS)'
	@echo '  OPT_CFLAGS=$(OPT_CFLAGS)'
	@echo '  CONFIGURE_FLAGS=$(CONFIGURE_FLAGS)'
	@echo '  CC=$(CC)   CCACHE=$(CCACHE)   -> $(BUILD_CC)'
	@echo '  VIEW=$(VIEW)   DATA=$(DATA)   OUT=$(OUT)'
	@echo '  PYTHON_FOR_REGEN=$(PYTHON_FOR_REGEN)   SCRIPT=$(SCRIPT)   CHECK_PATCH=$(CHECK_PATCH)   ABI_CHECK=$(ABI_CHECK)   SANITIZE_CHECK=$(SANITIZE_CHECK)'
	@echo '  DESTDIR=$(DESTDIR)   DEB_VERSION=$(DEB_VERSION)   FULL=$(FULL)'
	@echo '  SANITIZE=$(SANITIZE)   SANITIZE_TIMEOUT=$(SANITIZE_TIMEOUT)   QUICK=$(QUICK)'
	@echo '  TESTS=$(TESTS)   REGRTEST_TIMEOUT=$(REGRTEST_TIMEOUT)   REGRTEST_OPTS=$(REGRTEST_OPTS)'
