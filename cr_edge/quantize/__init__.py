"""``cr-edge quantize``: an fp32 export in, a smaller export with its oracle out. No torch.

``quantizer`` is the stage (``quantize(model, config)``); ``policy`` the validated
policy and config dataclasses; ``apply`` the registry of policy handlers (onnxruntime's
quantizers, ``weight_only``'s int8 weights, fp16); ``gemm_to_matmul`` the rewrite the
dynamic quantizer needs; ``calibration`` reads and checks calibration data; ``graph``
reads the float model (refusals, the Horner chain); ``equalize`` and ``interval``
prepare the weights and the chain's ranges; ``companion`` ties the derivative
companion to the deployed weights; ``judge`` measures each candidate three ways
(onnxruntime, exact integer maths and the AVX2 u8s8 kernel, via ``integer_eval`` and
``kernels``; ``nbits_isa`` says what each CPU family computes for ``MatMulNBits``);
``secant`` checks the deployed primal's derivative; ``measure`` holds
parity, accuracy and latency; and ``candidates_table`` prints what was tried. The
``.ort`` copies come from export's one maker (``cr_edge.export.mobile``); ``mobile_ops``
names the candidates whose contrib operators a mobile build may lack.
"""
