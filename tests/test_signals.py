"""A SIGINT / SIGTERM whose first raise is swallowed (delivered inside a __del__ or an ignored callback)
still stops the run at the next safe point; one that arrives mid-training stops after the batch."""
import gc
import signal

import numpy as np
import pytest

from pipelines import signals


@pytest.fixture(autouse=True)
def _clean():
    signals._requested.clear()
    yield
    signals._requested.clear()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed raise, on purpose
def test_a_swallowed_stop_is_raised_again_at_the_next_check():
    class Collected:
        def __del__(self):
            signals._handler(signal.SIGINT, None)  # Python ignores (prints) exceptions raised in __del__

    Collected()
    gc.collect()
    with pytest.raises(signals.Stopped) as stop:
        signals.check()
    assert stop.value.name == "SIGINT" and signals.CODES[stop.value.name] == 130


def test_training_stops_after_the_batch_once_asked():
    import keras
    i = keras.Input((3,))
    model = keras.Model(i, keras.layers.Dense(2)(i))
    model.compile("sgd", "sparse_categorical_crossentropy")
    seen = []

    class AskAtBatch2(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)
            if batch == 1:
                signals._requested.append("SIGTERM")  # as if the raise itself had been lost

    x, y = np.zeros((40, 3), "float32"), np.zeros(40, "int64")
    with pytest.raises(signals.Stopped) as stop:
        model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[AskAtBatch2(), signals.stop_callback()])
    assert stop.value.name == "SIGTERM" and seen == [0, 1]
