"""Run exported artifacts: the runtime registry and its sessions. No torch at import.

Everything here needs numpy, onnx and onnxruntime only, so that validation and
profiling run on an edge box without torch. The one exception is the ExecuTorch
runtime, which imports torch (as ExecuTorch itself does) when it loads a ``.pte``.

``runtime`` is the Runtime/Session interface; ``registry`` names the runtimes, with
``ort`` and ``executorch`` behind it; ``safe_load`` checks every file before a
runtime opens it; ``sandbox`` opens untrusted models in a child process; ``ort_tools``
imports onnxruntime's tooling without torch.
"""
