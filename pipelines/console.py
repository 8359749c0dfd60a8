"""What the programs print: quiet by default, more with --verbose.

--verbose: 0 no per-epoch output; 1 (default) Keras' progress bars on a terminal, one
line per epoch otherwise (a log file); 2 one line per epoch; 3 everything, including
TensorFlow's, the converter's and LiteRT's own log lines. The pipeline's own status
lines (stage started, done already, export sizes, warnings, errors) print at every level.
"""
import contextlib
import logging as std_logging
import re
import sys
import time

LOUD = 3


def one_line(message):
    """The message on a single line (library and Keras messages may span several)."""
    return " ".join(str(message).split())


def fail(message):
    """A bad flag, file or environment problem: one line on stderr, exit code 2 (every program here)."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.exit(2)


def fit_verbosity(verbose):
    """Keras fit's verbose argument: progress bars only on a terminal."""
    if verbose >= LOUD:
        return 1 if sys.stdout.isatty() else 2
    return 1 if verbose == 1 and sys.stdout.isatty() else 0


def epoch_lines(verbose):
    """Whether the pipeline prints its own one line per epoch (instead of Keras' output)."""
    return verbose == 2 or (verbose == 1 and not sys.stdout.isatty())


def quiet_libraries(verbose):
    """TensorFlow's Python log lines: all at LOUD; warnings at 2 (e.g. "5 out of the last 5 calls ...
    triggered tf.function retracing", which the evaluation's per-batch-shape functions cause and a
    user cannot act on); errors only at 0 and 1 (the default)."""
    level = std_logging.INFO if verbose >= LOUD else std_logging.WARNING if verbose == 2 else std_logging.ERROR
    std_logging.getLogger("tensorflow").setLevel(level)


@contextlib.contextmanager
def quiet_native(verbose):
    """Hold back what C++ code prints on file descriptors 1 and 2 inside the block (the TFLite
    converter's settings dump, LiteRT's delegate notice); shown after all if the block fails."""
    if verbose >= LOUD:
        yield
        return
    from atmc_tf.export.micro import captured_output  # numpy only: no TensorFlow here

    held, failed = [], True
    try:
        with captured_output((1, 2)) as held:
            yield
        failed = False
    finally:
        if failed and held:
            sys.stderr.write("\n".join(held) + "\n")


# TensorFlow's / absl's C++ log lines: "E0000 00:00:1796138616.215544   9995 node_def_util.cc:682] ..."
# (the C++ logger has no date before absl::InitializeLog, so it prints 0000 00:00 and epoch seconds;
# the pipeline's own absl Python lines carry a real date) and the notice that says so.
_NATIVE_LOG = re.compile(r"^[IWEF]0000 00:00:\d+\.\d+ +\d+ \S+:\d+\] |^WARNING: All log messages before "
                         r"absl::InitializeLog\(\) is called are written to STDERR$")


def filter_native_logs(verbose):
    """Below LOUD, for the rest of the process: drop TensorFlow's C++ log lines from stderr (e.g. "NodeDef
    mentions attribute use_unbounded_threadpool", cuInit probing), which TF_CPP_MIN_LOG_LEVEL does not
    reach in TF 2.21; every other line (Python's, the pipeline's, a child process's) passes unchanged.
    File descriptor 2 becomes a pipe read by a thread; at exit the thread drains it."""
    if verbose >= LOUD or _FILTER:
        return
    import atexit
    import os
    import threading
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump():
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(os.dup(original), "wb", buffering=0) as out:
            for line in pipe:
                if not _NATIVE_LOG.match(line.decode(errors="replace")):
                    out.write(line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def stop():
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer closes: the thread reads EOF, drains and ends
        thread.join(timeout=5)

    atexit.register(stop)
    _FILTER.append(stop)


_FILTER = []


def epoch_line(stage, epochs):
    """A Keras callback printing one line per epoch on stdout: the stage, the epoch, the figures.
    (Keras is imported here, not at the top: the programs check their input before loading it.)"""
    import keras

    keys = ("loss", "clean_acc", "adv_acc", "val_clean_acc", "val_adv_acc", "nnz", "w_z_dist")

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            figures = " ".join(f"{k} {logs[k]:.4g}" for k in keys if k in logs)
            print(f"stage {stage} epoch {epoch + 1}/{epochs}: {figures} ({time.time() - self._t:.1f} s)", flush=True)

    return EpochLine()
