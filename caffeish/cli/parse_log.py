"""``caffeish parse-log``: a training log -> CSV tables of its train and test outputs (Caffe's parse_log.py)."""
import click

from ..tools.log_parser import parse_log, save_csv_files
from . import register_command


@register_command("parse-log")
@click.command()
@click.argument("log", type=click.Path(dir_okay=False))
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--delimiter", default=",", show_default=True, help="Column separator of the CSV files.")
def parse_log_cmd(log, outdir, delimiter):
    """Parse LOG (of `caffeish train` or `caffe train`) into OUTDIR/<log name>.train and .test.

    Columns: NumIters, Seconds (from the log's timestamps, since its 'Solving' line, as Caffe's script counts
    them), LearningRate, then one per net output.
    """
    train, test = parse_log(log)
    for path, table in zip(save_csv_files(log, outdir, train, test, delimiter), (train, test)):
        click.echo(f"{path}: {len(table)} rows ({', '.join(table.columns)})")
