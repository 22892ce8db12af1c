"""Segmenter intake, one module per route a user brings a segmenter by.

* ``onnx_file``: an ONNX file from either torch exporter (any opset 13-22, single file or with external
  data, dynamic or fixed batch), checked and loaded with its sidecars from its own folder only;
* ``torchscript``: a scripted or traced module (and what a ``.pt`` that is *not* TorchScript is instead);
* ``factory``: ``package.module:callable`` with its keyword arguments bound against its signature, and
  weights as safetensors or a torch state dict (``torch.load(weights_only=True)``), unwrapped from the
  usual checkpoint layouts.

``export.loaders.load_source`` picks the route; ``probe`` checks what every torch segmenter must do.
"""
