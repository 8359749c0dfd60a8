"""Keeps the top-level BUILD file from rotting.

BUILD lists every Python file of the project by hand (no glob()), so a module,
program or test added without a BUILD entry, or deleted while BUILD still names
it, fails here with the exact file names.  `python tools/sync_build.py` prints
the same report plus ready-to-paste stanzas for the missing files.

BUILD is parsed with Python's `ast` module: the rules it uses are plain calls
with keyword arguments whose values are string or list-of-string literals.
"""

import ast
import os
import pathlib
import sys

import pytest

# Under `bazel test` this file is a runfiles symlink: resolve() finds the real tree.
ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD_PATH = ROOT / "BUILD"

# Every .py file under these folders must be in the srcs of some py_* target.
SCANNED_DIRS = ("atmc_tf", "benchmarks", "pipelines", "tests", "tools")
# Files under these folders with an `if __name__ == "__main__":` block are programs:
# each must be the `main` of a py_binary.
PROGRAM_DIRS = ("benchmarks", "pipelines", "tools")
FIRST_PARTY = ("atmc_tf", "benchmarks", "pipelines", "tests", "tools")

PY_RULES = ("py_library", "py_binary", "py_test")
# Other calls BUILD may contain (they are parsed but not checked further).
OTHER_RULES = ("package", "exports_files", "filegroup", "load", "licenses",
               "py_runtime", "py_runtime_pair", "toolchain", "sh_binary", "sh_test")
LIST_ATTRS = ("srcs", "deps", "data")
# A py_test's main must be this shared launcher: it runs pytest on
# tests/<target name>.py. With the test file itself as main, bazel runs it as a
# plain script, no test function executes, and a failing test shows PASSED.
PYTEST_LAUNCHER = "tools/bazel_pytest.py"

HINT = "add them to BUILD (python tools/sync_build.py prints ready-to-paste entries)"


class Target:
    def __init__(self, kind, name, lineno):
        self.kind = kind
        self.name = name
        self.lineno = lineno
        self.srcs = []
        self.deps = []
        self.data = []
        self.main = None

    def __repr__(self):
        return "%s(name=%r) at BUILD:%d" % (self.kind, self.name, self.lineno)


# ---------------------------------------------------------------- BUILD parsing


def parse_build(text):
    """Returns (targets by name, syntax problems)."""
    problems = []
    targets = {}
    try:
        tree = ast.parse(text, filename="BUILD")
    except SyntaxError as e:
        return {}, ["BUILD:%s: not parseable: %s" % (e.lineno, e.msg)]

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "glob":
            problems.append("BUILD:%d: glob() is not allowed; list the files one by one" % node.lineno)

    for stmt in tree.body:
        if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Name)):
            problems.append("BUILD:%d: only top-level rule calls are supported (no assignments, "
                            "loops or expressions)" % stmt.lineno)
            continue
        call = stmt.value
        kind = call.func.id
        if kind not in PY_RULES:
            if kind not in OTHER_RULES:
                problems.append("BUILD:%d: unknown rule %s()" % (call.lineno, kind))
            continue
        kwargs = {kw.arg: kw.value for kw in call.keywords}
        name_node = kwargs.get("name")
        if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
            problems.append("BUILD:%d: %s() needs name = \"...\"" % (call.lineno, kind))
            continue
        t = Target(kind, name_node.value, call.lineno)
        if call.args:
            problems.append("%r: positional arguments are not supported" % t)
        if t.name in targets:
            problems.append("%r: duplicate target name (also %r)" % (t, targets[t.name]))
        for attr in LIST_ATTRS:
            node = kwargs.get(attr)
            if node is None:
                continue
            if not (isinstance(node, ast.List)
                    and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)):
                problems.append("%r: %s must be a literal list of strings" % (t, attr))
                continue
            setattr(t, attr, [e.value for e in node.elts])
        main = kwargs.get("main")
        if main is not None:
            if isinstance(main, ast.Constant) and isinstance(main.value, str):
                t.main = main.value
            else:
                problems.append("%r: main must be a string literal" % t)
        targets[t.name] = t
    return targets, problems


def load_build():
    if not BUILD_PATH.is_file():
        pytest.fail("no BUILD file at %s" % BUILD_PATH)
    return parse_build(BUILD_PATH.read_text())


# ---------------------------------------------------------------- the tree


