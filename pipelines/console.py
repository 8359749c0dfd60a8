"""What the programs print: quiet by default, more with --verbose.

--verbose: 0 no per-epoch output; 1 (default) Keras' progress bars on a terminal, one
line per epoch otherwise (a log file); 2 one line per epoch; 3 everything, including
TensorFlow's, the converter's and LiteRT's own log lines. The pipeline's own status
lines (stage started, done already, export sizes, warnings, errors) print at every level.
"""
import contextlib
import logging as std_logging
import sys
import time

LOUD = 3


def fit_verbosity(verbose):
    """Keras fit's verbose argument: progress bars only on a terminal."""
    if verbose >= LOUD:
        return 1 if sys.stdout.isatty() else 2
    return 1 if verbose == 1 and sys.stdout.isatty() else 0


def epoch_lines(verbose):
    """Whether the pipeline prints its own one line per epoch (instead of Keras' output)."""
    return verbose == 2 or (verbose == 1 and not sys.stdout.isatty())


def quiet_libraries(verbose):
    """Below LOUD, TensorFlow's Python INFO lines (SavedModel export details) are not shown."""
    std_logging.getLogger("tensorflow").setLevel(std_logging.INFO if verbose >= LOUD else std_logging.WARNING)


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
