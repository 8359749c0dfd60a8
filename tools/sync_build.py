"""Prints what the top-level BUILD is missing, with ready-to-paste entries.

    python tools/sync_build.py      # exit 0 when BUILD is in sync, 1 otherwise

It runs the same checks as tests/test_build_file.py (which it imports) and, for
each Python file that no target lists, suggests where it goes: the target that
already owns its folder, or a new py_test / py_binary / py_library stanza with
deps guessed from its first-party imports.  It never edits BUILD.
"""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _checks():
    spec = importlib.util.spec_from_file_location("_build_checks", ROOT / "tests" / "test_build_file.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _deps_for(path, targets, own, m):
    deps = []
    for _, _, f in m.first_party_imports(path, ROOT):
        for t in own.get(f, [])[:1]:
            if ":" + t.name not in deps:
                deps.append(":" + t.name)
    if path.startswith("tests/test_") and "tests/conftest.py" in own:
        conf = ":" + own["tests/conftest.py"][0].name
        if conf not in deps:
            deps.append(conf)
    return deps


def m_launcher():
    return _checks().PYTEST_LAUNCHER


def _stanza(kind, name, path, deps, main=True, size=None):
    lines = ["%s(" % kind, '    name = "%s",' % name]
    if size:
        lines.append('    size = "%s",' % size)
    if kind == "py_test":  # bazel must run pytest, not the file as a script
        lines.append('    srcs = ["%s", "%s"],' % (m_launcher(), path))
        lines.append('    main = "%s",' % m_launcher())
    else:
        lines.append('    srcs = ["%s"],' % path)
        if main:
            lines.append('    main = "%s",' % path)
    if deps:
        lines.append("    deps = [%s]," % ", ".join('"%s"' % d for d in deps))
    lines.append(")")
    return "\n".join(lines)


def main():
    m = _checks()
    build = ROOT / "BUILD"
    if not build.is_file():
        print("no BUILD file at %s" % build)
        return 1
    report = m.check_all(ROOT)
    targets, _ = m.parse_build(build.read_text())
    own = m.owners(targets)
    problems = 0
    for check, items in report.items():
        if check == "missing":
            continue
        for item in items:
            print("[%s] %s" % (check, item))
            problems += 1
    new_libs = {}  # folder -> [path, ...] for files that need a new py_library
    for path in report["missing"]:
        problems += 1
        p = pathlib.PurePosixPath(path)
        deps = _deps_for(path, targets, own, m)
        if m.is_test_file(path):
            print("[missing] %s: add\n%s\n" % (path, _stanza("py_test", p.stem, path, deps, size="medium")))
        elif p.parts[0] in m.PROGRAM_DIRS + ("tests",) and m.has_main_block(path, ROOT):
            print("[missing] %s: add\n%s\n" % (path, _stanza("py_binary", p.stem, path, deps)))
        else:
            siblings = [t for f, ts in own.items() if pathlib.PurePosixPath(f).parent == p.parent for t in ts
                        if t.kind == "py_library"]
            if siblings:
                t = siblings[0]
                extra = [d for d in deps if d.lstrip(":") not in m.closure(targets, t.name) and d != ":" + t.name]
                print("[missing] %s: add it to the srcs of py_library \"%s\" (BUILD:%d)%s" % (
                    path, t.name, t.lineno, "; its deps also need %s" % ", ".join(extra) if extra else ""))
            else:
                new_libs.setdefault(p.parent.as_posix(), []).append(path)
    for folder, paths in sorted(new_libs.items()):
        deps = []
        for path in paths:
            deps += [d for d in _deps_for(path, targets, own, m) if d not in deps]
        lines = ["py_library(", '    name = "%s",' % folder.replace("/", "_"), "    srcs = ["]
        lines += ['        "%s",' % f for f in paths] + ["    ],"]
        if deps:
            lines.append("    deps = [%s]," % ", ".join('"%s"' % d for d in deps))
        print("[missing] %s: add\n%s\n" % (", ".join(paths), "\n".join(lines + [")"])))
    if problems:
        print("%d problem(s); BUILD is out of sync" % problems)
        return 1
    print("BUILD is in sync: %d targets cover %d Python files" % (len(targets), len(m.python_files(ROOT))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
