"""Deployable models: export to ONNX or TorchScript, and scoring through onnxruntime without PyTorch."""
