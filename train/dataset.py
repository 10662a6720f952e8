"""Feature cache: corpus files -> the daemon's windows, per variant, cached on disk.

A *variant* is one way of rendering every file before the front-end: ``clean``,
``telephone`` (the deterministic phone channel, for the telephone evaluation) or
``aug<k>`` (augmented copy number k, see :mod:`train.augment`), cut into windows with
given :class:`~serd.features.WindowParams`.  Windows come only from
:func:`serd.windows.windows_of` -- exactly the segments and windows the daemon classifies.

Each (variant, corpus) is one ``.npz`` in the cache directory, keyed by a hash of
everything that determines its content: the file list (path, content digest), the
variant, the augmentation parameters and seed, the front-end parameters and the source of
the front-end modules.  A second run finds the file and skips extraction, also when the
corpus files have been touched or restored in place (new mtimes, same bytes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from serd.features import FeatureParams, WindowParams
from serd.gate import VadSettings
from serd.model import FRONTEND_VERSION
from serd.speechcheck import COUGH_WEIGHTS
from serd.speechcheck import WEIGHTS as SILERO_WEIGHTS
from serd.windows import windows_of
from train.augment import AugmentParams, augment_copy, telephone
from train.corpora import Item, content_digest, load_audio
from train.sources import source_hash

_LOGGER = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("SERD_CACHE", "~/.cache/serd/features")).expanduser()


@dataclass(frozen=True)
class Variant:
    """How files are rendered and windowed for one cached set."""

    kind: str
    """``clean``, ``telephone`` or ``augment``."""
    copy: int = 0
    """Augmented copy number (``augment`` only, from 1)."""
    windows: WindowParams = field(default_factory=WindowParams)
    dtype: str = "float32"
    """Storage type; training copies may use float16 to halve memory."""

    @property
    def name(self) -> str:
        base = {"clean": "clean", "telephone": "tel"}.get(self.kind, f"aug{self.copy}")
        return f"{base}-h{self.windows.hop_seconds:g}"


@dataclass
class WindowSet:
    """Windows of many files: ``x[i]`` came from ``items[file[i]]``."""

    x: npt.NDArray[np.floating]
    file: npt.NDArray[np.int32]
    items: list[Item]

    def __len__(self) -> int:
        return int(self.file.size)

    def files_without_windows(self) -> list[int]:
        present = np.zeros(len(self.items), bool)
        present[self.file] = True
        return [int(i) for i in np.flatnonzero(~present)]


FRONTEND_MODULES = ("serd.decode", "serd.features", "serd.gate", "serd.windows", "train.augment")
"""What a window set's numbers are computed by: decoding, the renderings, the front-end
(and, through :func:`train.sources.source_hash`, every serd/train module these import)."""


def _frontend_source_hash() -> str:
    return source_hash(FRONTEND_MODULES)


def _gate_weights_hash() -> str:
    """The gate's own weights (Silero VAD and the cough check's head): a refitted head
    with unchanged settings and code opens other segments, so it keys the cache too."""
    h = hashlib.sha256()
    for path in (SILERO_WEIGHTS, COUGH_WEIGHTS):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def cache_key(items: Sequence[Item], variant: Variant, *, aug: AugmentParams, seed: int,
              features: FeatureParams, vad: VadSettings) -> str:
    # By content, not mtime: corpora touched or restored in place keep their cache.  (The
    # digest covers the size too, so the size is not part of the key.)
    files = [[it.path, content_digest(it.path)] for it in items]
    blob = {
        # 4: extracted with one BLAS thread per process (format 3 used the machine's
        # default, whose thread count changes the last bit of a few cepstra).
        "format": 4,
        "files": files,
        "variant": [variant.kind, variant.copy, variant.windows.to_dict(), variant.dtype],
        "aug": aug.to_dict() if variant.kind == "augment" else None,
        "seed": seed if variant.kind == "augment" else None,
        "features": features.to_dict(),
        "vad": {k: getattr(vad, k) for k in vad.__dataclass_fields__},
        "frontend_version": FRONTEND_VERSION,
        "frontend_source": _frontend_source_hash(),
        "gate_weights": _gate_weights_hash() if vad.confirm == "silero" else None,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def render(path: str, variant: Variant, aug: AugmentParams, seed: int) -> npt.NDArray[np.float32]:
    """The audio of one file as the variant renders it (16 kHz float32)."""
    x = load_audio(path, 16000)
    if variant.kind == "telephone":
        return telephone(x)
    if variant.kind == "augment":
        return augment_copy(x, aug, seed, path, variant.copy)
    return x


def extract(path: str, variant: Variant, *, aug: AugmentParams, seed: int,
            features: FeatureParams, vad: VadSettings) -> npt.NDArray[np.float32]:
    """(k, frames, n_mfcc) raw windows of one file (k may be 0)."""
    audio = render(path, variant, aug, seed)
    ws = windows_of(audio, features, variant.windows, vad)
    win, _ = variant.windows.frames(features)
    if not ws:
        return np.zeros((0, win, features.n_features), np.float32)
    return np.stack([w.features for w in ws]).astype(np.float32, copy=False)


def _one_blas_thread() -> None:
    """Pool initialiser: one BLAS thread in each extraction worker.

    OpenBLAS starts a thread per core in every process.  With one worker per core the
    workers' BLAS threads fight over the cores for the front-end's small matrix products,
    and extraction slows down severalfold (measured in docs/experiments/LOG.md, Timings
    history).  One thread everywhere also makes
    the features the same whatever the core count and ``jobs`` (the thread count changes
    the last bit of a few cepstra).

    It also gives SIGTERM back its default action.  A forked worker inherits serd-train's
    own handler (:func:`train.__main__._exit_on_sigterm`, which raises SystemExit to run
    the cleanup), and ``Pool.terminate`` ends its workers with SIGTERM while holding the
    task queue's lock: a worker that then ran Python cleanup blocked on that lock, and
    the pool's exit waited for it forever (the first run of ``serd-train all`` after the
    handler was added hung after its first corpus).
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threadpool_limits(1)


