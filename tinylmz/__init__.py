"""tinylmz: lossless compression with a small language model and a range coder.

The API follows the stdlib ``lzma`` module: ``compress``, ``decompress``, ``open``.
"""

from .api import Compressor, TinylmzFile, compress, decompress, iter_decompress, open
from .errors import EngineMismatch, FormatError, ModelError, TinylmzError
from .records import RecordCodec

__all__ = [
    "compress", "decompress", "open", "iter_decompress", "Compressor", "TinylmzFile", "RecordCodec",
    "TinylmzError", "FormatError", "ModelError", "EngineMismatch",
]
__version__ = "0.1.0"
