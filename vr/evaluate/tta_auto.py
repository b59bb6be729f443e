"""`vr eval --tta auto`: every TTA mode of each checkpoint scored on the eval images, the best kept.

Graphs have their TTA built in: they keep it, and show the table their export chose it from
(metadata ``tta_scores``) when they carry one. The chosen mode's score is measured on the images it
was chosen on, so it is optimistic: the report says so.
"""

from __future__ import annotations

from pathlib import Path

from vr.models.tta import TTA_MODES, choose_tta, print_tta_scores, tta_scores

NOTE = ("TTA chosen by --tta auto on these images, so its score is optimistic; export it with --tta {mode} and "
        "score it on other images")


def auto_tta(predictors, names, paths: list[Path], true_names: list[str], batch_size: int, workers: int) -> dict:
    """For each checkpoint predictor: score every mode, switch it to the best one. Returns
    {name: (scores, the chosen mode's PredictionRun)} so the report reuses that run."""
    from vr.evaluate.metrics import classification_metrics
    from vr.runtime.runner import predict_files
    from vr.runtime.torch_backend import TorchPredictor

    out = {}
    for name, p in zip(names, predictors):
        if not isinstance(p, TorchPredictor):
            continue
        y_true = [p.classes.index(t) for t in true_names]
        runs = {}

        def accuracy_of(mode: str, p=p, runs=runs, y_true=y_true):
            p.set_tta(mode)
            runs[mode] = predict_files(p, paths, batch_size, workers)
            m = classification_metrics(y_true, runs[mode].probs, p.classes, 0)
            return round(m["accuracy"] * len(paths)), m["macro_f1"]

        scores = tta_scores(accuracy_of, len(paths), f"{len(paths)} eval images")
        chosen = choose_tta(scores)
        print_tta_scores(scores, chosen, name)
        p.set_tta(chosen)
        p.notes.append(NOTE.format(mode=chosen))
        out[name] = (scores, runs[chosen])
    return out


def graph_scores(predictor) -> list | None:
    """The table an export chose its TTA from, when its metadata has one."""
    scores = (getattr(predictor, "metadata", None) or {}).get("tta_scores")
    return scores if isinstance(scores, list) and all(isinstance(s, dict) and s.get("tta") in TTA_MODES
                                                      for s in scores) else None
