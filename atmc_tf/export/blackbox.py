"""Square Attack (Andriushchenko et al. 2020), L_inf and L2: a score-based black-box attack on any model that
returns logits, an int8 .tflite on LiteRT included (predict_logits=LiteRTModel(...).predict).

A transfer attack crafted on the float Keras model (export.evaluate) says how the .tflite fares
against someone who has the float weights; this says how it fares against someone who can only
query the deployed file, quantized logits and all. NumPy only, no TensorFlow import.

The algorithm, as in the paper and fra31/auto-attack (square.py): the margin loss
z_y - max_{i != y} z_i, minimised; a start of vertical stripes (every column of every channel
shifted by +-eps); then per iteration one random s x s window, per channel set to x +- eps, kept
if it lowers the margin or misclassifies. Differences, all in the attacker's favour or for
accounting: each example draws its own window and signs (auto-attack shares one window across the
batch), the window may touch the last row and column, a window that would not change the current
image is redrawn (up to 10 times) and never queried, and examples already misclassified are not
queried again.

L2 (norm="2"), as auto-attack's attack_single_run for 'L2': a start of "meta pseudo-gaussian" blocks
(eta: concentric rectangles weighted 1/(k+1)^2, the upper half of the window negated) tiled over the
image with a random sign per block and channel, scaled onto the eps sphere; then per iteration two
random s x s windows (s >= 3, odd): the perturbation's mass in both windows plus the budget left
unused (eps^2 - ||delta||^2, shared across channels) moves into the first window, as its old
(normalised) content plus a new pseudo-gaussian pattern of random sign per channel, and the second
window is emptied; the whole perturbation is rescaled to norm eps and the image clipped to the box,
so ||x_adv - x||_2 <= eps (up to float rounding, about 1e-6 relative) at every query. Same
differences from auto-attack as for L_inf: windows, signs and the transpose of eta drawn per example.
"""
import math

import numpy as np

# Iterations (of 10,000) after which the square's area p halves: the paper's schedule.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_REDRAWS = 10


def p_schedule(i, n_iters, p_init):
    """The fraction of pixels the window covers at iteration i (0-based) of n_iters: p_init halved
    at each of the paper's iterations for 10,000 queries, rescaled to n_iters (auto-attack's
    resc_schedule), so a short budget also ends with small windows."""
    it = int(i / max(n_iters, 1) * 10000)
    return p_init / 2 ** sum(it > h for h in _P_HALVINGS)


def margins(logits, y):
    """z_y - max_{i != y} z_i per example; <= 0 when another class is at least as likely."""
    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(y))
    z_y = logits[rows, y]
    others = logits.copy()
    others[rows, y] = -np.inf
    return z_y - others.max(axis=1)


NORMS = ("inf", "2")


def _window(rows, cols, vh, vw, s):
    """(n, h, w, 1) boolean masks of the s x s windows at rows vh and columns vw (one per example)."""
    return (((rows >= vh[:, None]) & (rows < vh[:, None] + s))[:, :, None, None]
            & ((cols >= vw[:, None]) & (cols < vw[:, None] + s))[:, None, :, None])


def _linf_start(rng, x, eps, clip_min, clip_max):
    n, _, w, c = x.shape
    stripes = rng.choice(np.array([-eps, eps], x.dtype), size=(n, 1, w, c))
    return np.clip(x + stripes, clip_min, clip_max)


def _linf_propose(rng, x, x_best, p, eps, clip_min, clip_max):
    """One s x s window per example, per channel set to x +- eps."""
    n, h, w, c = x.shape
    s = int(min(max(round(math.sqrt(p * h * w)), 1), h, w))
    vh = rng.integers(0, h - s + 1, n)
    vw = rng.integers(0, w - s + 1, n)
    window = _window(np.arange(h), np.arange(w), vh, vw, s)
    signs = rng.choice(np.array([-eps, eps], x.dtype), size=(n, 1, 1, c))
    vertex = np.clip(x + signs, clip_min, clip_max)
    return np.where(window, vertex, x_best)


