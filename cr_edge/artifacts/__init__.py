"""The contracts between stages: what one stage writes and the next one reads.

- ``metadata``: the typed, versioned schema of every ``cr_edge.*`` key a model carries.
- ``manifest``: a stage folder's ``manifest.json`` (digests, state, export check).
- ``atomic``: temp file + fsync + rename, so no file is ever half-written.
- ``folder_lock``: one writer per output folder.
- ``npz``: the hardened reader of oracles, calibration samples and user arrays.
- ``child``: runs a parser of untrusted files in a child process.

Everything here is torch-free: a device reads these files with numpy and onnxruntime.
"""
