import os
import sys

# Tests import their shared helpers (gradient_check, helpers) as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))
