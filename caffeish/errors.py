"""The exception type for user mistakes.

A ``CaffeishError`` carries a one-paragraph message that names what is at fault
(file and line, layer, blob).  The CLI prints the message and exits 1; only
``--debug`` shows the traceback.  Programming errors are never turned into it.
"""


class CaffeishError(ValueError):
    """A mistake in the user's input: a prototxt, a shape, a file, a flag.

    A ValueError, as pycaffe (and numpy beneath it) raises for bad values, so pycaffe code that catches
    ValueError keeps working; ``CaffeishTypeError`` is also a TypeError, for arguments of the wrong kind.
    """

    def __init__(self, message, *, layer=None, layer_type=None, path=None):
        self.layer = layer
        self.layer_type = layer_type
        self.path = path
        self.reason = message
        super().__init__(self._compose())

    def _compose(self):
        where = []
        if self.path:
            where.append(str(self.path))
        if self.layer is not None:
            kind = f" (type {self.layer_type})" if self.layer_type else ""
            where.append(f"layer '{self.layer}'{kind}")
        return (", ".join(where) + ": " if where else "") + self.reason

    def in_layer(self, name, layer_type=None):
        """The same error, attributed to a layer (keeps an existing attribution)."""
        if self.layer is None:
            self.layer, self.layer_type = name, layer_type
            self.args = (self._compose(),)
        return self

    def in_file(self, path):
        """The same error, attributed to a file (keeps an existing attribution or a path the message names)."""
        if path and self.path is None and str(path) not in self.reason:
            self.path = path
            self.args = (self._compose(),)
        return self


class CaffeishTypeError(CaffeishError, TypeError):
    """An argument of the wrong kind (pycaffe raises TypeError there)."""


def check(condition, message):
    """Raise ``CaffeishError(message)`` unless ``condition`` holds."""
    if not condition:
        raise CaffeishError(message)
