"""cr-edge: ChainzRule networks from training to the device.

The Python API is ``cr_edge.api`` (``from cr_edge import api as cr;
cr.train(...)``): the names ``train`` and ``export`` here are the stage
sub-modules. Training and export need the ``train`` extra (torch); running and
profiling exported models needs only numpy and onnxruntime.

The stages are packages: ``data`` (sources, splits, normalisation), ``export``,
``quantize``, ``runtimes``, ``validate``, ``profile`` and ``fairfight``; training is
``poly`` (the Polynomial Engine), ``dreg``, ``nets``, ``train`` with ``watch``,
``recipe`` and ``checkpoint``. Shared by all: ``errors``, ``atomic`` (every write),
``manifest``, ``npz`` (every .npz read), ``ops`` (the op vocabulary), ``child``
(child interpreters), ``quiet`` (silencing other tools), ``progress`` and ``terminal``
(what the commands print). ``pipeline`` is the main job, ``api`` the Python API,
``cli`` with ``cli_types`` the command line.
"""

__version__ = "0.1.0"
