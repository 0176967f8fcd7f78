"""Smoke test of the CLI entry `mlscale bench kernels --quick` (correctness is tested
against the references elsewhere): it runs, and its table has a row for every op."""
import re

from mlscale.bench.kernels import main

OPS = ["reduce_chunk", "weighted_sum", "sgd_step", "adam_step", "norm", "qsgd_quantize",
       "qsgd_dequantize", "sign_compress", "sign_decompress", "topk_compress",
       "topk_decompress", "coordinate_median", "trimmed_mean"]


def test_bench_kernels_quick_lists_every_op(tmp_path, capsys):
    out = tmp_path / "kernels.md"
    assert main(["--quick", "--no-gpu", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    for op in OPS:
        row = re.search(rf"^\| {op}\b.*$", text, re.M)
        assert row, f"no row for {op}"
        cells = [c.strip() for c in row.group(0).strip("|").split("|")]
        assert len(cells) == 7 and all(float(cells[j]) > 0 for j in (2, 3, 4))
    assert re.search(r"np.add\(a, b, out=c\) [\d.]+ GB/s", text)
    assert "Fused Adam (numba) vs NumPy reference" in text
