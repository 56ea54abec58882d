"""ONNX export: graphs (``graphs``), the exporter and its verification (``onnx_export``, needs the ``export``
extra), Triton Inference Server repositories (``triton_repo``) and the ``curvedit export`` command (``cli``)."""

EXPORTERS = ("dynamo", "torchscript")  # torch.onnx's exporters: torch.export-based, and the legacy TorchScript one
