"""Run exported artifacts and prove them against the PyTorch oracle: ``cr-edge validate``.

Everything here needs numpy, onnx and onnxruntime only, so that validation and
profiling run on an edge box without torch. The one exception is the ExecuTorch
runtime, which imports torch (as ExecuTorch itself does) when it runs a ``.pte``.

Modules, one job each: ``artifacts`` (safe loading, companions), ``oracle`` (the
``.ref.npz``), ``tolerances`` (the written policy), ``runtime`` (the Runtime/Session
interface), ``registry`` with ``ort`` and ``executorch`` (the runtimes), ``parity``
(comparisons), ``coverage`` (mobile EP partitions, with ``ort_tools`` to import
onnxruntime's tooling torch-free), ``outcome`` (result types), ``validate`` (the
report) and ``table`` (its rich rendering).
"""
