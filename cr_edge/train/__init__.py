"""Training: ``train(recipe, out)`` -> a checkpoint folder.

- ``loop``: the training loop, DREG and the range penalty, early stopping, the checkpoint.
- ``watch``: the run watcher that stops a diverged or collapsed run with its cause.
- ``ranks``: a rank's shard and DDP forward, for the loop.
- ``distributed``: ``--nproc N``, the launcher and the per-rank worker.

Imports go one way: distributed -> loop -> ranks, watch.
"""

from cr_edge.train.loop import EpochStats, TrainResult, train, train_unlocked

__all__ = ["EpochStats", "TrainResult", "train", "train_unlocked"]