def python_files(root=ROOT):
    """Every .py file under SCANNED_DIRS, relative to root, sorted."""
    found = []
    for top in SCANNED_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for f in filenames:
                if f.endswith(".py"):
                    found.append((pathlib.Path(dirpath) / f).relative_to(root).as_posix())
    return sorted(found)


def is_test_file(path):
    return path.startswith("tests/") and pathlib.PurePosixPath(path).name.startswith("test_")


def has_main_block(path, root=ROOT):
    try:
        tree = ast.parse((root / path).read_text(), filename=path)
    except (SyntaxError, UnicodeDecodeError, OSError):
        return False
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "__main__" in ast.unparse(stmt.test) and "__name__" in ast.unparse(stmt.test):
            return True
    return False


def owners(targets):
    """path -> list of targets whose srcs contain it."""
    own = {}
    for t in targets.values():
        for s in t.srcs:
            own.setdefault(s, []).append(t)
    return own


def local_dep(label):
    """':x' or '//:x' -> 'x'; anything else -> None."""
    if label.startswith("//:"):
        return label[3:]
    if label.startswith(":"):
        return label[1:]
    return None


def closure(targets, name):
    seen, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n in seen or n not in targets:
            continue
        seen.add(n)
        todo.extend(d for d in map(local_dep, targets[n].deps) if d)
    return seen


# ---------------------------------------------------------------- imports


def _module_file(dotted, search_roots, root):
    parts = dotted.split(".")
    for base in search_roots:
        for cand in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if cand.is_file():
                rel = cand.relative_to(root).as_posix()
                if rel.split("/")[0] in FIRST_PARTY:
                    return rel
    return None


def first_party_imports(path, root=ROOT):
    """Yields (lineno, module, file) for every first-party module the file imports."""
    try:
        tree = ast.parse((root / path).read_text(), filename=path)
    except (SyntaxError, UnicodeDecodeError, OSError):
        return
    here = (root / path).parent
    # pytest's default import mode puts a test file's folder on sys.path.
    roots = [root, here] if path.startswith("tests/") else [root]
    pkg = pathlib.PurePosixPath(path).parent.parts
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                f = _module_file(alias.name, roots, root)
                if f:
                    yield node.lineno, alias.name, f
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[: len(pkg) - (node.level - 1)]) if node.level - 1 <= len(pkg) else []
                mod = ".".join(base + ([node.module] if node.module else []))
                search = [root]
            else:
                mod, search = node.module, roots
            if not mod:
                continue
            hit = False
            for alias in node.names:
                f = _module_file(mod + "." + alias.name, search, root)  # `from pkg import submodule`
                if f:
                    hit = True
                    yield node.lineno, mod + "." + alias.name, f
            if not hit:
                f = _module_file(mod, search, root)
                if f:
                    yield node.lineno, mod, f


# ---------------------------------------------------------------- the checks


