"""IDX parsing and the MNIST download/verify/cache path, on files the tests write themselves.

No test touches the network: mirrors are local ``file://`` directories, or the download
function is replaced.
"""
import gzip
import hashlib

import numpy as np
import pytest

from mlscale.data import mnist
from mlscale.data.mnist import DownloadError, fetch, load_mnist, parse_idx, write_idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(dtype, compress):
    a = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    data = write_idx(a, compress=compress)
    assert (data[:2] == b"\x1f\x8b") == compress
    b = parse_idx(data)
    assert b.dtype == np.dtype(dtype) and b.shape == (2, 3, 4)
    np.testing.assert_array_equal(a, b)
    b[0, 0, 0] = 1  # a writable copy


def test_idx_header_is_the_published_format(tmp_path):
    labels = np.array([7, 2, 1], dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(labels, path)
    # magic 0x00000801 (unsigned byte, 1 dimension), then the size 3 big-endian, then the bytes
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])
    np.testing.assert_array_equal(parse_idx(path), labels)           # from a path
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    gz = tmp_path / "images-idx3-ubyte.gz"
    write_idx(images, gz)                                               # .gz: compressed
    assert gzip.decompress(gz.read_bytes())[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28])
    assert parse_idx(str(gz)).shape == (2, 28, 28)
    assert parse_idx(write_idx(np.array([1.5, -2.0], dtype=">f4"))).tolist() == [1.5, -2.0]


@pytest.mark.parametrize("data, match", [
    (b"\x01\x00\x08\x01", "not an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX dtype code 0x07"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated header"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "needs 5 data bytes, the file has 2"),
])
def test_idx_corrupt_files_raise_clear_errors(data, match):
    with pytest.raises(ValueError, match=match):
        parse_idx(data)


def fake_mnist(tmp_path, n_train=12, n_test=5):
    """A directory with the four MNIST file names holding small random IDX files; their md5s."""
    rng = np.random.default_rng(0)
    src = tmp_path / "mirror"
    src.mkdir()
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test).astype(np.uint8)}
    resources = {}
    for key, (name, _) in mnist.RESOURCES.items():
        data = write_idx(arrays[key], src / name)
        resources[key] = (name, "md5:" + hashlib.md5(data).hexdigest())
    return src, arrays, resources


def test_load_mnist_downloads_verifies_caches_and_parses(tmp_path, monkeypatch):
    src, arrays, resources = fake_mnist(tmp_path)
    monkeypatch.setattr(mnist, "RESOURCES", resources)
    calls = []
    real_download = mnist._download
    monkeypatch.setattr(mnist, "_download", lambda url: calls.append(url) or real_download(url))
    dead = (tmp_path / "nowhere").as_uri() + "/"
    cache = tmp_path / "cache"
    X_train, y_train, X_test, y_test = load_mnist(root=cache, mirrors=[dead, src.as_uri() + "/"])
    assert X_train.shape == (12, 784) and X_test.shape == (5, 784) and X_train.dtype == np.float32
    np.testing.assert_allclose(X_train, arrays["train_images"].reshape(12, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert y_train.dtype == np.int64
    assert len(calls) == 8 and calls[0].startswith(dead)           # first mirror failed, second served
    assert sorted(p.name for p in cache.iterdir()) == sorted(n for n, _ in resources.values())
    # second load: from the cache, no download at all
    calls.clear()
    raw = load_mnist(root=cache, download=False, normalize=False, flatten=False)
    assert calls == [] and raw.X_train.dtype == np.uint8 and raw.X_train.shape == (12, 28, 28)


def test_checksum_mismatch_on_download_is_an_error_that_names_both(tmp_path, monkeypatch):
    src, _, resources = fake_mnist(tmp_path)
    name, _ = resources["train_images"]
    resources["train_images"] = (name, "md5:" + "0" * 32)
    monkeypatch.setattr(mnist, "RESOURCES", resources)
    with pytest.raises(DownloadError) as err:
        load_mnist(root=tmp_path / "cache", mirrors=[src.as_uri()])
    msg = str(err.value)
    assert "checksum mismatch" in msg and "0" * 32 in msg and name in msg
    assert "by hand" in msg and str(tmp_path / "cache") in msg
    assert not (tmp_path / "cache" / name).exists()               # a bad file is never cached


def test_corrupt_cached_file_is_replaced_or_reported(tmp_path, monkeypatch):
    src, _, resources = fake_mnist(tmp_path)
    monkeypatch.setattr(mnist, "RESOURCES", resources)
    cache = tmp_path / "cache"
    name, checksum = resources["test_labels"]
    load_mnist(root=cache, mirrors=[src.as_uri()])
    (cache / name).write_bytes(b"garbage")
    with pytest.raises(DownloadError, match="checksum mismatch.*download=False"):
        fetch(name, checksum, root=cache, download=False)
    path = fetch(name, checksum, root=cache, mirrors=[src.as_uri()])   # downloads a good copy again
    assert path.read_bytes() == (src / name).read_bytes()


def test_offline_and_not_cached_says_what_was_tried_and_how_to_fix(tmp_path, monkeypatch):
    def offline(url):
        raise OSError("network is unreachable")

    monkeypatch.setattr(mnist, "_download", offline)
    with pytest.raises(DownloadError) as err:
        load_mnist(root=tmp_path)                                    # the real mirror list
    msg = str(err.value)
    for base in mnist.MIRRORS:
        assert base + "train-images-idx3-ubyte.gz" in msg
    assert "network is unreachable" in msg and "by hand" in msg and str(tmp_path) in msg
    with pytest.raises(DownloadError, match="not cached at .*download=False"):
        load_mnist(root=tmp_path, download=False)


def test_default_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert mnist.default_root() == tmp_path / ".cache" / "mlscale" / "mnist"
