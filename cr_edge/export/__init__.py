"""Torch -> deployable artifacts: ``model.onnx``, its companion and oracle, ``.ort``, ``.pte``.

``exporter`` is the stage; ``stages`` is the float64 deploy-time view of a net;
``folds`` the exact fold passes over it; ``emit`` the torch modules that are traced;
``onnx`` the exporter call; ``cleanup`` the onnx-ir passes over its graph;
``oracle_writer`` the parity oracle; ``mobile`` the ORT-format conversion; ``pte``
ExecuTorch; ``version_guard`` the --runtime-version check. Most of it needs the
``train`` extra (torch); ``cleanup``, ``mobile`` and ``version_guard`` do not.
"""
