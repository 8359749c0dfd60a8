"""SIGINT and SIGTERM stop a run where it is, reliably.

Python delivers a signal by raising in whatever bytecode runs next; when that is a __del__ or a
callback whose exceptions are ignored (TensorFlow and h5py objects are collected during training),
the exception is lost and the run went on to exit 0 (seen once in CI). So the handler also
records the request, and check() raises it again at safe points: after every training batch
(StopOnSignal) and between the program's phases.
"""
import signal

CODES = {"SIGINT": 130, "SIGTERM": 143}
_requested = []


class Stopped(BaseException):
    """A stop asked for by SIGINT or SIGTERM (name); BaseException, like KeyboardInterrupt."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


def _handler(signum, frame):
    name = signal.Signals(signum).name
    if name not in _requested:
        _requested.append(name)
    raise Stopped(name)


def install():
    """SIGINT and SIGTERM raise Stopped (and are remembered for check())."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def check():
    """Raise Stopped if a signal asked for a stop (its first raise may have been swallowed)."""
    if _requested:
        raise Stopped(_requested[0])


def stop_callback():
    """A Keras callback that calls check() after every batch and epoch."""
    import keras

    class StopOnSignal(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            check()

        def on_test_batch_end(self, batch, logs=None):
            check()

        def on_epoch_end(self, epoch, logs=None):
            check()

    return StopOnSignal()
