"""``cr-edge train``."""

from __future__ import annotations

from pathlib import Path

import click

from cr_edge.artifacts.manifest import refuse_existing
from cr_edge.cli.group import cli
from cr_edge.cli.types import DATA_HELP, IntList, label_option, task_option
from cr_edge.errors import InputError


@cli.command()
@click.option("--recipe", help="A zoo recipe name (see models/) or a .toml file.")
@click.option("--data", help=DATA_HELP)
@label_option
@click.option("--text-column", help="Text CSV: the column holding the text (a header row).")
@click.option(
    "--data-format",
    type=click.Choice(["auto", "header", "yelp"]),
    help='CSV layout: a header row, or Yelp\'s headerless "label","text" rows [default: auto].',
)
@task_option(None, "What the label is: classes, a number, or ordered classes (e.g. 1-5 stars).")
@click.option(
    "--loss", type=click.Choice(["auto", "mse", "huber"]), help="Regression loss (--task regress)."
)
@click.option("--arch", type=click.Choice(["mlp", "conv"]), help="Network shape.")
@click.option(
    "--hidden",
    type=IntList("64,32", distinct=False),
    help="Comma-separated hidden widths, e.g. 64,32.",
)
@click.option(
    "--activation",
    type=click.Choice(["poly", "relu", "gelu"]),
    help="poly: a CR net; relu/gelu: a baseline.",
)
@click.option("--degree", type=click.IntRange(1, 8), help="Polynomial degree (1..8).")
@click.option(
    "--poly-form",
    type=click.Choice(["monomial", "depressed"]),
    help="depressed: learn p(z) = P(z + s) without the z**(n-1) term, the form export lowers "
    "to in 2n-3 nodes; monomial: learn the coefficients of z**k.",
)
@click.option("--dreg-lambda", type=click.FloatRange(min=0), help="DREG lambda; 0 disables.")
@click.option(
    "--epochs", type=click.IntRange(1), help="Most epochs (early stopping may end sooner)."
)
@click.option("--batch-size", type=click.IntRange(1), help="Training mini-batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate.")
@click.option(
    "--lr-schedule",
    type=click.Choice(["cosine", "constant"]),
    help="The learning rate over the epochs: cosine decay from --lr to 1% of it, or "
    "constant [default: cosine].",
)
@click.option("--seed", type=int, help="Seed for the split, the initialisation and the batches.")
@click.option(
    "--clip-grad",
    type=click.FloatRange(min=0),
    help="Gradient-norm clipping threshold; 0 disables [default: 5].",
)
@click.option(
    "--range-penalty",
    type=click.FloatRange(min=0),
    help="Weight of the penalty on pre-activations outside each polynomial's fit range [default: 10].",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="auto: cuda when available.",
)
@click.option(
    "--nproc",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Processes for DistributedDataParallel (torch.distributed.run); at most the cores "
    "unless --oversubscribe.",
)
@click.option(
    "--oversubscribe",
    is_flag=True,
    help="Allow --nproc above the usable cores (every rank time-slices).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint folder.")
@click.option("--force", is_flag=True, help="Overwrite a checkpoint already in --out.")
def train(
    recipe: str | None,
    data: str | None,
    label: str | None,
    text_column: str | None,
    data_format: str | None,
    task: str | None,
    loss: str | None,
    arch: str | None,
    hidden: tuple[int, ...] | None,
    activation: str | None,
    degree: int | None,
    poly_form: str | None,
    dreg_lambda: float | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    lr_schedule: str | None,
    seed: int | None,
    clip_grad: float | None,
    range_penalty: float | None,
    device: str,
    nproc: int,
    oversubscribe: bool,
    out: Path,
    force: bool,
) -> None:
    """Train a CR net (or a baseline) under DREG and write a checkpoint folder."""
    from cr_edge.api import train as run_training
    from cr_edge.cli.progress import epoch_bar
    from cr_edge.cli.terminal import print_metrics
    from cr_edge.recipe import Recipe, load_recipe

    if recipe is None and data is None:
        raise InputError("give --recipe NAME or --data SOURCE (try --recipe digits-cr)")
    refuse_existing(out, "config.json", force)  # before the recipe's data is read
    base = load_recipe(recipe) if recipe else Recipe(name=Path(str(data)).stem)
    chosen = base.replace(
        data=data,
        label=label,
        text_column=text_column,
        data_format=data_format,
        task=task,
        loss=loss,
        arch=arch,
        hidden=hidden,
        activation=activation,
        degree=degree,
        poly_form=poly_form,
        dreg_lambda=dreg_lambda,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        seed=seed,
        clip_grad=clip_grad,
        range_penalty=range_penalty,
    )
    if nproc > 1:
        from cr_edge.train.distributed import check_nproc, train_distributed

        check_nproc(nproc, oversubscribe)
        click.echo(f"train {chosen.name}: {nproc} processes (torch.distributed.run)", err=True)
        result = train_distributed(chosen, out, nproc, device)
    else:
        with epoch_bar(chosen.epochs, f"train {chosen.name}") as on_epoch:
            result = run_training(chosen, out, device, force=force, on_epoch=on_epoch)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    print_metrics(f"{chosen.name} -> {result.checkpoint}", result.metrics)
