"""The fake-quant twin of an int8 .tflite (atmc_tf.export.twin): read from the file, it agrees with LiteRT's
top-1 on >= 99% of the digits test images (conv + BN + depthwise + pooling + dense; a MobileNetV2-style
model with Add and global average pooling), has straight-through gradients, and PGD crafted on it hurts
the .tflite itself."""
import numpy as np
import pytest

from atmc_tf.attacks import PGDConfig
from atmc_tf.export import LiteRTModel, to_int8_tflite
from atmc_tf.export.twin import fake_quant_twin, twin_agreement, twin_attack
from conftest import mobilenet_v2_style, small_cnn


def _fit(model, digits, epochs):
    import keras
    x_tr, y_tr, _, _ = digits
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_tr, y_tr, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def cnn(digits):
    model = _fit(small_cnn(), digits, epochs=8)
    return model, to_int8_tflite(model, digits[0][:300])


def test_twin_agrees_with_litert(cnn, digits):
    model, tfl = cnn
    _, _, x, y = digits
    lite, twin = LiteRTModel(tfl), fake_quant_twin(tfl)
    assert float(np.mean(lite.predict(x).argmax(-1) == y)) > 0.85
    assert twin_agreement(twin, lite, x) >= 0.99
    # logits within a few output steps of LiteRT's (fixed-point requantization vs a float multiply)
    step = float(np.max(np.abs(np.diff(np.unique(lite.predict(x[:50]).ravel())))) or 1.0)
    assert np.max(np.abs(np.asarray(twin(x[:50])) - lite.predict(x[:50]))) <= 3 * step + 1e-6


def test_twin_covers_add_and_mean(digits):
    model = _fit(mobilenet_v2_style(), digits, epochs=4)
    tfl = to_int8_tflite(model, digits[0][:300])
    _, _, x, _ = digits
    assert twin_agreement(fake_quant_twin(tfl), LiteRTModel(tfl), x) >= 0.99


def test_straight_through_gradients(cnn, digits):
    import tensorflow as tf
    _, tfl = cnn
    x = tf.constant(digits[2][:8])
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = tf.reduce_sum(fake_quant_twin(tfl)(x)[:, 0])
    g = tape.gradient(out, x).numpy()
    assert np.isfinite(g).all() and np.count_nonzero(g) > g.size // 4  # rounding does not zero the gradient


def test_pgd_through_the_twin_hurts_the_tflite(cnn, digits):
    """On the .tflite, PGD via the twin is about as strong as PGD transferred from the float Keras model
    (it is no weaker by more than 3 points) and well below clean."""
    import tensorflow as tf

    from atmc_tf.attacks import adversarial_examples
    model, tfl = cnn
    _, _, x, y = digits
    x, y = x[:150], y[:150]
    lite = LiteRTModel(tfl)
    config = PGDConfig(eps=0.15, steps=10)
    tf.random.set_seed(0)
    xa = twin_attack(tfl, x, y, config)
    assert np.abs(xa - x).max() <= 0.15 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    tf.random.set_seed(0)
    xt = adversarial_examples(lambda z: model(z, training=False), x, y, config)
    clean, robust, transfer = (float(np.mean(lite.predict(v).argmax(-1) == y)) for v in (x, xa, xt))
    assert robust < clean - 0.25 and robust <= transfer + 0.03, (clean, robust, transfer)


def test_refuses_an_op_it_does_not_cover(digits):
    import keras
    i = keras.Input((8, 8, 1))
    o = keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Activation("tanh")(i)))
    tfl = to_int8_tflite(keras.Model(i, o), digits[0][:50])
    with pytest.raises(ValueError, match="TANH"):
        fake_quant_twin(tfl)
