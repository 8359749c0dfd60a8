"""Generator quality without downloaded networks: a Frechet distance in the feature space of the
project's own classifier (FD-digits / FD-FMNIST: named for that classifier, it is NOT the FID of
an Inception network, and its values are not comparable with FIDs), the classifier's accuracy on
class-conditional samples, and a PNG grid teacher row vs student row."""
import numpy as np
import scipy.linalg

FD_NAMES = {"digits": "FD-digits", "fashion_mnist": "FD-FMNIST"}


def frechet_distance(feats_a, feats_b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two [n, d] feature sets (float64;
    1e-6 added to both covariances' diagonals, the imaginary round-off of sqrtm dropped)."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    # eps on the diagonal: ReLU features have dead units, whose singular covariances make sqrtm unstable
    eye = np.eye(a.shape[1]) * 1e-6
    s_a, s_b = np.cov(a, rowvar=False) + eye, np.cov(b, rowvar=False) + eye
    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    covmean = np.real(covmean)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean))


def feature_model(classifier):
    import keras
    return keras.Model(classifier.inputs, classifier.get_layer("features").output)


def quality(generator_fn, classifier, codes, labels, real_x, batch_size=256):
    """{fd, cond_acc} of generator_fn(codes) -> images against real images real_x."""
    fake = generator_fn(codes)
    feats = feature_model(classifier)
    fd = frechet_distance(feats.predict(fake, batch_size=batch_size, verbose=0),
                          feats.predict(real_x, batch_size=batch_size, verbose=0))
    pred = np.argmax(classifier.predict(fake, batch_size=batch_size, verbose=0), axis=1)
    return {"fd": fd, "cond_acc": float(np.mean(pred == np.asarray(labels)))}


def sample_grid(rows, row_names, path, title=None):
    """PNG of image rows ([n, h, w, 1] arrays in [0, 1], one per row, one column per class)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * 0.9, n_rows * 1.0 + 0.4), squeeze=False)
    for r, (images, name) in enumerate(zip(rows, row_names)):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.imshow(np.asarray(images[c])[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(str(c), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
