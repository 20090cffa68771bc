"""``python -m caffeish``: the ``caffeish`` command line (``caffeish.cli``)."""
import sys

from .cli import main

sys.exit(main())
