"""The Fair Fight: CR nets against ReLU/GELU baselines on equal terms, measured on the device.

``ladder`` says what to train, ``runner`` trains/exports/quantizes/profiles each
entry, ``verdict`` turns the records into the ratios the papers claim, and
``report`` writes them as Markdown, JSON and plots.
"""
