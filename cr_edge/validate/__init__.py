"""``cr-edge validate``: prove exported artifacts against the PyTorch oracle. No torch.

``validator`` is the stage (every artifact x every runtime -> outputs, derivatives,
coverage); ``oracle`` reads ``model.ref.npz``; ``tolerances`` is the written policy;
``parity`` makes the comparisons; ``coverage`` counts mobile EP partitions;
``outcome`` holds the result types; ``parity_table`` renders the report.
"""