@contextmanager
def extraction_pool(jobs: int) -> Iterator[Any]:
    """``jobs`` forked extraction workers (:func:`_one_blas_thread` in each).

    The workers are forked while SIGTERM has its default action, so that they have it
    from their first instruction: a worker still starting when ``Pool.terminate`` sent
    SIGTERM would otherwise run serd-train's handler before its initialiser had reset
    it, and block on the task queue's lock (a test's pool hung so, once in CI).  On the
    way out the pool is closed and joined, so that finished workers end on their own; it
    is terminated only after an error.
    """
    ctx = mp.get_context("fork")
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if main else None
    try:
        pool = ctx.Pool(jobs, initializer=_one_blas_thread)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    try:
        yield pool
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def _job(args: tuple) -> npt.NDArray[np.float32]:
    path, variant, aug, seed, features, vad = args
    return extract(path, variant, aug=aug, seed=seed, features=features, vad=vad)


def cache_path(items: Sequence[Item], variant: Variant, cache_dir: Path, *,
               aug: AugmentParams, seed: int, features: FeatureParams,
               vad: VadSettings) -> Path:
    """Where :func:`build` keeps the windows of ``items`` for ``variant``."""
    key = cache_key(items, variant, aug=aug, seed=seed, features=features, vad=vad)
    return cache_dir / f"windows-{variant.name}-{key[:20]}.npz"


def _defaults(aug: AugmentParams | None, features: FeatureParams | None,
              vad: VadSettings | None) -> tuple[AugmentParams, FeatureParams, VadSettings]:
    """The training recipe's augmentation, the daemon's front-end and VAD where not given."""
    return aug or AugmentParams(), features or FeatureParams(), vad or VadSettings()


def ensure_cached(items: Sequence[Item], variant: Variant, *, aug: AugmentParams | None = None,
                  seed: int = 0, cache_dir: Path = DEFAULT_CACHE, jobs: int = 2,
                  features: FeatureParams | None = None, vad: VadSettings | None = None,
                  progress: bool = True) -> Path:
    """Extract into the cache unless it is there already, without loading it: for a process
    that hands the training to workers, which load the windows themselves."""
    aug, features, vad = _defaults(aug, features, vad)
    path = cache_path(items, variant, Path(cache_dir), aug=aug, seed=seed, features=features,
                      vad=vad)
    if not path.is_file():
        build(items, variant, aug=aug, seed=seed, cache_dir=cache_dir, jobs=jobs,
              features=features, vad=vad, progress=progress)
    return path


def build(items: Sequence[Item], variant: Variant, *, aug: AugmentParams | None = None,
          seed: int = 0, cache_dir: Path | None = DEFAULT_CACHE, jobs: int = 2,
          features: FeatureParams | None = None, vad: VadSettings | None = None,
          progress: bool = True) -> WindowSet:
    """Windows of ``items`` for ``variant``, from the cache when present."""
    aug, features, vad = _defaults(aug, features, vad)
    items = list(items)
    path = None
    if cache_dir is not None:
        path = cache_path(items, variant, Path(cache_dir), aug=aug, seed=seed,
                          features=features, vad=vad)
        if path.is_file():
            with np.load(path) as z:
                return WindowSet(z["x"], z["file_index"], items)
    args = [(it.path, variant, aug, seed, features, vad) for it in items]
    outs = extract_all(_job, args, f"features {variant.name} ({len(items)} files)", jobs,
                       progress)
    win, _ = variant.windows.frames(features)
    x, file = stack_rows(outs, np.zeros((0, win, features.n_features), np.float32))
    x = x.astype(variant.dtype, copy=False)
    if path is not None:
        save_atomic(path, x, file)
    return WindowSet(x, file, items)


def extract_all(job: Callable[[tuple], npt.NDArray[Any]], args: Sequence[tuple], desc: str,
                jobs: int, progress: bool) -> list[npt.NDArray[Any]]:
    """``job`` over ``args`` in order: in ``jobs`` forked workers with one BLAS thread
    each (see :func:`_one_blas_thread`), or in this process with one BLAS thread."""
    if jobs > 1 and len(args) > 32:
        with extraction_pool(jobs) as pool:
            return list(tqdm(pool.imap(job, args, chunksize=16), total=len(args), desc=desc,
                             disable=not progress, leave=False))
    with threadpool_limits(1):
        return [job(a) for a in tqdm(args, desc=desc, disable=not progress, leave=False)]


def stack_rows(outs: list[npt.NDArray[Any]], empty: npt.NDArray[Any]
               ) -> tuple[npt.NDArray[Any], npt.NDArray[np.int32]]:
    """Per-file row blocks -> (rows, the file index of each row); ``empty`` if no file."""
    if not outs:
        return empty, np.zeros(0, np.int32)
    file = np.concatenate([np.full(len(o), i, np.int32) for i, o in enumerate(outs)])
    return np.concatenate(outs), file


def save_atomic(path: Path, x: npt.NDArray[Any], file: npt.NDArray[np.int32]) -> None:
    """Write a cache file as ``x`` and ``file_index``; a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
    np.savez(tmp, x=x, file_index=file)
    tmp.replace(path)
