"""vr export: ONNX (preprocessing and TTA in the graph), TensorRT, and the parity gate."""
