"""The ``caffeish`` command line: one module per verb, registered by name.

Caffe's single-dash long flags (``-model``, ``-sigint_effect``) are accepted
as they are, so a Caffe command line works with only the program name changed.
A user mistake prints one paragraph and exits 1; ``--debug`` shows the traceback.
"""
import logging
import os
import re
import sys
import time

import click

from ..errors import CaffeishError
from ..registry import Registry, import_modules

COMMANDS = Registry("command")


def register_command(name):
    """Register a click command under a verb name (``@register_command("time")``)."""
    def deco(cmd):
        cmd.name = name
        return COMMANDS.register(name)(cmd)
    return deco


class GlogFormatter(logging.Formatter):
    """Caffe's (glog's) line shape, so existing log parsers read our logs."""

    def format(self, record):
        t = time.localtime(record.created)
        usec = int((record.created % 1) * 1e6)
        head = f"{record.levelname[0]}{t.tm_mon:02d}{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        return f"{head}.{usec:06d} {os.getpid():5d} {record.filename}:{record.lineno}] {record.getMessage()}"


def setup_logging(level=logging.INFO):
    logger = logging.getLogger("caffeish")
    logger.setLevel(level)
    if not any(getattr(h, "_caffeish", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(GlogFormatter())
        handler._caffeish = True
        logger.addHandler(handler)
    logger.propagate = False


_SINGLE_DASH = re.compile(r"^-([A-Za-z][A-Za-z0-9_]+)(=.*)?$")


def caffe_style_args(args):
    """``-model x`` -> ``--model x`` and ``-sigint_effect`` -> ``--sigint-effect``."""
    out = []
    for arg in args:
        m = _SINGLE_DASH.match(arg)
        if m:
            arg = "--" + m.group(1).replace("_", "-") + (m.group(2) or "")
        elif arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@click.version_option(package_name="caffeish")
@click.pass_context
def cli(ctx, debug):
    """caffeish: Caffe's prototxt-driven workflow in Python."""
    ctx.obj = {"debug": debug}
    setup_logging()


def _load_verbs():
    """Import every module of this package; each registers its verb(s)."""
    import_modules(__name__, __path__, skip=("common",))
    for name, cmd in COMMANDS.items():
        cli.add_command(cmd, name)


def main(argv=None):
    argv = caffe_style_args(sys.argv[1:] if argv is None else list(argv))
    _load_verbs()
    debug = "--debug" in argv
    if debug:  # accepted anywhere on the line, as a user would type it
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    try:
        cli.main(args=argv, prog_name="caffeish", standalone_mode=False)
    except CaffeishError as e:
        if debug:
            raise
        click.echo(f"caffeish: error: {e}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as e:  # a mistake on the command line: the same one paragraph, exit 1
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        click.echo(f"caffeish: error: {e.format_message()}{hint}", err=True)
        return 1
    except click.exceptions.Exit as e:
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
