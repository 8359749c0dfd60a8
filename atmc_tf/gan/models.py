"""Class-conditional DCGAN-style generator and discriminator for 8x8 digits and 28x28 Fashion-MNIST.

The generator has ONE input, the code [noise (z_dim), one-hot label (num_classes)] concatenated:
to_int8_tflite, LiteRT and TFLite Micro take single-input models, and the concatenation costs
nothing inside the first Dense. It upsamples with UpSampling2D(bilinear) + Conv2D (not
Conv2DTranspose): channel surgery (atmc_tf.export.surgery) knows how UpSampling2D carries channels,
and the checkerboard artefacts of strided transposed convolutions are avoided too. Not the nearest
mode: Keras 3 lowers it to TILE, which TFLite Micro lacks (bilinear is RESIZE_BILINEAR); not
keras.layers.Resizing: with it in the model the SavedModel export traced every BatchNormalization
in training mode. Images are in [0, 1] through hard_sigmoid, as atmc_tf.data gives them: int8
LOGISTIC (sigmoid) gave TFLM outputs 2 int8 steps off LiteRT's (more after training), hard_sigmoid
becomes a clamp in the output's quantization range.

    code -> Dense(s*s*c0) -> BN -> ReLU -> Reshape(s, s, c0)
         -> [UpSampling2D(2x, bilinear) -> Conv2D(c) -> BN -> ReLU] per upsampling
         -> Conv2D(c_last) -> BN -> ReLU -> Conv2D(1) -> hard_sigmoid

The BatchNorms after the hidden Conv2D layers are the prunable ones (prunable_bns): their gammas
carry GS's L1 penalty. On request (dense=True; pipelines.gan --prune_project) the project Dense's
channels are too: its BN normalises every unit (before the Reshape, so the converter folds it into
the Dense and TFLite Micro matches LiteRT exactly), a project channel c is its units p*c0 + c at
every position p, a group of s*s gammas (channel_groups: atmc_tf.constraints.BNChannelL1Prox
thresholds and ranks such groups as one channel), and surgery cuts them together
(atmc_tf.export.surgery: a Reshape of a flat vector into channels). The project Dense holds most of a
small generator's weights and its channels are the first conv's inputs, so pruning them frees both.
Not the default: a group's scale (the root mean square of its gammas) sits near its tensor's largest
far more than a single gamma does (teacher on digits, 2026-12-02: the middle 80% of the project's
normalised scales in 0.975-0.992, conv0's in 0.853-0.939), so the per-tensor normalised ranking keeps
project channels first (a --channel_budget=0.25 student kept 35 of 64 project channels and 2 of
conv0's 64). Also measured: a BN per channel AFTER the Reshape, the DCGAN way, gave a teacher with
2.4x the FD-digits (one run each) and TFLite Micro outputs 3 int8 steps off LiteRT's, from the
broadcast MUL/ADD it leaves in the int8 graph.
"""
import keras
import numpy as np

L = keras.layers

# dataset name -> (image side, starting side, number of UpSampling2D blocks)
GEOMETRY = {"digits": (8, 4, 1), "fashion_mnist": (28, 7, 2)}


def make_code(noise, labels, num_classes):
    """The generator's input: noise and the one-hot labels side by side (float32)."""
    onehot = np.eye(num_classes, dtype=np.float32)[np.asarray(labels, np.int64)]
    return np.concatenate([np.asarray(noise, np.float32), onehot], axis=1)


