"""``caffeish draw NET OUT.(png|svg|pdf|dot)``: a diagram of a net, as Caffe's ``python/draw_net.py`` draws it."""
import click

from ..proto import caffe_pb2
from ..prototxt import read_net_param
from ..tools.draw import RANKDIRS, draw_net_to_file, phase_includes
from . import register_command

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}


@register_command("draw")
@click.command()
@click.argument("net", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--rankdir", default="LR", show_default=True, type=click.Choice(RANKDIRS, case_sensitive=False),
              help="The direction the graph flows: left-right, top-bottom, bottom-top or right-left.")
@click.option("--phase", default="ALL", show_default=True, type=click.Choice(list(PHASES), case_sensitive=False),
              help="Draw only the layers of this phase (by their include/exclude rules), or ALL of them.")
@click.option("--display-lrm", is_flag=True, help="Show the learning-rate multipliers of layers with weights.")
def draw(net, out, rankdir, phase, display_lrm):
    """Draw the net NET (a prototxt, old formats included) into OUT.

    OUT's extension picks the format: .dot (Graphviz text, needs nothing) or .png, .svg, .pdf, .jpg (what
    Graphviz renders), which need Graphviz: pip install 'caffeish[draw]' plus the Graphviz program (dot).
    """
    param = read_net_param(net)
    rankdir, phase = rankdir.upper(), phase.upper()
    fmt = draw_net_to_file(param, out, rankdir=rankdir, phase=PHASES[phase], display_lrm=display_lrm)
    drawn = sum(phase_includes(layer, PHASES[phase]) for layer in param.layer)
    click.echo(f"Drawing net to {out} ({fmt}, {drawn} layers, rankdir {rankdir}, phase {phase})")
