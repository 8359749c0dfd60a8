"""Atomic file writes: a reader (or a crash) never sees a half-written file.

The data goes to a temporary file in the destination's directory (same file
system, so os.replace is a single atomic rename), is fsynced, then renamed
over the final name. The temporary name ends in ".tmp" so that a leftover
one, after a hard kill, is easy to spot and never mistaken for a result.
"""
import contextlib
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


def write_bytes_atomic(path, data):
    """Write `data` (bytes) to `path` atomically; an existing file is replaced."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # Keep the permissions of the file being replaced, else what open() would give.
        mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else _new_file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt: the final name keeps its old content, no temp is left.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def write_text_atomic(path, text, encoding="utf-8"):
    """Write the string `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode(encoding))


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
