"""Training past one process: ``cr-edge train --nproc N`` under ``torch.distributed.run``.

The launcher (``train_distributed``, in the ``cr-edge`` process) holds the output folder's
lock and starts ``python -m torch.distributed.run --standalone --nproc-per-node N -m
cr_edge.train.distributed RECIPE_JSON OUT DEVICE`` (the same module runs under ``torchrun``
directly). Every rank loads the data and splits it with the recipe's seed, builds the same
net, and trains under DistributedDataParallel (gloo on CPU, nccl on CUDA) on its
``DistributedSampler`` shard, DREG computed on its own batch; rank 0's validation score
decides early stopping for all, and rank 0 alone writes the checkpoint, atomically as
``train`` always does, after training ends. A rank that dies ends the run:
``torch.distributed.run`` stops the others and exits non-zero, the launcher reports which
rank failed and how, and no checkpoint is written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cr_edge.artifacts.folder_lock import holds_out
from cr_edge.errors import CrEdgeError, InputError, TrainingFailed
from cr_edge.train.loop import TrainResult, train_unlocked
from cr_edge.train.ranks import Rank, usable_cores

if TYPE_CHECKING:
    from cr_edge.recipe import Recipe

_WORKER_ERROR = "cr-edge rank"  # how a rank's one-line error starts on stderr


def check_nproc(nproc: int, oversubscribe: bool) -> None:
    """More processes than cores only time-slice (and slow every rank's collectives)."""
    cores = usable_cores() or 1
    if nproc < 1:
        raise InputError(f"--nproc {nproc}: give 1 or more processes")
    if nproc > cores and not oversubscribe:
        raise InputError(
            f"--nproc {nproc}: this machine has {cores} usable cores; use --nproc {cores} or "
            "less, or pass --oversubscribe"
        )


@holds_out("train")
def train_distributed(recipe: Recipe, out: Path, nproc: int, device: str = "cpu") -> TrainResult:
    """Train ``recipe`` on ``nproc`` processes; the checkpoint is rank 0's (see the module doc)."""
    from cr_edge.checkpoint import load_checkpoint

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "cr_edge.train.distributed",
        json.dumps(recipe.to_json()),
        str(out),
        device,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise _failure(done.returncode, done.stderr)
    ckpt = load_checkpoint(out)
    return TrainResult(Path(out), ckpt.metrics, ckpt.net)


def _failure(code: int, stderr: str) -> CrEdgeError:
    """One line for a failed run: a rank's own error if it reported one, else how it died."""
    for line in stderr.splitlines():
        reported = re.match(rf"{_WORKER_ERROR} (\d+) (input|failed): (.*)", line)
        if reported:
            rank, kind, text = reported.groups()
            error = InputError if kind == "input" else TrainingFailed
            return error(f"rank {rank}: {text}")
    died = re.findall(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", stderr, re.S)
    how = ", ".join(f"rank {r} exited with {_exit_text(int(c))}" for r, c in died)
    return TrainingFailed(
        f"distributed training failed ({how or f'torch.distributed.run exited with {code}'}); "
        "no checkpoint was written"
    )


def _exit_text(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def main(argv: list[str]) -> int:
    """One rank: ``RECIPE_JSON OUT DEVICE``, with torch.distributed.run's environment."""
    import torch
    import torch.distributed as dist

    from cr_edge.recipe import Recipe

    recipe_json, out, device = argv
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = Rank(dist.get_rank(), dist.get_world_size())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        train_unlocked(Recipe.from_json(json.loads(recipe_json)), Path(out), device, rank=rank)
    except CrEdgeError as e:
        kind = "input" if isinstance(e, InputError) else "failed"
        print(f"{_WORKER_ERROR} {rank.rank} {kind}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
