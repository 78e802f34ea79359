"""cr-edge: ChainzRule networks from training to the device.

The training and export API needs the ``train`` extra (torch); running and
profiling exported models needs only numpy and onnxruntime.
"""

__version__ = "0.1.0"
