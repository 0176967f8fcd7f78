"""MNIST (LeCun, Bottou, Bengio and Haffner 1998): download, verify, cache, parse IDX.

    X_train, y_train, X_test, y_test = load_mnist()     # (60000, 784) float32 in [0, 1]

The four ``.gz`` files are fetched from the first mirror that answers, each checked
against its published MD5 (the checksums torchvision uses), and cached in
``~/.cache/mlscale/mnist`` (``root=`` overrides). Offline, place the files there by
hand. ``parse_idx`` reads the IDX format (gzip or not) for any file of that family
(Fashion-MNIST, KMNIST, EMNIST); ``write_idx`` writes it (tests use it to round trip).

IDX format: 2 zero bytes, a dtype code, the number of dimensions d, then d big-endian
uint32 sizes, then the data, big-endian, C order.
"""
import gzip
import hashlib
import os
import struct
import urllib.request
from math import prod
from pathlib import Path

import numpy as np

from .datasets import Split

MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

# name -> (file name, "algorithm:hexdigest"); md5 or sha256
RESOURCES = {
    "train_images": ("train-images-idx3-ubyte.gz", "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "md5:d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "md5:9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "md5:ec29112dd5afa0611ce80d1b7f02629c"),
}

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("=").str[1:]: k for k, v in IDX_DTYPES.items()}


class DownloadError(OSError):
    """No mirror gave a file with the right checksum, and no good copy is cached."""


def default_root():
    """``~/.cache/mlscale/mnist``, where ``load_mnist`` caches the files."""
    return Path.home() / ".cache" / "mlscale" / "mnist"


# -- IDX ------------------------------------------------------------------------------
def parse_idx(data):
    """An IDX file as a NumPy array (native byte order). ``data``: bytes or a path; gzip is detected."""
    where = "bytes"
    if isinstance(data, (str, os.PathLike)):
        where = str(data)
        data = Path(data).read_bytes()
    data = bytes(data)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"parse_idx({where}): not an IDX file (it must start with two zero bytes, "
                         f"a dtype code and the number of dimensions; got {data[:4]!r})")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"parse_idx({where}): unknown IDX dtype code 0x{code:02x}; known: "
                         f"{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"parse_idx({where}): truncated header: {ndim} dimensions need {header} bytes, "
                         f"got {len(data)}")
    shape = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    expected = prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"parse_idx({where}): shape {shape} of {dtype.name} needs {expected} data bytes, "
                         f"the file has {len(data) - header}: it is truncated or corrupt, delete it and download again")
    arr = np.frombuffer(data, dtype=dtype, offset=header, count=prod(shape)).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # a writable copy in native order


def write_idx(array, path=None, compress=None):
    """``array`` encoded as IDX bytes, written to ``path`` if given.

    gzip-compressed if ``compress`` (default: when ``path`` ends in ".gz").
    """
    a = np.asarray(array)
    key = a.dtype.newbyteorder("=").str[1:]
    if key not in _IDX_CODES:
        raise TypeError(f"write_idx: IDX cannot hold dtype {a.dtype}; "
                        f"use uint8, int8, int16, int32, float32 or float64")
    if a.ndim > 255:
        raise ValueError("write_idx: IDX holds at most 255 dimensions")
    big = a.astype(a.dtype.newbyteorder(">"), copy=False)
    data = bytes([0, 0, _IDX_CODES[key], a.ndim]) + struct.pack(">" + "I" * a.ndim, *a.shape) + big.tobytes()
    if compress is None:
        compress = path is not None and str(path).endswith(".gz")
    if compress:
        data = gzip.compress(data, mtime=0)
    if path is not None:
        Path(path).write_bytes(data)
    return data


# -- download, verify, cache ----------------------------------------------------------
def checksum_of(data, algorithm="md5"):
    """Hex digest of ``data`` (bytes) with ``algorithm`` ("md5" or "sha256")."""
    return hashlib.new(algorithm, data).hexdigest()


def _check(data, checksum):
    """None when ``data`` matches ``"algorithm:hexdigest"``, else a line saying how it differs."""
    algorithm, _, expected = checksum.partition(":")
    got = checksum_of(data, algorithm)
    return None if got == expected.lower() else f"checksum mismatch: {algorithm} {got}, expected {expected}"


def _download(url, timeout=30.0):
    """The bytes at ``url`` (http, https or file://). Tests replace this function."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed mirror list
        return response.read()


def fetch(filename, checksum, root=None, download=True, mirrors=None):
    """Path of ``filename`` in ``root``, verified against ``checksum``, downloaded if missing or bad."""
    root = Path(root) if root is not None else default_root()
    path = root / filename
    mirrors = MIRRORS if mirrors is None else list(mirrors)
    problem = None
    if path.exists():
        problem = _check(path.read_bytes(), checksum)
        if problem is None:
            return path
        problem = f"cached {path}: {problem}"
    if not download:
        state = problem or f"not cached at {path}"
        raise DownloadError(f"{filename}: {state}, and download=False.\n" + _by_hand(root))
    tried = [problem] if problem else []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        try:
            data = _download(url)
        except Exception as e:  # network down, 404, timeout: try the next mirror
            tried.append(f"{url}: {type(e).__name__}: {e}")
            continue
        bad = _check(data, checksum)
        if bad:
            tried.append(f"{url}: {bad}")
            continue
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: a crash never leaves half a file under the real name
        return path
    raise DownloadError(f"could not get {filename} with checksum {checksum}. Tried:\n  "
                        + "\n  ".join(tried or ["no mirrors given"]) + "\n" + _by_hand(root))


def _by_hand(root):
    names = ", ".join(name for name, _ in RESOURCES.values())
    return (f"To install MNIST by hand, download {names} from any mirror "
            f"({', '.join(MIRRORS)}) on a machine with internet and copy them into {root} "
            f"(or pass load_mnist(root=...) pointing at them); the checksums are in mlscale.data.mnist.RESOURCES.")


def load_mnist(root=None, download=True, normalize=True, flatten=True, mirrors=None):
    """MNIST as ``Split(X_train, y_train, X_test, y_test)``: 60000 train and 10000 test digits.

    X float32, pixels scaled to [0, 1] (``normalize=False`` keeps uint8 0..255), shape
    (n, 784) (``flatten=False``: (n, 28, 28)); y int64. Files are cached in ``root``
    (default ``~/.cache/mlscale/mnist``) and verified on every load.
    """
    arrays = {key: parse_idx(fetch(name, checksum, root, download, mirrors))
              for key, (name, checksum) in RESOURCES.items()}
    out = []
    for split in ("train", "test"):
        X, y = arrays[f"{split}_images"], arrays[f"{split}_labels"].astype(np.int64)
        if len(X) != len(y):
            raise ValueError(f"load_mnist: {split} has {len(X)} images but {len(y)} labels: the files do not match")
        if flatten:
            X = X.reshape(len(X), -1)  # (n, 784)
        if normalize:
            X = X.astype(np.float32) / np.float32(255.0)
        out += [X, y]
    return Split(*out)
