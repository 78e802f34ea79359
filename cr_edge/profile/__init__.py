"""``cr-edge profile``: latency, memory and per-op cost on the machine it runs on. No torch.

``profiler`` is the stage; ``workload`` builds what one row runs; ``timing`` is the
interleaved measuring loop; ``memory`` measures peak RSS in a fresh child;
``perop`` reads onnxruntime's profiler; ``device`` describes the machine; ``view``
prints tables and plots.
"""