def _eta_rectangles(a, b):
    """auto-attack's eta_rectangles for L2: an a x b patch of concentric rectangles around its centre,
    ring k weighted 1/(k+1)^2, unit L2 norm."""
    delta = np.zeros((a, b))
    if a == 0 or b == 0:
        return delta
    r, q = a // 2, b // 2  # the centre, as auto-attack's x_c - 1, y_c - 1
    for k in range(max(r, q) + 1):
        delta[max(r - k, 0):min(r - k + 2 * k + 1, a), max(q - k, 0):min(q - k + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
    return delta / np.sqrt((delta ** 2).sum())


def meta_pseudo_gaussian(s):
    """auto-attack's eta(s) for L2 (without its random transpose): an s x s pattern, the upper half
    rows a positive pseudo-gaussian bump, the lower half a negative one; unit L2 norm."""
    delta = np.zeros((s, s))
    delta[:s // 2] = _eta_rectangles(s // 2, s)
    delta[s // 2:] = -_eta_rectangles(s - s // 2, s)
    return delta / np.sqrt((delta ** 2).sum())


def _l2_normalise(delta):
    return delta / (np.sqrt((delta ** 2).sum(axis=(1, 2, 3), keepdims=True)) + 1e-12)


def _l2_onto_sphere(x, delta, eps, clip_min, clip_max):
    out = np.clip(x + _l2_normalise(delta) * eps, clip_min, clip_max).astype(x.dtype)
    # clipping only shortens delta, but float32 rounding of x + delta can leave it a hair over eps
    norm = np.sqrt(((out.astype(np.float64) - x) ** 2).sum(axis=(1, 2, 3)))
    over = norm > eps
    if over.any():
        shrink = (eps / norm[over] * (1 - 1e-6))[:, None, None, None]
        out[over] = np.clip(x[over] + (out[over] - x[over].astype(np.float64)) * shrink, clip_min, clip_max)
    return out


def _l2_start(rng, x, eps, clip_min, clip_max):
    """auto-attack's L2 start: pseudo-gaussian blocks of side max(h // 5, 1), a random sign per block,
    example and channel, from an offset that centres five blocks; onto the eps sphere."""
    n, h, w, c = x.shape
    s = max(min(h, w) // 5, 1)
    eta = meta_pseudo_gaussian(s)
    delta = np.zeros(x.shape)
    for vh in range(max((h - 5 * s) // 2, 0), h - s + 1, s):
        for vw in range(max((w - 5 * s) // 2, 0), w - s + 1, s):
            delta[:, vh:vh + s, vw:vw + s, :] += eta[None, :, :, None] * rng.choice([-1.0, 1.0], size=(n, 1, 1, c))
    return _l2_onto_sphere(x, delta, eps, clip_min, clip_max)


def _l2_propose(rng, x, x_best, p, eps, clip_min, clip_max):
    """Move the mass of two s x s windows (plus the unused budget) into the first, with a new
    pseudo-gaussian pattern; see the module's docstring."""
    n, h, w, c = x.shape
    s = max(int(round(math.sqrt(p * h * w))), 3)
    s = min(s + 1 - s % 2, h, w)
    rows, cols = np.arange(h), np.arange(w)
    delta = x_best.astype(np.float64) - x
    vh, vw = rng.integers(0, h - s + 1, n), rng.integers(0, w - s + 1, n)
    vh2, vw2 = rng.integers(0, h - s + 1, n), rng.integers(0, w - s + 1, n)
    first = _window(rows, cols, vh, vw, s)
    both = first | _window(rows, cols, vh2, vw2, s)
    ex = np.arange(n)[:, None, None]
    r_idx, c_idx = (vh[:, None] + np.arange(s))[:, :, None], (vw[:, None] + np.arange(s))[:, None, :]
    old = delta[ex, r_idx, c_idx]  # (n, s, s, c): the first window
    norm_first = np.sqrt((old ** 2).sum(axis=(1, 2), keepdims=True))
    norm_image = np.sqrt((delta ** 2).sum(axis=(1, 2, 3)))[:, None, None, None]
    norm_both = np.sqrt(((delta * both) ** 2).sum(axis=(1, 2), keepdims=True))
    eta = meta_pseudo_gaussian(s)
    eta = np.where(rng.random(n)[:, None, None] > 0.5, eta.T[None], eta[None])[..., None]
    new = eta * rng.choice([-1.0, 1.0], size=(n, 1, 1, c)) + old / (1e-12 + norm_first)
    new = new / (1e-12 + np.sqrt((new ** 2).sum(axis=(1, 2), keepdims=True))) * np.sqrt(
        np.maximum(eps ** 2 - norm_image ** 2, 0.0) / c + norm_both ** 2)
    delta = np.where(both & ~first, 0.0, delta)
    delta[ex, r_idx, c_idx] = new
    return _l2_onto_sphere(x, delta, eps, clip_min, clip_max)


_STEPS = {"inf": (_linf_start, _linf_propose), "2": (_l2_start, _l2_propose)}


def square_attack(predict_logits, x, y, eps, n_queries=1000, p_init=0.8, seed=0, clip_min=0.0, clip_max=1.0,
                  norm="inf"):
    """Square Attack, L_inf (norm="inf") or L2 (norm="2"); returns (x_adv, queries).

    predict_logits: float images (n, h, w, c) -> float logits (n, classes), called once per
    iteration on the examples still classified correctly (for a .tflite, LiteRTModel.predict).
    n_queries: at most this many calls per example, counting the clean check (an example the model
    already gets wrong is returned unchanged after 1 query) and the start (stripes for L_inf,
    pseudo-gaussian blocks for L2). queries: int array, the calls spent on each example. x_adv stays
    within eps (L_inf, or L2 over the whole image) of x and inside [clip_min, clip_max] at every
    query; per example it is x, a misclassified image, or the lowest-margin image found, so the
    accuracy of a deterministic model on x_adv is never above its accuracy on x.

    p_init 0.8 (auto-attack's default, with its rescaled schedule) rather than the paper's 0.05 for
    ImageNet: on the small images this project deploys (8x8, 28x28) p = 0.05 is a 2x2 (6x6) window
    from the first query, so the large-window phase that moves the prediction fastest would be lost.
    Measured on 100 digits at eps 0.15 with 300 queries (tests/test_square.py's model): mean queries
    114 with 0.8 against 132 with 0.05, accuracy 0.22 against 0.25 (Keras); 117 against 137 on the
    int8 .tflite.
    """
    norm = str(norm)
    if norm not in _STEPS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"square_attack needs images shaped (n, h, w, c), got {x.shape}")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if int(n_queries) < 1:
        raise ValueError(f"n_queries must be >= 1, got {n_queries}")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    if not clip_min < clip_max:
        raise ValueError("clip_min must be < clip_max")
    start, propose = _STEPS[norm]
    y = np.asarray(y).reshape(-1).astype(np.int64)
    n = len(x)
    rng = np.random.default_rng(seed)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    x = x.astype(dtype)
    queries = np.zeros(n, np.int64)
    x_best = x.copy()

    def query(idx, images):
        if not len(idx):  # no empty batches: not every runner takes them
            return np.zeros(0), np.zeros(0, bool)
        logits = np.asarray(predict_logits(images))
        queries[idx] += 1
        return margins(logits, y[idx]), np.argmax(logits, axis=1) != y[idx]

    margin, done = query(np.arange(n), x)  # the clean check: misclassified examples stay x
    if n_queries >= 2 and eps > 0:
        idx = np.flatnonzero(~done)
        if len(idx):
            x_best[idx] = start(rng, x[idx], eps, clip_min, clip_max)
            margin[idx], done[idx] = query(idx, x_best[idx])

    n_iters = int(n_queries) - 2
    for i in range(max(n_iters, 0) if eps > 0 else 0):
        idx = np.flatnonzero(~done)
        if not len(idx):
            break
        p = p_schedule(i, n_iters, p_init)
        candidate = x_best[idx].copy()
        pending = np.ones(len(idx), bool)  # proposals still equal to the current image
        for _ in range(_REDRAWS):
            k = np.flatnonzero(pending)
            if not len(k):
                break
            candidate[k] = propose(rng, x[idx[k]], x_best[idx[k]], p, eps, clip_min, clip_max)
            pending[k] = np.all(np.abs(candidate[k] - x_best[idx[k]]) < 1e-7, axis=(1, 2, 3))
        ask = ~pending
        if not ask.any():
            continue
        idx, candidate = idx[ask], candidate[ask]
        new_margin, wrong = query(idx, candidate)
        keep = (new_margin < margin[idx]) | wrong
        x_best[idx[keep]] = candidate[keep]
        margin[idx[keep]] = new_margin[keep]
        done[idx] |= wrong
    return x_best, queries
