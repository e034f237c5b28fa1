"""bnexp: experiments that test what Batch Normalization actually does."""

__version__ = "0.1.0"
