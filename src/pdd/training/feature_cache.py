"""Teacher-feature cache: each training image's frozen teacher features computed once, reused by
every later epoch (and every seed of the same fit, and, on disk, every later fit).

Why it is exact: training uses no augmentation and the teachers are frozen in eval mode, so an
image's teacher features are a function of its pixels and the teachers alone, provided they are
always computed in a batch of the same size: oneDNN and the GEMMs pick kernels by batch size, whose
rounding differs in the last bit, which training amplifies. So ``teacher_features`` (used with and
without the cache) pads a short batch (the epoch's last) to the training batch size by repeating
its last image, and keeps the real images' rows. A batch is served from
the cache only when *every* image in it is there; otherwise the whole batch goes through the
teachers exactly as without a cache (``AnomalyModel.loss`` is ``teacher_features`` then
``loss_from_features``) and the missing images are stored. Entries are kept in the dtype they were
computed in (float32 unless autocast is on) and in the same memory layout (channels-last stays
channels-last), so the students see the same numbers and the same strides.

``--feature-cache-dtype bfloat16`` (never the default) stores float32 features as bfloat16: half
the bytes, so ``auto`` keeps twice as many in memory, at the cost of exactness (8 bits of mantissa
instead of 24; benchmarks/README.md measures the score change). They are widened back to float32,
same layout, when served, and a batch computed in epoch 1 is rounded the same way before training
uses it, so every epoch (and a resumed run) trains on the same numbers whichever batches hit.

Key (``FeatureCache.key``): SHA-256 of the image's decoded pixels after preprocessing at the model's
size (so the file's content, the preprocessing and the image size are all in it: ``pixels_key``,
computed in the data loader), and of the *context*: every teacher's identity (name, weights
SHA-256 or random seed + fingerprint, options), the levels the model reads, the storage dtype
(bfloat16 and float32 entries never mix), the device type, the autocast dtype, the torch version
``PDD_CPU_KERNEL`` (the fused scan's rounding differs from PyTorch's), whether convolutions
may run prepacked (``pdd.packed_convs``, whose BatchNorm folding rounds differently) and the
teachers' ``ARITHMETIC_REVISION`` (a release that rounds differently does not read older entries). Only the levels the model reads are stored (RD4AD: Wide-ResNet levels 1-3).

Stores (``--feature-cache``):

* ``memory``: one store per process, shared by the fits it runs (seeds, classes, ``pdd benchmark``
  cells: entries of other teachers never match), least recently used entries evicted beyond the
  bound under ``auto`` (unbounded when ``memory`` is asked for); ``clear_memory()`` empties it.
  Under DDP each process caches the images it is handed (its shard changes every epoch, so within
  a few epochs each holds most of the set; ``disk`` shares one copy).
* ``disk``: one file per image under ``<pdd cache>/features/<2 hex>/<key>.pddf`` (see
  ``pdd.teachers.weights.cache_dir``): header with the key, the tensors' dtypes, shapes and layouts
  and the payload's SHA-256, then the payload. Written to a temporary file and renamed (several
  processes may share the folder); read through a memory map and verified: a truncated, corrupt or
  foreign (other key) file is a miss, deleted and recomputed, never used. The folder is bounded by
  ``$PDD_FEATURE_CACHE_GB`` (default 20 GiB): least recently used entries of *other* runs are evicted
  to make room; when this run's own features do not fit, the rest are recomputed every epoch (one
  warning says so). ``pdd cache list|clear`` shows and empties it.
* ``auto`` (default): memory when the training set's features fit in ``min(2 GiB, RAM / 4)``
  (known after the first batch: bytes per image x training images), else disk. When the disk
  store's folder is not usable, memory if they fit (one warning names the folder), else an error
  naming it, raised at the first batch.

The caching pass is the first epoch itself: features are computed lazily, batch by batch, as
training needs them (with the training progress bar), on whatever device trains, and under DDP by
each process for its own shard.
* ``off``: no cache; the teachers run on every batch.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tempfile
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pdd import packed_convs, teachers
from pdd.config.schema import FEATURE_CACHE_DTYPES as DTYPES
from pdd.errors import ConfigError

__all__ = [
    "DTYPES",
    "MODES",
    "DiskStore",
    "FeatureCache",
    "MemoryStore",
    "clear_memory",
    "disk_limit_bytes",
    "features_dir",
    "for_training",
    "memory_bound_bytes",
    "off_record",
    "pixels_key",
    "teacher_features",
]

MODES = ("auto", "memory", "disk", "off")
FORMAT_VERSION = 2  # of the key context and the file layout; bump when either changes
_MAGIC = b"PDDFEAT1"
_ALIGN = 64
_GIB = 1024**3
_AUTO_MEMORY_CAP = 2 * _GIB
_DISK_LIMIT_ENV = "PDD_FEATURE_CACHE_GB"
_DEFAULT_DISK_GB = 20.0

# One image's features: name -> (tensor as stored, in its physical dim order; that order as a batch
# permutation; the dtype it is served in, float32 for a bfloat16-stored float32 feature).
Entry = dict[str, tuple[Tensor, tuple[int, ...], torch.dtype]]
# Dtypes an entry may hold or be served in (a file naming another is foreign).
_ENTRY_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def features_dir(root: Path | None = None) -> Path:
    """Folder of the disk store: ``<pdd cache>/features``."""
    if root is None:
        from pdd.cache_root import cache_dir

        root = cache_dir()
    return root / "features"


def memory_bound_bytes() -> int:
    """``auto`` keeps features in memory up to this: 2 GiB or a quarter of the RAM, the smaller."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return _AUTO_MEMORY_CAP
    return min(_AUTO_MEMORY_CAP, ram // 4)


def disk_limit_bytes() -> int:
    """Size limit of the disk store: ``$PDD_FEATURE_CACHE_GB`` GiB (default 20)."""
    text = os.environ.get(_DISK_LIMIT_ENV, "").strip()
    if not text:
        return int(_DEFAULT_DISK_GB * _GIB)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(
            f"{_DISK_LIMIT_ENV}: expected a size in GiB above 0, got {text!r}"
        )
    return int(value * _GIB)


def pixels_key(image: Tensor) -> str:
    """SHA-256 of a preprocessed image [3, S, S]: its dtype, shape and pixel bytes."""
    pixels = image.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{pixels.dtype}{tuple(pixels.shape)}".encode())
    digest.update(pixels.view(torch.uint8).numpy().data if pixels.numel() else b"")
    return digest.hexdigest()


# --------------------------------------------------------------------------- entries


def _physical_order(t: Tensor) -> tuple[int, ...]:
    """Dims from outermost to innermost in memory, the batch dim first (it always is here)."""
    rest = sorted(range(1, t.dim()), key=lambda d: (-t.stride(d), d))
    return (0, *rest)


def split_batch(
    features: Mapping[str, Tensor], storage: torch.dtype = torch.float32
) -> list[Entry]:
    """A batch's features -> one ``Entry`` per image (CPU copies in the batch's memory layout),
    float32 features stored as ``storage``."""
    size = next(iter(features.values())).shape[0]
    entries: list[Entry] = [{} for _ in range(size)]
    for name, batch in features.items():
        order = _physical_order(batch)
        physical = batch.detach().permute(order).contiguous().cpu()
        if batch.dtype == torch.float32:
            physical = physical.to(storage)
        for i in range(size):
            entries[i][name] = (physical[i].clone(), order, batch.dtype)
    return entries


def join_batch(entries: Sequence[Entry], device: torch.device) -> dict[str, Tensor]:
    """``split_batch`` undone: the batch tensors in their served dtype with the original strides,
    on ``device``."""
    joined = {}
    for name, (_, order, served) in entries[0].items():
        physical = torch.stack([entry[name][0] for entry in entries]).to(device, served)
        inverse = [order.index(d) for d in range(len(order))]
        joined[name] = physical.permute(inverse)
    return joined


def _entry_bytes(entry: Entry) -> int:
    return sum(t.numel() * t.element_size() for t, _, _ in entry.values())


# --------------------------------------------------------------------------- stores


class MemoryStore:
    """Entries in this process's memory, least recently used evicted beyond ``limit`` bytes."""

    location = "memory"

    def __init__(self) -> None:
        self.limit: int | None = None
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0
        self.full = False

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry) -> None:
        if key in self._entries:
            return
        size = _entry_bytes(entry)
        if self.limit is not None:
            if size > self.limit:
                self.full = True
                return
            while self.bytes + size > self.limit:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= _entry_bytes(evicted)
        self._entries[key] = entry
        self.bytes += size

    def entries(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self.full = False


_PROCESS_MEMORY = MemoryStore()
"""One memory store per process, so the seeds, classes and benchmark cells run in one process share
features (entries are keyed by the teachers, so different teachers never mix)."""


def clear_memory() -> None:
    """Drop every in-memory entry of this process (the next fit computes its features again)."""
    _PROCESS_MEMORY.clear()


class DiskStore:
    """One verified file per entry under ``root``; bounded by ``limit`` bytes (LRU by mtime)."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = Path(root)
        self.limit = limit
        self.location = str(self.root)
        self.full = False
        self.rejected = 0  # files found bad (truncated, corrupt, foreign) and deleted
        self._started = time.time()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pddf"

    def get(self, key: str) -> Entry | None:
        path = self.path(key)
        try:
            entry = read_entry(path, key)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self.rejected += 1
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # least recently used = oldest mtime
        except OSError:
            pass
        return entry

    def put(self, key: str, entry: Entry) -> None:
        path = self.path(key)
        if path.exists():
            return
        size = _entry_bytes(entry) + 4096  # header and alignment, generously
        if not self._make_room(size):
            self.full = True
            return
        write_entry(path, key, entry)

    def _make_room(self, size: int) -> bool:
        """Evict least recently used files not touched by this run until ``size`` more fit."""
        files = list(_scan(self.root))
        total = sum(stat.st_size for _, stat in files)
        if total + size <= self.limit:
            return True
        for path, stat in sorted(files, key=lambda item: item[1].st_mtime):
            if stat.st_mtime >= self._started:
                break  # this run's own entries: evicting them would only thrash
            path.unlink(missing_ok=True)
            total -= stat.st_size
            if total + size <= self.limit:
                return True
        return False

    def entries(self) -> int:
        return sum(1 for _ in _scan(self.root))

    @property
    def bytes(self) -> int:
        return sum(stat.st_size for _, stat in _scan(self.root))


def _scan(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Entry files under ``root`` with their stat (files vanishing meanwhile are skipped)."""
    if not root.is_dir():
        return
    for path in root.glob("*/*.pddf"):
        try:
            yield path, path.stat()
        except FileNotFoundError:
            continue


def write_entry(path: Path, key: str, entry: Entry) -> None:
    """Header (key, tensors, payload SHA-256) + payload, to a temporary file then renamed."""
    tensors, parts, offset = [], [], 0
    digest = hashlib.sha256()
    for name, (tensor, order, served) in entry.items():
        data = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        tensors.append(
            {
                "name": name,
                "dtype": str(tensor.dtype).removeprefix("torch."),
                "served": str(served).removeprefix("torch."),
                "shape": list(tensor.shape),
                "order": list(order),
                "offset": offset,
                "nbytes": len(data),
            }
        )
        digest.update(data)
        parts.append(data)
        offset += len(data)
    header = json.dumps(
        {
            "key": key,
            "payload_bytes": offset,
            "sha256": digest.hexdigest(),
            "tensors": tensors,
        }
    ).encode()
    start = _payload_start(len(header))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(_MAGIC + struct.pack("<Q", len(header)) + header)
            out.write(b"\0" * (start - len(_MAGIC) - 8 - len(header)))
            for data in parts:
                out.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _payload_start(header_bytes: int) -> int:
    end = len(_MAGIC) + 8 + header_bytes
    return (end + _ALIGN - 1) // _ALIGN * _ALIGN


def read_entry(path: Path, key: str) -> Entry:
    """The verified entry in ``path``; ValueError when it is not exactly what ``key`` names."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size < len(_MAGIC) + 8:
            raise ValueError(f"{path}: truncated")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as view:
            if view[: len(_MAGIC)] != _MAGIC:
                raise ValueError(f"{path}: not a pdd feature file")
            (header_bytes,) = struct.unpack("<Q", view[len(_MAGIC) : len(_MAGIC) + 8])
            if len(_MAGIC) + 8 + header_bytes > size:
                raise ValueError(f"{path}: truncated header")
            try:
                header = json.loads(
                    view[len(_MAGIC) + 8 : len(_MAGIC) + 8 + header_bytes]
                )
                if header["key"] != key:
                    raise ValueError(f"{path}: holds another entry")
                start, length = (
                    _payload_start(header_bytes),
                    int(header["payload_bytes"]),
                )
                if start + length != size:
                    raise ValueError(f"{path}: {size} bytes, expected {start + length}")
                payload = memoryview(view)[start:]
                try:
                    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
                        raise ValueError(f"{path}: checksum mismatch")
                    return _tensors(header["tensors"], payload, length)
                finally:
                    payload.release()
            except (KeyError, TypeError, json.JSONDecodeError, RuntimeError) as error:
                raise ValueError(f"{path}: unreadable header ({error})") from error


def _tensors(
    specs: Sequence[Mapping[str, Any]], payload: memoryview, length: int
) -> Entry:
    entry: Entry = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only buffer: we copy out of it at once
        for spec in specs:
            start, nbytes = int(spec["offset"]), int(spec["nbytes"])
            if start < 0 or start + nbytes > length:
                raise ValueError("tensor outside the payload")
            dtype, served = _entry_dtype(spec["dtype"]), _entry_dtype(spec["served"])
            flat = torch.frombuffer(
                payload, dtype=torch.uint8, count=nbytes, offset=start
            )
            tensor = flat.view(dtype).reshape([int(n) for n in spec["shape"]]).clone()
            order = tuple(int(d) for d in spec["order"])
            entry[str(spec["name"])] = (tensor, order, served)
    return entry


def _entry_dtype(name: Any) -> torch.dtype:
    if name not in _ENTRY_DTYPES:
        raise ValueError(f"unknown dtype {name!r}")
    return _ENTRY_DTYPES[name]


# --------------------------------------------------------------------------- the cache


def _store_folder_problem(folder: Path) -> str | None:
    """Why the disk store's folder cannot be (or be created as) a writable folder, else None:
    checked before training, since a ``PDD_CACHE_DIR`` under a regular file would otherwise end
    the first epoch with an internal ``NotADirectoryError``."""
    nearest = folder
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if nearest.is_dir() and os.access(nearest, os.W_OK):
        return None
    why = "is not writable" if nearest.is_dir() else "is a file"
    cause = (
        f" (from PDD_CACHE_DIR={os.environ['PDD_CACHE_DIR']})"
        if os.environ.get("PDD_CACHE_DIR")
        else ""
    )
    return f"feature cache {folder}: {nearest} {why}{cause}"


class FeatureCache:
    """Finds or computes the teacher features of one sub-run's training batches (module docstring).

    ``expected_images`` (the training set's size) lets ``auto`` choose its store after the first
    batch. ``dtype`` is the storage dtype of float32 features (``DTYPES``). ``hits`` and
    ``misses`` count images served from the cache and computed.
    """

    def __init__(
        self,
        mode: str,
        expected_images: int,
        *,
        batch_size: int = 0,
        dtype: str = "float32",
        root: Path | None = None,
        memory_bound: int | None = None,
        disk_limit: int | None = None,
    ) -> None:
        if mode not in MODES or mode == "off":
            raise ConfigError(
                f"feature_cache: expected auto, memory or disk here, got {mode!r}"
            )
        if dtype not in DTYPES:
            raise ConfigError(
                f"feature_cache_dtype: expected {' or '.join(DTYPES)}, got {dtype!r}"
            )
        self.requested = mode
        self.dtype = dtype
        self._storage: torch.dtype = getattr(torch, dtype)
        self.expected_images = int(expected_images)
        self.batch_size = int(batch_size)
        self._root = root
        self._memory_bound = (
            memory_bound_bytes() if memory_bound is None else memory_bound
        )
        self._disk_limit = disk_limit
        self.store: MemoryStore | DiskStore | None = None
        if mode == "memory":
            self.store = self._memory(None)
        elif mode == "disk":
            self.store = self._disk()
        # auto only needs the folder when the features do not fit in memory (``_choose``).
        self._disk_problem = (
            _store_folder_problem(features_dir(self._root))
            if mode in ("disk", "auto")
            else None
        )
        if mode == "disk" and self._disk_problem:
            raise ConfigError(
                f"{self._disk_problem}; point PDD_CACHE_DIR at a writable folder or use "
                "--feature-cache memory or off"
            )
        self.hits = 0
        self.misses = 0
        # The model whose identity was last hashed (weakly: the cache must not keep it alive).
        self._identity: tuple[weakref.ref[Any], str] | None = None
        self._warned_full = False

    def _memory(self, limit: int | None) -> MemoryStore:
        _PROCESS_MEMORY.limit = limit
        _PROCESS_MEMORY.full = False
        return _PROCESS_MEMORY

    def _disk(self) -> DiskStore:
        limit = disk_limit_bytes() if self._disk_limit is None else self._disk_limit
        return DiskStore(features_dir(self._root), limit)

    # -- keys -----------------------------------------------------------------------------

    def context(self, model: Any, device: torch.device) -> str:
        """Digest of what, besides the pixels, decides the features (module docstring)."""
        if self._identity is None or self._identity[0]() is not model:
            identity = json.dumps(
                {
                    "format": FORMAT_VERSION,
                    "storage": self.dtype,
                    "teachers": model.teacher_identity(),
                    "levels": {k: list(v) for k, v in model.teacher_levels().items()},
                },
                sort_keys=True,
            )
            self._identity = (weakref.ref(model), identity)
        autocast = (
            str(torch.get_autocast_dtype(device.type))
            if torch.is_autocast_enabled(device.type)
            else "off"
        )
        runtime = json.dumps(
            {
                "device": device.type,
                "autocast": autocast,
                "torch": torch.__version__,
                "cpu_kernel": os.environ.get("PDD_CPU_KERNEL", "auto"),
                "packed_convs": packed_convs.enabled(),
                "teacher_arithmetic": teachers.ARITHMETIC_REVISION,
            },
            sort_keys=True,
        )
        return hashlib.sha256((self._identity[1] + runtime).encode()).hexdigest()

    @staticmethod
    def key(context: str, pixels: str) -> str:
        """An entry's key: the context digest and the image's ``pixels_key``."""
        return hashlib.sha256(f"{context}:{pixels}".encode()).hexdigest()

    # -- lookup ---------------------------------------------------------------------------

    def features(
        self, model: Any, images: Tensor, pixel_keys: Sequence[str]
    ) -> dict[str, Tensor]:
        """The batch's teacher features: from the cache when every image is there, else computed
        for the whole batch (as without a cache) and the missing images stored."""
        context = self.context(model, images.device)
        keys = [self.key(context, pixels) for pixels in pixel_keys]
        found = [] if self.store is None else [self.store.get(key) for key in keys]
        if found and all(entry is not None for entry in found):
            self.hits += len(keys)
            return join_batch(found, images.device)  # type: ignore[arg-type]
        computed = teacher_features(model, images, self.batch_size)
        self.misses += len(keys)
        entries = split_batch(computed, self._storage)
        if self.store is None:
            self.store = self._choose(entries[0])
        for i, key in enumerate(keys):
            if not found or found[i] is None:
                self.store.put(key, entries[i])
        if self._storage != torch.float32:
            # Rounded as every later epoch will see them.
            computed = join_batch(entries, images.device)
        if self.store.full and not self._warned_full:
            self._warned_full = True
            warnings.warn(
                f"feature cache full ({self.store.location}): the teacher features of the "
                "remaining images are recomputed every epoch; free space with `pdd cache clear "
                f"features` or raise ${_DISK_LIMIT_ENV}",
                RuntimeWarning,
                stacklevel=2,
            )
        return computed

    def _choose(self, sample: Entry) -> MemoryStore | DiskStore:
        """``auto``: memory when every training image's features fit under the bound, else disk;
        an unusable disk folder is a warning when memory will do, else an error naming it."""
        needed = _entry_bytes(sample) * self.expected_images
        if needed <= self._memory_bound:
            if self._disk_problem:
                warnings.warn(
                    f"{self._disk_problem}; the training set's teacher features "
                    f"({needed / 1024**2:.1f} MiB) fit in memory, so they are kept there",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return self._memory(self._memory_bound)
        if self._disk_problem:
            raise ConfigError(
                f"{self._disk_problem}; the training set's teacher features "
                f"({needed / _GIB:.2f} GiB) exceed the in-memory bound of --feature-cache auto "
                f"({self._memory_bound / _GIB:.2f} GiB): point PDD_CACHE_DIR at a writable "
                "folder, or use --feature-cache memory (unbounded) or off"
            )
        return self._disk()

    # -- reporting ------------------------------------------------------------------------

    def mode(self) -> str:
        """The store in use: memory, disk, or undecided (``auto`` before the first batch)."""
        if self.store is None:
            return "undecided"
        return "memory" if isinstance(self.store, MemoryStore) else "disk"

    def describe(self) -> str:
        """One line for the fit banner: where the teacher features come from."""
        stored = (
            "as float32"
            if self.dtype == "float32"
            else f"as {self.dtype} (served as float32)"
        )
        if self.store is None:
            return (
                f"teacher features: computed once per image, then cached {stored} (auto: in "
                f"memory up to {self._memory_bound / _GIB:.1f} GiB, else on disk in "
                f"{features_dir(self._root)})"
            )
        where = (
            "in memory"
            if self.mode() == "memory"
            else f"on disk in {self.store.location}"
        )
        return (
            f"teacher features: computed once per image, then cached {where} {stored}"
        )

    def summary(self) -> str:
        """One line after training: how many images were served and how big the cache is."""
        info = self.record()
        return (
            f"teacher features: {info['hits']} images from the cache, {info['misses']} computed; "
            f"cache ({info['mode']}, {info['dtype']}): {info['entries']} entries, "
            f"{info['bytes'] / 1024**2:.1f} MiB"
        )

    def record(self) -> dict[str, Any]:
        """``feature_cache`` of metrics.json."""
        return {
            "mode": self.mode(),
            "requested": self.requested,
            "dtype": self.dtype,
            "entries": 0 if self.store is None else self.store.entries(),
            "bytes": 0 if self.store is None else self.store.bytes,
            "hits": self.hits,
            "misses": self.misses,
            "location": None if self.store is None else self.store.location,
        }


def teacher_features(model: Any, images: Tensor, batch_size: int) -> dict[str, Tensor]:
    """``model.teacher_features`` of a batch computed as a batch of ``batch_size`` (a short batch
    padded with copies of its last image): an image's features then never depend on how many
    images shared its batch (module docstring)."""
    count = int(images.shape[0])
    if count >= batch_size:
        return model.teacher_features(images)
    padded = torch.cat(
        [images, images[-1:].expand(batch_size - count, *images.shape[1:])]
    )
    return {
        name: value[:count] for name, value in model.teacher_features(padded).items()
    }


def for_training(
    mode: str,
    model: Any,
    expected_images: int,
    batch_size: int = 0,
    dtype: str = "float32",
) -> FeatureCache | None:
    """The cache a sub-run trains with: None for ``off`` or a model without the teacher/student
    split (``loss_from_features``)."""
    if mode == "off" or not hasattr(model, "loss_from_features"):
        return None
    return FeatureCache(mode, expected_images, batch_size=batch_size, dtype=dtype)


def off_record(mode: str, dtype: str = "float32") -> dict[str, Any]:
    """``feature_cache`` of metrics.json when no cache was used (``mode`` and ``dtype`` are what
    was asked)."""
    return {
        "mode": "off",
        "requested": mode,
        "dtype": dtype,
        "entries": 0,
        "bytes": 0,
        "hits": 0,
        "misses": 0,
        "location": None,
    }