def check_all(root=ROOT, build_text=None):
    """Returns {check name: [problem, ...]}; empty lists mean BUILD is in sync."""
    if build_text is None:
        build_text = (root / "BUILD").read_text()
    targets, syntax = parse_build(build_text)
    own = owners(targets)
    on_disk = python_files(root)
    out = {"syntax": syntax}

    # (a)+(b) every .py file is in some target; tests/test_*.py in a py_test.
    out["missing"] = [p for p in on_disk if p not in own]
    out["test_not_in_py_test"] = [
        "%s is in %s, not in a py_test" % (p, ", ".join(map(repr, own[p])))
        for p in on_disk if is_test_file(p) and p in own and not any(t.kind == "py_test" for t in own[p])]

    # (c) every listed file exists.
    stale = []
    for t in targets.values():
        for s in t.srcs + ([t.main] if t.main else []) + [d for d in t.data if not d.startswith((":", "//", "@"))]:
            if not (root / s).is_file():
                stale.append("%s (listed in %r)" % (s, t))
    out["stale"] = sorted(set(stale))

    # Each file in exactly one target; srcs are .py files in the scanned folders.
    out["duplicate_srcs"] = ["%s is in the srcs of %s" % (p, ", ".join(map(repr, ts)))
                             for p, ts in sorted(own.items()) if len(ts) > 1
                             and not (p == PYTEST_LAUNCHER and all(t.kind == "py_test" for t in ts))]
    out["bad_srcs"] = ["%s (in %r): srcs must be .py files under %s" % (s, t, "/, ".join(SCANNED_DIRS) + "/")
                       for t in targets.values() for s in t.srcs
                       if not s.endswith(".py") or s.split("/")[0] not in SCANNED_DIRS]

    # (e) py_test name == its file; main is in srcs; py_binary has a main in srcs.
    names = []
    for t in targets.values():
        if t.kind == "py_test":
            tests_in = [s for s in t.srcs if is_test_file(s)]
            want = "tests/%s.py" % t.name
            if t.main != PYTEST_LAUNCHER or tests_in != [want]:
                names.append("%r: want srcs = [\"%s\", \"%s\"] and main = \"%s\" (a py_test per test file, "
                             "named after it, run by the pytest launcher; got main = %r, test files %r)"
                             % (t, PYTEST_LAUNCHER, want, PYTEST_LAUNCHER, t.main, tests_in))
        if t.kind in ("py_test", "py_binary"):
            if not t.main:
                names.append("%r: needs main = \"...\"" % t)
            elif t.main not in t.srcs:
                names.append("%r: main %s is not in its srcs" % (t, t.main))
        if t.kind == "py_library" and t.main:
            names.append("%r: a py_library has no main" % t)
    out["names"] = names

    # Programs: a file under pipelines/ or tools/ with a __main__ block is a py_binary's main.
    mains = {t.main for t in targets.values() if t.kind == "py_binary"}
    out["program_without_py_binary"] = [
        p for p in on_disk if p.split("/")[0] in PROGRAM_DIRS and has_main_block(p, root) and p not in mains]

    # (f) deps name existing targets (only local labels: this BUILD loads no external rules).
    bad_deps = []
    for t in targets.values():
        for d in t.deps:
            n = local_dep(d)
            if n is None:
                bad_deps.append("%r: dep %r is not a local label (':name')" % (t, d))
            elif n not in targets:
                bad_deps.append("%r: dep %r names no target in BUILD" % (t, d))
            elif n == t.name:
                bad_deps.append("%r: depends on itself" % t)
        for d in t.data:
            n = local_dep(d)
            if n is not None and n not in targets:
                bad_deps.append("%r: data %r names no target in BUILD" % (t, d))
    # cycles
    for t in targets.values():
        for d in filter(None, map(local_dep, t.deps)):
            if d != t.name and t.name in closure(targets, d):
                bad_deps.append("%r: dependency cycle through %r" % (t, d))
    out["deps"] = sorted(set(bad_deps))

    # Imports: a target's transitive deps own every first-party module its srcs import
    # (else `bazel test` would not have that module in runfiles).
    missing_deps = []
    for t in targets.values():
        reach = closure(targets, t.name)
        for s in t.srcs:
            if not (root / s).is_file():
                continue
            for lineno, mod, f in first_party_imports(s, root):
                if f in own and not any(o.name in reach for o in own[f]):
                    missing_deps.append("%r: %s:%d imports %s, so deps must include %s" % (
                        t, s, lineno, mod, " or ".join("\":%s\"" % o.name for o in own[f])))
    # pytest loads tests/conftest.py for every test: each py_test must have it in its deps.
    if "tests/conftest.py" in own:
        for t in targets.values():
            if t.kind == "py_test" and not any(o.name in closure(targets, t.name) for o in own["tests/conftest.py"]):
                missing_deps.append("%r: deps must include %s (tests/conftest.py)" % (
                    t, " or ".join("\":%s\"" % o.name for o in own["tests/conftest.py"])))
    out["import_deps"] = sorted(set(missing_deps))
    return out


# ---------------------------------------------------------------- pytest


@pytest.fixture(scope="module")
def report():
    if not BUILD_PATH.is_file():
        pytest.fail("no BUILD file at %s" % BUILD_PATH)
    return check_all()


def _fail_if(problems, what):
    if problems:
        pytest.fail("%s:\n  %s\n%s" % (what, "\n  ".join(problems), HINT), pytrace=False)


def test_build_parses_without_glob(report):
    # (d) and the literal-lists rule the other checks rely on.
    _fail_if(report["syntax"], "BUILD uses constructs this check cannot read (glob() is banned on purpose)")


def test_every_python_file_is_in_build(report):
    # (a) atmc_tf/, pipelines/, tools/  (b) tests/ incl. conftest.py and helpers
    _fail_if(report["missing"], "these Python files are in no target's srcs in BUILD")


def test_every_test_file_has_a_py_test(report):
    _fail_if(report["test_not_in_py_test"], "these test files are not in a py_test")


def test_no_stale_entries(report):
    # (c)
    _fail_if(report["stale"], "BUILD lists files that do not exist (remove or rename them in BUILD)")


