"""Data for the course: synthetic sets, real digits and MNIST, partitioners, batching.

    from mlscale import data
    X_train, y_train, X_test, y_test = data.load_digits()        # offline, from scikit-learn
    parts = data.label_shards(y_train, num_clients=10)            # FedAvg's non-IID split
    Xr, yr = data.shard(X_train, y_train, rank, world_size)       # a rank's shard
    for Xb, yb in data.batches(Xr, yr, batch_size=32, seed=0, epoch=e): ...

Every function is deterministic in its seed; X is float32 and y int64.
Text for the transformer: ``grammar_text``, ``CharTokenizer``, ``lm_batch`` (text.py).
"""
from .datasets import Split, blobs, load_digits, spirals, train_test_split  # noqa: F401
from .loader import batches, num_batches, shard, split_batch  # noqa: F401
from .mnist import DownloadError, load_mnist, parse_idx, write_idx  # noqa: F401
from .partition import dirichlet, iid, label_counts, label_shards, label_skew  # noqa: F401
from .text import CharTokenizer, grammar_sentence, grammar_text, lm_batch  # noqa: F401

__all__ = ["Split", "blobs", "spirals", "load_digits", "train_test_split", "load_mnist", "parse_idx",
           "write_idx", "DownloadError", "iid", "label_shards", "dirichlet", "label_counts", "label_skew",
           "shard", "batches", "num_batches", "split_batch", "grammar_text", "grammar_sentence", "CharTokenizer",
           "lm_batch"]
