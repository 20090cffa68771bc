"""String registries (Caffe's LayerRegistry/SolverRegistry), shared by layers, solvers and CLI verbs."""
import difflib
import importlib
import pkgutil

from .errors import CaffeishError


class Registry:
    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name):
        """Decorator: ``@registry.register("ReLU")``."""
        def deco(obj):
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} type '{name}' is registered twice")
            self._entries[name] = obj
            return obj
        return deco

    def get(self, name, context=""):
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            where = f"{context}: " if context else ""
            close = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise CaffeishError(f"{where}unknown {self.kind} type '{name}'{hint} (known types: {known})") from None

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def items(self):
        return sorted(self._entries.items())


def import_modules(package, path, skip=(), suffix=""):
    """Import every module of a package (``import_modules(__name__, __path__)`` in its ``__init__``), so that the
    registrations in them happen: a new layer, solver, backend or verb module needs no import line elsewhere.
    ``suffix``: only the modules whose names end with it (``"_backend"``)."""
    for module in pkgutil.iter_modules(path):
        if module.name not in skip and module.name.endswith(suffix):
            importlib.import_module(f"{package}.{module.name}")