def test_each_file_in_one_target(report):
    _fail_if(report["duplicate_srcs"] + report["bad_srcs"], "BUILD srcs problems")


def test_py_test_names_match_files(report):
    # (e)
    _fail_if(report["names"], "py_test / py_binary name or main problems")


def test_programs_have_py_binary(report):
    _fail_if(report["program_without_py_binary"],
             "these programs (they have an `if __name__ == \"__main__\":` block) are the main of no py_binary")


def test_deps_name_existing_targets(report):
    # (f)
    _fail_if(report["deps"], "BUILD deps problems")


def test_deps_cover_imports(report):
    _fail_if(report["import_deps"], "BUILD deps miss first-party modules their srcs import")


# ---------------------------------------------------------------- self-tests of the checker


def _tree(tmp_path, files, build):
    for f in files:
        p = tmp_path / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(files[f] if isinstance(files, dict) else "")
    (tmp_path / "BUILD").write_text(build)
    return check_all(tmp_path)


def test_checker_reports_missing_stale_glob_and_names(tmp_path):
    files = {"atmc_tf/__init__.py": "", "atmc_tf/a.py": "", "tests/test_a.py": "import atmc_tf.a\n",
             "pipelines/run.py": "if __name__ == \"__main__\":\n    pass\n"}
    r = _tree(tmp_path, files, """
py_library(name = "atmc_tf", srcs = ["atmc_tf/__init__.py", "atmc_tf/gone.py"])
py_library(name = "g", srcs = glob(["pipelines/*.py"]))
py_test(name = "wrong", srcs = ["tests/test_a.py"], main = "tests/test_a.py", deps = [":nope"])
""")
    assert r["missing"] == ["atmc_tf/a.py", "pipelines/run.py"]
    assert any("glob()" in p for p in r["syntax"])
    assert r["stale"] == ["atmc_tf/gone.py (listed in py_library(name='atmc_tf') at BUILD:2)"]
    assert any("'wrong'" in p and "tests/wrong.py" in p for p in r["names"])
    assert any("':nope'" in p for p in r["deps"])
    assert r["program_without_py_binary"] == ["pipelines/run.py"]


def test_checker_accepts_a_complete_build_and_checks_import_deps(tmp_path):
    files = {"atmc_tf/__init__.py": "", "atmc_tf/a.py": "from . import b\n", "atmc_tf/b.py": "",
             "tests/conftest.py": "", "tests/helpers.py": "", PYTEST_LAUNCHER: "",
             "tests/test_a.py": "from atmc_tf import a\nimport helpers\n"}
    build = """
py_library(name = "lib", srcs = ["atmc_tf/__init__.py", "atmc_tf/a.py", "atmc_tf/b.py"])
py_library(name = "support", srcs = ["tests/conftest.py", "tests/helpers.py"])
py_test(name = "test_a", size = "small", srcs = ["tools/bazel_pytest.py", "tests/test_a.py"],
        main = "tools/bazel_pytest.py", deps = [":lib", "//:support"])
"""
    r = _tree(tmp_path, files, build)
    assert not any(r.values()), r
    r = _tree(tmp_path, files, build.replace(', "//:support"', ""))
    assert sorted(r["import_deps"]) == [
        "py_test(name='test_a') at BUILD:4: deps must include \":support\" (tests/conftest.py)",
        "py_test(name='test_a') at BUILD:4: tests/test_a.py:2 imports helpers, so deps must include \":support\"",
    ]


def test_checker_requires_the_shared_pytest_launcher(tmp_path):
    files = {"tests/test_a.py": "", "tests/test_b.py": "", PYTEST_LAUNCHER: ""}
    build = "".join(
        'py_test(name = "test_%s", srcs = ["%s", "tests/test_%s.py"], main = "%s")\n' % (x, PYTEST_LAUNCHER, x, PYTEST_LAUNCHER)
        for x in "ab")
    assert not any(_tree(tmp_path, files, build).values())
    r = _tree(tmp_path, files, build.replace('main = "%s")\n' % PYTEST_LAUNCHER, 'main = "tests/test_b.py")\n', 1))
    assert r["names"] and all("'test_a'" in p for p in r["names"])
    # its own file as main would make bazel run it as a script: refused too
    own = build.replace('main = "%s")\n' % PYTEST_LAUNCHER, 'main = "tests/test_a.py")\n', 1)
    r = _tree(tmp_path, files, own)
    assert r["names"] and "pytest launcher" in r["names"][0]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
