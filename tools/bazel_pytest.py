"""The `main` of every py_test in BUILD: runs pytest on tests/<target name>.py.

Bazel runs a py_test's main as a plain script.  A pytest module run that way
only defines its test functions and exits 0, so a failing test would show
PASSED; this launcher makes `bazel test` run the tests with pytest instead:

    py_test(
        name = "test_foo",
        srcs = ["tools/bazel_pytest.py", "tests/test_foo.py"],
        main = "tools/bazel_pytest.py",
        ...
    )

It maps Bazel's test protocol onto pytest: the target name picks the file
(TEST_TARGET), `--test_filter=EXPR` becomes `-k EXPR` (TESTBRIDGE_TEST_ONLY),
the JUnit XML goes where Bazel wants it (XML_OUTPUT_FILE), `--test_arg`s are
passed on to pytest (but `--first_test_only`, see _FirstTestOnly), and pytest's exit status is the test's (with a `-m` marker
expression, a file whose tests are all deselected passes).

Deliberately no `if __name__ == "__main__":` block: this file is not a program
(tests/test_build_file.py would then want a py_binary for it).
"""
import os
import sys

import pytest


def _pytest_args(argv):
    target = os.environ.get("TEST_TARGET")
    if not target:
        sys.exit("tools/bazel_pytest.py runs under `bazel test` only (TEST_TARGET is not set); "
                 "outside Bazel run: python -m pytest tests/<file>.py")
    name = target.rsplit(":", 1)[-1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    test_file = os.path.join(root, "tests", name + ".py")
    if not os.path.isfile(test_file):
        sys.exit("tools/bazel_pytest.py: %s has no test file %s in its runfiles (a py_test must be "
                 "named after its tests/<name>.py and list it in srcs)" % (target, test_file))
    args = [test_file, "--rootdir", root, "-p", "no:cacheprovider", "-q", "-rfEs"]
    if os.environ.get("XML_OUTPUT_FILE"):
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    if os.environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
    return args + list(argv)


# Hypothesis keeps its example database under the working directory, which is
# the runfiles tree here: keep it in the test's scratch dir instead.
if os.environ.get("TEST_TMPDIR"):
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(os.environ["TEST_TMPDIR"], "hypothesis"))

class _FirstTestOnly:
    """`--first_test_only` (what .ci/run passes, to the py_tests with `data`):
    of the tests left after `-m`/`-k`, run the first one only. Bazel's part in CI is that every target builds
    and that a target with `data` runs a test in Bazel's sandbox (tests/test_build_file.py checks every
    target's deps statically); pytest has already run every test once (the README's command), so running them
    all again here would double CI's time for nothing new."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        if len(items) > 1:
            config.hook.pytest_deselected(items=items[1:])
            del items[1:]


_argv = [a for a in sys.argv[1:] if a != "--first_test_only"]
_plugins = [_FirstTestOnly()] if len(_argv) < len(sys.argv) - 1 else []
_status = pytest.main(_pytest_args(_argv), plugins=_plugins)
# `--test_arg=-m --test_arg="not slow"` (what .ci/run passes): a file whose tests are all
# deselected has nothing to run, which is not a failure (pytest's exit 5).
if _status == pytest.ExitCode.NO_TESTS_COLLECTED and "-m" in _argv:
    _status = pytest.ExitCode.OK
sys.exit(_status)