def sample_codes(n, z_dim, num_classes, seed, labels=None):
    """(codes, labels): n standard-normal noise vectors with labels (cycled 0..9 when None)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes if labels is None else np.asarray(labels)
    return make_code(rng.standard_normal((n, z_dim)).astype(np.float32), labels, num_classes), labels


def generator(dataset, z_dim=16, num_classes=10, width=32, seed=0):
    """The conditional generator: hidden convolutions of `width`, 2*width, width channels."""
    side, start, ups = GEOMETRY[dataset]
    init = keras.initializers.GlorotUniform(seed=seed)
    code = keras.Input((z_dim + num_classes,), name="code")
    x = L.Dense(start * start * 2 * width, use_bias=False, kernel_initializer=init, name="project")(code)
    x = L.BatchNormalization(name="project_bn")(x)  # before the Reshape: the converter folds it into the Dense
    x = L.ReLU(name="project_relu")(x)
    x = L.Reshape((start, start, 2 * width), name="reshape")(x)
    for i in range(ups):
        x = L.UpSampling2D(interpolation="bilinear", name=f"up{i}")(x)
        x = L.Conv2D(2 * width if i == 0 else width, 3, padding="same", use_bias=False, kernel_initializer=init,
                     name=f"conv{i}")(x)
        x = L.BatchNormalization(name=f"conv{i}_bn")(x)
        x = L.ReLU(name=f"conv{i}_relu")(x)
    x = L.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=init, name="conv_last")(x)
    x = L.BatchNormalization(name="conv_last_bn")(x)
    x = L.ReLU(name="conv_last_relu")(x)
    x = L.Conv2D(1, 3, padding="same", kernel_initializer=init, name="to_image")(x)
    image = L.Activation("hard_sigmoid", name="image")(x)
    assert image.shape[1] == side
    return keras.Model(code, image, name="generator")


def prunable_bns(gen, dense=False):
    """[(hidden Conv2D, the BatchNormalization named after it)] whose channels GS prunes, in layer order,
    and first the project Dense's when dense=True; never the output convolution (layers are found by this
    module's names)."""
    names = {layer.name for layer in gen.layers}
    kinds = (L.Conv2D, L.Dense) if dense else (L.Conv2D,)
    return [(layer, gen.get_layer(layer.name + "_bn")) for layer in gen.layers
            if type(layer) in kinds and layer.name + "_bn" in names]


def _reshape_channels(gen):
    (reshape,) = [layer for layer in gen.layers if type(layer) is L.Reshape]
    return int(reshape.target_shape[-1])


def channel_groups(gen, dense=False):
    """Per prunable BN (prunable_bns order) the number of its gammas that make one channel: 1 for a
    Conv2D's; s*s for the project's BN of every unit (s*s positions of the Reshape's c0 channels)."""
    return [int(bn.gamma.shape[0]) // _reshape_channels(gen) if type(layer) is L.Dense else 1
            for layer, bn in prunable_bns(gen, dense)]


def projection(gen):
    """(Dense project, its BN, channels c0, the Conv2D that reads the reshaped map) of a generator."""
    layer, bn = prunable_bns(gen, dense=True)[0]
    assert type(layer) is L.Dense, "the generator's first prunable layer is its project Dense"
    convs = [layer for layer in gen.layers if type(layer) is L.Conv2D]
    return layer, bn, _reshape_channels(gen), convs[0]


def discriminator(input_shape, num_classes=10, width=32, seed=0):
    """Conditional LSGAN discriminator: [image, one-hot label] -> one unbounded score."""
    init = keras.initializers.GlorotUniform(seed=seed)
    image = keras.Input(input_shape, name="image")
    onehot = keras.Input((num_classes,), name="onehot")
    x = image
    for i, c in enumerate((width, 2 * width)):
        x = L.Conv2D(c, 3, strides=2, padding="same", kernel_initializer=init, name=f"d_conv{i}")(x)
        x = L.LeakyReLU(0.2, name=f"d_lrelu{i}")(x)
    x = L.Flatten(name="d_flat")(x)
    x = L.Concatenate(name="d_cond")([x, onehot])
    x = L.Dense(4 * width, kernel_initializer=init, name="d_hidden")(x)
    x = L.LeakyReLU(0.2, name="d_hidden_lrelu")(x)
    score = L.Dense(1, kernel_initializer=init, name="d_score")(x)
    return keras.Model([image, onehot], score, name="discriminator")


def classifier(input_shape, num_classes=10, width=32, seed=0):
    """The project's own classifier for FD-digits / FD-FMNIST and conditional accuracy: its
    'features' layer (penultimate, after ReLU) is the feature space of the Frechet distance."""
    init = keras.initializers.GlorotUniform(seed=seed)
    image = keras.Input(input_shape, name="image")
    x = image
    for i, c in enumerate((width, 2 * width)):
        x = L.Conv2D(c, 3, padding="same", activation="relu", kernel_initializer=init, name=f"c_conv{i}")(x)
        x = L.MaxPooling2D(name=f"c_pool{i}")(x)
    x = L.Flatten(name="c_flat")(x)
    x = L.Dense(64, activation="relu", kernel_initializer=init, name="features")(x)
    logits = L.Dense(num_classes, kernel_initializer=init, name="logits")(x)
    return keras.Model(image, logits, name="classifier")
