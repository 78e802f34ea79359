"""Torch -> deployable artifacts. Everything here needs the ``train`` extra (torch)."""
