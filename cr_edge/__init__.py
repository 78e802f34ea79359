"""cr-edge: ChainzRule networks from training to the device.

The Python API is ``cr_edge.api`` (``from cr_edge import api as cr;
cr.train(...)``): the names ``train`` and ``export`` here are the stage
sub-modules. Training and export need the ``train`` extra (torch); running and
profiling exported models needs only numpy and onnxruntime.
"""

__version__ = "0.1.0"
