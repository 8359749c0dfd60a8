"""Atomic file writes: a reader (or a crash) never sees a half-written file.

The data goes to a temporary file in the destination's directory (same file
system, so os.replace is a single atomic rename), is fsynced, then renamed
over the final name, and the directory is fsynced so that the rename itself
survives a crash. The temporary name starts with "." and holds ".tmp" so that
a leftover one, after a hard kill, is easy to spot and never mistaken for a
result. Every output of the pipeline and the benchmark is written through
`atomic_path` (writers that need a file name: Keras' model.save, matplotlib's
savefig, numpy.savez) or the write_* helpers built on it.
"""
import contextlib
import json
import os
import tempfile


def _new_file_mode():
    """The mode open() would give a new file: 0o666 minus the umask.

    mkstemp creates files 0o600; without this every exported model would be
    unreadable by other users. Linux exposes the umask without changing it.
    """
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """A temporary file name next to `path`, for a writer that needs a name rather than bytes.

    On a normal exit of the `with` block the file written there is fsynced and
    renamed over `path` (an existing file is replaced and keeps its permissions);
    on an exception, KeyboardInterrupt included, it is removed and `path` keeps
    its old content. `suffix` ends the temporary name: Keras insists on
    ".keras" (use ".tmp.keras"), numpy.savez appends ".npz" unless it is there.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # the writer may have replaced the file: sync what is there now
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # Keep the permissions of the file being replaced, else what open() would give.
        mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else _new_file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def write_bytes_atomic(path, data):
    """Write `data` (bytes) to `path` atomically; an existing file is replaced."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text_atomic(path, text, encoding="utf-8"):
    """Write the string `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path, obj):
    """Write `obj` as indented JSON with sorted keys (NumPy scalars as floats) to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def _fsync_directory(directory):
    """Make the rename itself durable (the directory entry lives in the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms / file systems cannot open directories; the data is synced
    try:
        # Some network file systems refuse fsync on directories; the data itself is synced.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
