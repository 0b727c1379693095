from genlab.samplers.base import Sampler

__all__ = ["Sampler"]
