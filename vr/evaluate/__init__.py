"""Evaluation and submission: one predictor interface over .pt / .onnx / .engine, metrics, reports."""
