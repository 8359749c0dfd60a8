"""Installed package versions and the machine, for reports and benchmark pages (no TensorFlow import)."""
import contextlib
import importlib.metadata as md
import os
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


def machine():
    """The machine a measurement ran on: CPU model (/proc/cpuinfo; "?" elsewhere), CPUs this process may use,
    memory (GB), platform and the process's niceness."""
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), "?")
    mem = None
    with contextlib.suppress(OSError, StopIteration), open("/proc/meminfo") as fh:
        kb = next(int(l.split()[1]) for l in fh if l.startswith("MemTotal"))
        mem = round(kb / 1024 / 1024, 1)
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": cpu, "nproc": nproc, "mem_gb": mem, "platform": platform.platform(), "nice": os.nice(0)}
