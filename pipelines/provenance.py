"""Installed package versions for reports (no TensorFlow import)."""
import importlib.metadata as md
import platform


def package_versions(packages, with_python=True):
    """{package: version or None}, plus the Python version when with_python."""
    out = {"python": platform.python_version()} if with_python else {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
