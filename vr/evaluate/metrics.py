"""Classification metrics over predicted probabilities, and model agreement.

Conventions (also in report.md):
- macro / weighted averages use scikit-learn's default label set: every class that occurs in
  the true labels or the predictions; a precision or recall whose denominator is 0 counts as 0;
- per-class scores and the confusion matrix cover all of the model's classes, in its order;
- the normalised confusion matrix divides each row by its true count (rows sum to 1; a class
  without images is a row of zeros);
- top-k counts an image as right when its true class is among the k most probable, k = min(5, C).

Precision, recall and F1 are scikit-learn's (``precision_recall_fscore_support(zero_division=0)``),
computed here with the same float64 arithmetic from the confusion matrix, so the numbers are the
same to the last bit (tests/test_metrics_exact.py) without importing scikit-learn and SciPy, about
1.5 s of every `vr eval` (benchmarks/peers.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vr.data.classes import ClassMap, natural_key
SUMMARY_KEYS = ("accuracy", "top5", "macro_f1", "macro_precision", "macro_recall", "weighted_f1")


def top_k_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """[N, k] class indices per row, most probable first; ties keep the lower index first."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int = 5) -> float:
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return 0.0
    k = max(1, min(k, probs.shape[1]))
    top = top_k_indices(probs, k)
    return float((top == y_true[:, None]).any(axis=1).mean())


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, c: int) -> np.ndarray:
    """[C, C] int64 counts, rows the true class, columns the predicted one."""
    return np.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den in float64, 0 where den is 0 (scikit-learn's _prf_divide with zero_division=0)."""
    den = np.asarray(den, dtype=np.float64).copy()
    zero = den == 0
    den[zero] = 1
    out = np.asarray(num, dtype=np.float64) / den
    out[zero] = 0.0
    return out


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 and support, as scikit-learn computes them: F1 is
    2 tp / (2 tp + fn + fp), i.e. (1 + beta^2) tp / (beta^2 true + pred) with beta = 1."""
    tp = np.diag(cm).astype(np.int64)
    pred, true = cm.sum(axis=0).astype(np.int64), cm.sum(axis=1).astype(np.int64)
    f1 = _divide((1 + 1.0) * tp.astype(np.float64), 1.0 * true.astype(np.float64) + pred.astype(np.float64))
    return _divide(tp, pred), _divide(tp, true), f1, true


def _weighted(values: np.ndarray, weights: np.ndarray) -> float:
    try:
        return float(np.average(values, weights=weights))
    except ZeroDivisionError:  # every weight 0: scikit-learn falls back to the plain mean
        return float(np.average(values))


def worst_classes(per_class: dict, cm: np.ndarray, names: Sequence[str], k: int) -> list[dict]:
    """The k classes (with images) of lowest F1; ties by recall, then more images first."""
    index = {n: i for i, n in enumerate(names)}
    present = [(n, d) for n, d in per_class.items() if d["support"] > 0]
    present.sort(key=lambda t: (t[1]["f1"], t[1]["recall"], -t[1]["support"], natural_key(t[0])))
    out = []
    for name, d in present[:max(0, k)]:
        i = index[name]
        row = cm[i].copy()
        row[i] = 0
        j = int(row.argmax()) if row.size else 0
        out.append({"class": name, **d,
                    "most_confused_with": names[j] if row.size and row[j] > 0 else None,
                    "most_confused_count": int(row[j]) if row.size else 0})
    return out


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, classes: ClassMap | Sequence[str],
                           worst_k: int = 5) -> dict:
    """All per-model numbers for report.json, from true indices and [N, C] probabilities."""
    names = list(classes.names if isinstance(classes, ClassMap) else classes)
    c = len(names)
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs)
    y_pred = probs.argmax(axis=1)
    cm = confusion_counts(y_true, y_pred, c)
    p, r, f, s = precision_recall_f1(cm)
    # the averages' label set: every class among the true labels or the predictions
    present = np.flatnonzero(cm.sum(axis=0) + cm.sum(axis=1) > 0)
    mp, mr, mf = (float(np.nanmean(v[present])) if present.size else 0.0 for v in (p, r, f))
    wf = _weighted(f[present], s[present]) if present.size else 0.0
    per_class = {names[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(s[i])} for i in range(c)}
    k = min(5, c)
    return {
        "n_images": int(len(y_true)),
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "top5": top_k_accuracy(y_true, probs, k),
        "top5_k": k,
        "macro_f1": float(mf),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "weighted_f1": float(wf),
        "per_class": per_class,
        "confusion_matrix": {"labels": names, "counts": cm.astype(int).tolist(),
                             "normalized": np.round(normalise_rows(cm), 6).tolist()},
        "worst_classes": worst_classes(per_class, cm, names, worst_k),
    }


def agreement(a_probs: np.ndarray, a_classes: ClassMap, b_probs: np.ndarray, b_classes: ClassMap,
              images: Sequence[str], true_labels: Sequence[str]) -> dict:
    """Compare two models on the same images, matching classes by name (their orders may differ)."""
    a_probs, b_probs = np.asarray(a_probs), np.asarray(b_probs)
    b_set = set(b_classes.names)
    common = [n for n in a_classes.names if n in b_set]
    ia = [a_classes.index(n) for n in common]
    ib = [b_classes.index(n) for n in common]
    a_pred = [a_classes.names[i] for i in a_probs.argmax(axis=1)]
    b_pred = [b_classes.names[i] for i in b_probs.argmax(axis=1)]
    a_conf, b_conf = a_probs.max(axis=1), b_probs.max(axis=1)
    same = np.array([x == y for x, y in zip(a_pred, b_pred)], dtype=bool)
    diff = np.abs(a_probs[:, ia] - b_probs[:, ib]) if common else np.zeros((len(images), 0))
    flipped = [{"image": images[i], "true_label": true_labels[i], "a_pred": a_pred[i], "b_pred": b_pred[i],
                "a_confidence": round(float(a_conf[i]), 6), "b_confidence": round(float(b_conf[i]), 6)}
               for i in np.flatnonzero(~same)]
    return {
        "n_images": int(len(images)),
        "top1_agreement": float(same.mean()) if len(same) else 1.0,
        "max_abs_prob_diff": float(diff.max()) if diff.size else None,
        "mean_abs_prob_diff": float(diff.mean()) if diff.size else None,
        "same_class_set": set(a_classes.names) == b_set,
        "n_flipped": len(flipped),
        "flipped": flipped,
    }


def metric_deltas(a: dict, b: dict) -> dict:
    """b minus a for each summary metric."""
    return {k: float(b[k] - a[k]) for k in SUMMARY_KEYS}


def ensemble_members(member_probs: np.ndarray, names: Sequence[str], weights: Sequence[float],
                     ensemble_probs: np.ndarray, y_true: Sequence[int] | None = None,
                     classes: ClassMap | Sequence[str] | None = None) -> dict:
    """How an ensemble's members vote: each member's own top-1 (its accuracy and macro F1 when the
    labels are known) and how often it differs from the vote, the pairwise top-1 agreement, and a
    note when voting cannot help (members that always agree cannot change a prediction)."""
    member_probs, ensemble_probs = np.asarray(member_probs), np.asarray(ensemble_probs)
    preds = member_probs.argmax(axis=-1)  # [M, N]
    vote = ensemble_probs.argmax(axis=-1)
    n = preds.shape[1]
    members = []
    for i, name in enumerate(names):
        d = {"name": str(name), "weight": round(float(weights[i]), 6), "differs_from_vote": int((preds[i] != vote).sum())}
        if y_true is not None:
            m = classification_metrics(y_true, member_probs[i], classes, worst_k=0)
            d.update(accuracy=m["accuracy"], top5=m["top5"], macro_f1=m["macro_f1"])
        members.append(d)
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            same = preds[i] == preds[j]
            pairs.append({"a": str(names[i]), "b": str(names[j]), "top1_agreement": float(same.mean()) if n else 1.0,
                          "n_disagree": int((~same).sum())})
    out: dict = {"members": members, "member_agreement": pairs, "notes": []}
    if pairs and min(p["top1_agreement"] for p in pairs) == 1.0:
        out["notes"].append("the members pick the same class on every image: the vote cannot change a prediction, "
                            "so this ensemble cannot do better than any one member")
    if y_true is not None:
        y = np.asarray(y_true, dtype=np.int64)
        out["any_member_correct"] = float((preds == y[None]).any(axis=0).mean()) if n else 0.0
        best = max(members, key=lambda d: d["accuracy"])
        acc = float((vote == y).mean()) if n else 0.0
        if acc < best["accuracy"]:
            out["notes"].append(f"the vote's top-1 ({100 * acc:.2f}%) is below its best member {best['name']} "
                                f"({100 * best['accuracy']:.2f}%)")
    return out
