"""admpff.export: checkpoint -> ONNX (FP32, FP16, INT8 Q/DQ, CPU-INT8), verification, TensorRT engines."""
