"""The file a phone stores: the smallest .tflite LiteRT runs with the int8 model's answers.

LiteRT has no DECODE operator (TFLite Micro's LUT / PRUNE files do not run on phones), but it reads two
smaller forms of an int8 model's kernels: packed INT4 (uniform <= 4-bit lattices) and TFLite's sparse
tensors. Either is shipped only after LiteRT, with its default delegate as a phone app gets it, ran it on
the test split: the pinned LiteRT's XNNPACK delegate refuses some DENSIFY -> FULLY_CONNECTED graphs
("failed to prepare"), which is then a reason in the report, not a broken phone file.
"""


def phone_model(deployed, rep_x, tfl, int8_clean_acc, data, files, verbose=0, tolerance=0.01, agreement=0.98):
    """(the phone's file, summary): the smallest file LiteRT runs whose clean accuracy on the test split is
    within `tolerance` of the int8 model's and whose top-1 agrees with it on >= `agreement` of the images,
    among the int8 model and two ways LiteRT stores kernels in fewer bytes (LiteRT has no DECODE):
    - "int4": uniform <= 4-bit lattice kernels packed as INT4 (atmc_tf.export.pack_int4_kernels);
    - "sparse": sparse kernels in TFLite's sparse tensor format (atmc_tf.export.to_litert_sparse).
    summary: {"int4": ..., "sparse": ..., "file": "int8" | "int4" | "sparse"}; each candidate's entry
    says its bytes and, when it is not used, why."""
    import numpy as np

    from atmc_tf.export import LiteRTModel, atomic, pack_int4_kernels, sparse_summary, to_litert_sparse
    from pipelines import console

    int8_pred = LiteRTModel(tfl).predict(data.x_test).argmax(-1)

    def check(candidate, out):
        """out["ok"]: LiteRT runs `candidate` and it keeps the int8 model's answers."""
        out.update(bytes=len(candidate), int8_bytes=len(tfl), used=False, ok=False)
        if len(candidate) >= len(tfl):
            out["reason"] = "not smaller than the int8 model"
            return out
        try:
            with console.quiet_native(verbose):
                pred = LiteRTModel(candidate).predict(data.x_test).argmax(-1)
        except Exception as err:  # noqa: BLE001 -- a runtime refusal is reported, another file ships
            out["reason"] = f"LiteRT cannot run it: {' '.join(str(err).split())[:300]}"
            return out
        acc, agree = float(np.mean(pred == data.y_test)), float(np.mean(pred == int8_pred))
        out.update(clean_acc=acc, int8_clean_acc=int8_clean_acc, top1_agreement=agree)
        if abs(acc - int8_clean_acc) > tolerance or agree < agreement:
            out["reason"] = (f"clean accuracy {acc:.4f} (int8 model {int8_clean_acc:.4f}, tolerance {tolerance:.2f}) "
                             f"or top-1 agreement {agree:.4f} (< {agreement:.2f}) off the int8 model")
            return out
        out["ok"] = True
        return out

    files_of, out = {}, {}
    packed, plan = pack_int4_kernels(tfl)
    kernels = [k["name"] for k in plan["kernels"] if k["packed"]]
    out["int4"] = {"packed_kernels": kernels}
    if kernels:
        check(packed, out["int4"])
        files_of["int4"] = packed
    else:
        out["int4"].update(bytes=len(packed), int8_bytes=len(tfl), used=False, ok=False,
                           reason="no FULLY_CONNECTED / CONV_2D kernel sits on a uniform <= 4-bit lattice")
    with console.quiet_native(verbose):  # the converter prints its settings on every call
        sparse = to_litert_sparse(deployed, rep_x)
    summary = sparse_summary(sparse)
    out["sparse"] = {"sparse_tensors": summary["tensors"], "densified_bytes": summary["densified_bytes"]}
    if summary["tensors"]:
        check(sparse, out["sparse"])
        files_of["sparse"] = sparse
    else:
        out["sparse"].update(bytes=len(sparse), int8_bytes=len(tfl), used=False, ok=False,
                             reason="the converter found no kernel sparse enough to store sparse")
    passing = sorted((len(files_of[k]), k) for k in files_of if out[k]["ok"])
    out["file"] = passing[0][1] if passing else "int8"
    if not passing:
        return tfl, out
    kind = out["file"]
    out[kind]["used"] = True
    files["tflite_phone"] = files["tflite"].replace("model_int8.tflite", f"model_{kind}.tflite")
    atomic.write_bytes_atomic(files["tflite_phone"], files_of[kind])
    return files_of[kind], out
