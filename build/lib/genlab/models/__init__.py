from genlab.models.base import GenerativeModel

__all__ = ["GenerativeModel"]
