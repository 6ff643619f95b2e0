"""mcdrop: Monte Carlo dropout uncertainty for text classifiers.

The package is a library (dropout layers, models, the MC engine, training) and a service (``mcdrop serve``).
Start with :class:`mcdrop.engine.MCEngine` for in-process use.
"""

__version__ = "0.1.0"
