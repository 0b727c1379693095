"""genlab: a config-driven experiment platform for deep generative models."""

__version__ = "0.1.0"
