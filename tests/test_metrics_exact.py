"""vr's precision / recall / F1 are scikit-learn's numbers to the last bit (vr computes them with
numpy, so that `vr eval` does not import scikit-learn and SciPy)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest


def _probs(y_pred: np.ndarray, c: int, rng) -> np.ndarray:
    """Probabilities whose argmax is y_pred (ties impossible: the winner gets +1)."""
    p = rng.random((len(y_pred), c))
    p[np.arange(len(y_pred)), y_pred] += 1.0
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", range(6))
def test_classification_metrics_equal_sklearn_bit_for_bit(seed):
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    from vr.evaluate.metrics import classification_metrics

    rng = np.random.default_rng(seed)
    for trial in range(60):
        c = int(rng.integers(1, 13))
        n = int(rng.integers(1, 80))
        # some classes never true, some never predicted, some neither: every zero-division case
        y_true = rng.integers(0, int(rng.integers(1, c + 1)), n)
        y_pred = np.where(rng.random(n) < rng.random(), y_true, rng.integers(0, int(rng.integers(1, c + 1)), n))
        m = classification_metrics(y_true, _probs(y_pred, c, rng), [f"c{i}" for i in range(c)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's "single label" warning for one-class cases
            mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
            _, _, wf, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
            p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(c)), average=None,
                                                         zero_division=0)
            cm = confusion_matrix(y_true, y_pred, labels=list(range(c)))
        where = f"seed {seed} trial {trial}"
        assert m["accuracy"] == float(accuracy_score(y_true, y_pred)), where
        assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == (float(mp), float(mr), float(mf)), where
        assert m["weighted_f1"] == float(wf), where
        assert m["confusion_matrix"]["counts"] == cm.astype(int).tolist(), where
        for i in range(c):
            got = m["per_class"][f"c{i}"]
            assert (got["precision"], got["recall"], got["f1"], got["support"]) == \
                (float(p[i]), float(r[i]), float(f[i]), int(s[i])), (where, i)


def test_vr_eval_does_not_import_sklearn_for_its_metrics():
    """The metrics module and the eval command import neither scikit-learn nor SciPy."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from vr.evaluate.metrics import classification_metrics\n"
            "import vr.evaluate.evaluate\n"
            "classification_metrics([0, 1, 1], np.eye(3)[[0, 1, 2]], ['a', 'b', 'c'])\n"
            "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
