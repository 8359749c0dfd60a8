"""Training batches whose order is a function of (seed, epoch) alone, so a run resumed at epoch e
sees exactly the batches an uninterrupted run would have seen from epoch e on.

Keras' own shuffle (fit(x, y, shuffle=True)) draws each epoch's permutation from TensorFlow's
stateful RNG, which a new process starts over: a resumed run trains its remaining epochs on a
different order than an uninterrupted one. Here epoch e's permutation is the argsort of a
stateless uniform draw seeded with (seed, e).
"""
import tensorflow as tf


def resumable_batches(x, y, batch_size, seed, first_epoch=0):
    """(dataset, steps_per_epoch): shuffled (x, y) batches from epoch `first_epoch` on, the last
    batch of an epoch partial (as Keras' own). Pass both to fit(dataset, steps_per_epoch=...,
    epochs=...), with first_epoch the epoch fit resumes from (the checkpoint's; 0 for a fresh start).
    """
    n = len(y)
    if n == 0:
        raise ValueError("no training examples")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    steps = -(-n // int(batch_size))
    x_all, y_all = tf.constant(x), tf.constant(y)
    seed = int(seed)

    def epoch_order(epoch):
        draw = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(tf.argsort(draw)).batch(int(batch_size))

    dataset = (tf.data.Dataset.range(int(first_epoch), 2**62).flat_map(epoch_order)
               .map(lambda idx: (tf.gather(x_all, idx), tf.gather(y_all, idx)))
               .prefetch(tf.data.AUTOTUNE))
    return dataset, steps


def replay(dataset, times):
    """Each batch of `dataset` `times` times in a row (free adversarial training's minibatch replay,
    terms.FreeAdversarialLoss): pass fit steps_per_epoch * times, and epochs / times for the same work."""
    if int(times) < 1:
        raise ValueError(f"times must be >= 1, got {times}")
    if int(times) == 1:
        return dataset
    return dataset.flat_map(lambda *batch: tf.data.Dataset.from_tensors(batch).repeat(int(times)))
