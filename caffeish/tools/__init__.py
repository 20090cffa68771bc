"""Helpers behind the CLI's utility verbs (Caffe's ``tools/extra``): log parsing for ``parse-log`` and ``plot``."""
