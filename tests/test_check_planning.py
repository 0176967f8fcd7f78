"""The model-state memory exercise (notebook 14): right answers written differently pass,
the usual mistakes fail with a verdict that names them."""
import re

import pytest

from mlscale.check import memory_per_gpu, solution
from mlscale.check.core import solution_source
from mlscale.check.planning import CASES, reference
from mlscale.parallel.zero import zero_memory


def by_parts(params, tp, pp, dp, zero_stage):
    n = params / tp / pp
    p16, g16, opt = 2 * n, 2 * n, 12 * n
    if zero_stage >= 1:
        opt /= dp
    if zero_stage >= 2:
        g16 /= dp
    if zero_stage >= 3:
        p16 /= dp
    return p16 + g16 + opt


def with_zero_py(params, tp, pp, dp, zero_stage):
    return zero_memory(params / (tp * pp), dp, zero_stage)


def integer_bytes(params, tp, pp, dp, zero_stage):  # rounds nowhere: the same float formula, other order
    return (16 if zero_stage == 0 else 4 + 12 / dp if zero_stage == 1 else 2 + 14 / dp if zero_stage == 2
            else 16 / dp) * params / (tp * pp)


@pytest.mark.parametrize("fn", [by_parts, with_zero_py, integer_bytes])
def test_correct_variants_pass(fn):
    res = memory_per_gpu(fn, verbose=False)
    assert res.passed, res.summary()
    assert res.cases == len(CASES)


def test_reference_is_the_zero_paper_figure_1():
    # Rajbhandari et al. 2020, figure 1: 7.5B parameters, N = 64: 120, 31.4, 16.6, 1.9 GB
    got = [reference(7.5e9, 1, 1, 64, s) / 1e9 for s in range(4)]
    assert got == pytest.approx([120, 31.4, 16.6, 1.875], abs=0.05)


def everything_over_dp(params, tp, pp, dp, zero_stage):
    return params / (tp * pp) * (16 / dp if zero_stage else 16)


def no_model_parallel(params, tp, pp, dp, zero_stage):
    return zero_memory(params, dp, zero_stage)


def four_bytes(params, tp, pp, dp, zero_stage):
    return params / (tp * pp) * (4 if zero_stage < 2 else 2 + 2 / dp if zero_stage == 2 else 4 / dp)


def dp_divides_the_model(params, tp, pp, dp, zero_stage):
    return 16 * params / (tp * pp * dp)


def stage2_as_stage1(params, tp, pp, dp, zero_stage):
    return params / (tp * pp) * {0: 16, 1: 4 + 12 / dp, 2: 4 + 12 / dp, 3: 16 / dp}[zero_stage]


def in_gigabytes(params, tp, pp, dp, zero_stage):
    return with_zero_py(params, tp, pp, dp, zero_stage) / 1e9


def only_tp(params, tp, pp, dp, zero_stage):
    return zero_memory(params / tp, dp, zero_stage)


def forgot_return(params, tp, pp, dp, zero_stage):
    with_zero_py(params, tp, pp, dp, zero_stage)


@pytest.mark.parametrize("fn, verdict", [
    (everything_over_dp, r"stage 1 shards only the optimizer state"),
    (no_model_parallel, r"1/\(tp pp\) of the parameters"),
    (four_bytes, r"16 B a parameter, not 4"),
    (dp_divides_the_model, r"data parallelism COPIES the model"),
    (stage2_as_stage1, r"stage 2 shards the gradients too"),
    (in_gigabytes, r"you returned GB .*return bytes"),
    (only_tp, r"1/pp of the layers"),
    (forgot_return, r"returned None"),
])
def test_mistakes_fail_with_a_verdict_that_names_them(fn, verdict):
    res = memory_per_gpu(fn, verbose=False)
    assert not res.passed
    assert res.failures and re.search(verdict, res.failures[0]), res.failures[0]


def test_a_stub_is_not_implemented_and_the_hint_and_solution_run(capsys):
    def stub(params, tp, pp, dp, zero_stage):
        raise NotImplementedError

    res = memory_per_gpu(stub, verbose=False)
    assert res.not_implemented and not res.passed and "not implemented" in res.summary()
    ns = {}
    exec(solution_source("memory_per_gpu"), ns)
    assert memory_per_gpu(ns["memory_per_gpu_solution"], verbose=False).passed
    solution("memory_per_gpu")
    assert "def memory_per_gpu_solution" in capsys.readouterr().out
