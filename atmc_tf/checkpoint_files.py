"""The files of an epoch checkpoint (atmc_tf.training.checkpoint.ResumableCheckpoint), read
without Keras or TensorFlow: a program can tell whether a run can resume before it imports them.

A checkpoint folder holds `latest.weights.h5` + `training_metadata.json` (Keras'
BackupAndRestore names) and the previous epoch's pair as `previous.weights.h5` + `previous_training_metadata.json`. The metadata names the
SHA-256 of its weights file, so a pair is intact exactly when the digests match.
"""
import contextlib
import hashlib
import json
import os

WEIGHTS = "latest.weights.h5"
METADATA = "training_metadata.json"
# The previous epoch's pair (Keras' loader wants a name ending in .weights.h5).
PREVIOUS_WEIGHTS = "previous.weights.h5"
PREVIOUS_METADATA = "previous_training_metadata.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder holds files but no intact checkpoint."""


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata(path):
    """(metadata dict, None) or (None, why it cannot be used) for the metadata file at `path`."""
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as err:
        return None, f"not readable JSON ({type(err).__name__})"
    if not isinstance(meta, dict):
        return None, f"a JSON {type(meta).__name__}, expected an object"
    epoch = meta.get("epoch")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
        return None, f"epoch is {epoch!r}, expected a count >= 0"
    if not isinstance(meta.get("weights_sha256"), str):
        return None, "no weights_sha256 (not written by atmc_tf's ResumableCheckpoint)"
    return meta, None


def find_checkpoint(backup_dir):
    """(weights_path, metadata) of the newest intact checkpoint in `backup_dir`, or None if there
    is none at all. Raises CheckpointError, naming each file's problem, when files are there but
    no weights file matches the digest a metadata file names (every copy damaged). Reads files
    only; needs no model."""
    weights = [os.path.join(backup_dir, n) for n in (WEIGHTS, PREVIOUS_WEIGHTS)]
    metas = [os.path.join(backup_dir, n) for n in (METADATA, PREVIOUS_METADATA)]
    present = [p for p in weights + metas if os.path.exists(p)]
    if not present:
        return None
    digests = {sha256(w): w for w in weights if os.path.isfile(w)}
    best, problems = None, []
    for m in metas:
        if not os.path.exists(m):
            continue
        meta, problem = _metadata(m)
        if meta is None:
            problems.append(f"{m} is corrupt ({problem})")
            continue
        w = digests.get(meta["weights_sha256"])
        if w is None:
            problems.append(f"no weights file matches the SHA-256 that {os.path.basename(m)} names")
        elif best is None or meta["epoch"] > best[1]["epoch"]:
            best = (w, meta)
    if best is None:
        if not any(os.path.exists(m) for m in metas):
            problems.append("no metadata file (training_metadata.json)")
        for w in weights:
            if os.path.exists(w):
                size = os.path.getsize(w)
                state = "an empty file" if size == 0 else f"{size} bytes"
                problems.append(f"{w} is {state}: truncated or damaged unless a metadata file matches it")
        raise CheckpointError(f"{backup_dir} holds no intact epoch checkpoint: {'; '.join(problems)}")
    return best


def is_previous(weights_path):
    """Whether find_checkpoint fell back to the previous epoch's pair."""
    return os.path.basename(weights_path) == PREVIOUS_WEIGHTS


def remove_temporaries(backup_dir):
    """Delete what an interrupted save left (temporary names start with '.' and hold '.tmp')."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(backup_dir):
            if name.startswith(".") and ".tmp" in name:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(backup_dir, name))


