"""Recognition without torch or fastai: open-set metrics and their curves, galleries (faiss, Milvus), calibrated thresholds and
`OnnxEmbedder`, on numpy, faiss and onnxruntime. `tests/test_onnx.py::test_import_boundary` imports every module here in a process that
refuses torch and fastai."""
