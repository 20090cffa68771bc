"""``caffeish summary NET``: each layer's top shapes, parameter count and multiply-adds, with totals."""
import click

from ..errors import CaffeishError
from ..net import Net
from ..proto import caffe_pb2
from ..prototxt import read_net_param
from ..tools.summary import check_data_sources, format_summary, summarize
from . import register_command
from .common import level_option, parse_phase, parse_stages, stage_option


@register_command("summary")
@click.command()
@click.argument("net", type=click.Path(dir_okay=False))
@click.option("--phase", default="TRAIN", show_default=True, help="TRAIN or TEST: the layers the net keeps.")
@level_option
@stage_option
def summary_command(net, phase, level, stage):
    """Build the net NET and print its layers' top shapes, parameter counts and multiply-adds.

    Building opens the data layers' sources; for a train/test net whose data is not there, summarise
    its deploy version (an Input layer instead of data layers).
    """
    param = read_net_param(net)
    state = caffe_pb2.NetState(phase=parse_phase(phase), level=level, stage=parse_stages(stage))
    check_data_sources(param, state, net)
    try:
        built = Net(param, phase=state.phase, level=state.level, stages=list(state.stage))
    except CaffeishError as e:
        raise e.in_file(net) from None
    with built:
        click.echo(format_summary(summarize(built)), nl=False)
