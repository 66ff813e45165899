"""The teachers' official weight files: registry, cache, download with checksum, import, verify.

Pretrained teachers are the method, so a missing or altered weight file is always an error, never
a silent switch to random weights. Files live in ``cache_dir()/weights/`` with a small manifest
beside them that records how each file got there and the SHA-256 it had.

- :mod:`.registry`   the published files (:class:`WeightSpec`) and each teacher's default
- :mod:`.cache`      the cache root (``$PDD_CACHE_DIR``, ...) and where each file lives in it
- :mod:`.manifest`   the manifest, and which hash a file must have (registry, first use, accepted)
- ``pdd.teachers.weight_files`` (beside this package, so the teacher registry can read a file
  without importing the cache and download code that builds teachers): safe loading, SHA-256
- :mod:`.fetch`      ``download`` and ``import_file`` into the cache
- :mod:`.inventory`  ``resolve`` (the file a teacher loads), ``verify``, ``list_weights``
"""

from pdd.teachers.weight_files import read_state_dict, sha256_file
from pdd.teachers.weights.cache import cache_dir, cached_path, weights_dir
from pdd.teachers.weights.fetch import download, import_file
from pdd.teachers.weights.inventory import VerifyResult, list_weights, resolve, verify
from pdd.teachers.weights.manifest import Basis
from pdd.teachers.weights.registry import (
    DEFAULT_WEIGHTS,
    WEIGHTS,
    TeacherName,
    WeightFormat,
    WeightSpec,
    get_spec,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "WEIGHTS",
    "Basis",
    "TeacherName",
    "VerifyResult",
    "WeightFormat",
    "WeightSpec",
    "cache_dir",
    "cached_path",
    "download",
    "get_spec",
    "import_file",
    "list_weights",
    "read_state_dict",
    "resolve",
    "sha256_file",
    "verify",
    "weights_dir",
]
