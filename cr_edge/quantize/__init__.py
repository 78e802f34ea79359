"""``cr-edge quantize``: an fp32 export in, a smaller export with its oracle out. No torch.

``quantizer`` is the stage; ``policy`` the validated policy dataclass; ``apply``
runs onnxruntime's quantizers; ``calibration`` reads and checks calibration data;
``graph`` reads the float model (refusals, the Horner chain); ``equalize`` and
``interval`` prepare the weights and the chain's ranges; ``companion`` ties the
derivative companion to the deployed weights; ``measure`` judges each candidate
(parity, accuracy, latency); ``ort_copies`` writes ``.ort`` files; and
``candidates_table`` prints what was tried.
"""
