"""Graph passes over ONNX models: surgery, constant folding, node emission, static analysis."""
