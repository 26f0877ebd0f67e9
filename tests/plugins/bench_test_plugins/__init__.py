"""Plugins that fail on purpose: one raises inside fit, one kills its own process."""
import os

from bench import Method, Part


class Boom(Method):
    name = "boom"
    description = "raises inside fit (a plugin bug)"
    changes = frozenset({Part.LOGIT_TERM})

    def fit(self, clf, ctx):
        raise RuntimeError("boom: a bug inside the plugin")


class Crash(Method):
    name = "crash"
    description = "kills its own process inside fit (out of memory, a segfault)"
    changes = frozenset({Part.LOGIT_TERM})

    def fit(self, clf, ctx):
        os._exit(137)
