"""What-if at frontier scale: predict a training run on a big cluster from the real code
run on shape-only arrays (``mlscale.meta``), and check it against published tables.

    from mlscale.whatif import predict, compare_megatron
    compare_megatron()      # Narayanan et al. 2021, Table 1: published vs predicted TFLOP/s per GPU
    compare_korthikanti()   # a second source: Korthikanti et al. 2022, Table 5 iteration times

Files: ``predict.py`` (the step-time predictor), ``megatron_table.py`` (the published
rows, cited), ``compare.py`` (the rows against the predictions), ``cluster_sim.py``
(the same step simulated on every rank, 1,024+ of them: ``simulate_step``).
"""
from .compare import calibrate_matmul, compare_korthikanti, compare_megatron, predict_row, row_config
from .megatron_table import KORTHIKANTI_TABLE5, SOURCE, TABLE1, Row, model_flops_eq3
from .predict import EFFICIENCY, Prediction, predict
from .cluster_sim import ClusterRun, simulate_step

__all__ = ["predict", "Prediction", "EFFICIENCY", "TABLE1", "Row", "SOURCE", "model_flops_eq3",
           "compare_megatron", "compare_korthikanti", "calibrate_matmul", "predict_row", "row_config",
           "KORTHIKANTI_TABLE5", "simulate_step", "ClusterRun"]
