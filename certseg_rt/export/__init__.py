"""torch -> ONNX -> engines.  Needs the ``[export]`` extra (torch, diffusers)."""
