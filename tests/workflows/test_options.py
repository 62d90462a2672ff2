"""The options objects of the Python API: frozen, checked when made with the flags' messages, exported from quant."""

import dataclasses
import inspect

import pytest

import quant
from quant.errors import UsageError

OPTIONS = ("TuneOptions", "BenchmarkOptions", "ValidateOptions", "PackageOptions", "ReportOptions")
FUNCTIONS = ("tune_model", "benchmark_models", "validate_model", "package_model")


@pytest.mark.parametrize("name", OPTIONS)
def test_options_are_frozen_dataclasses_exported_from_quant(name):
    cls = getattr(quant, name)
    assert dataclasses.is_dataclass(cls) and name in quant.__all__ and name in quant.__doc__
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cls(), dataclasses.fields(cls)[0].name, None)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_workflow_function_takes_few_parameters_and_an_options_object(name):
    params = inspect.signature(getattr(quant, name)).parameters
    assert len(params) <= 8 and "options" in params and "log" in params, list(params)


@pytest.mark.parametrize("make,words", [
    (lambda: quant.TuneOptions(objective="fast"), "--objective 'fast': must be accuracy or performance"),
    (lambda: quant.BenchmarkOptions(mode="speed"), "--mode 'speed': must be one of performance, accuracy, all"),
    (lambda: quant.BenchmarkOptions(threads=0), "--threads 0: must be >= 1"),
    (lambda: quant.BenchmarkOptions(extra_batch_sizes=(0,)), "--batch_size 0: must be >= 1"),
    (lambda: quant.BenchmarkOptions(max_accuracy_drop=1.0), "--max_accuracy_drop 1.0: must be < 1"),
    (lambda: quant.BenchmarkOptions(mode="performance", max_accuracy_drop=0.01), "--max_accuracy_drop needs accuracy"),
    (lambda: quant.ValidateOptions(samples=0), "--samples 0: must be >= 1"),
    (lambda: quant.ValidateOptions(atol=-1.0), "--atol -1.0: must be >= 0"),
    (lambda: quant.PackageOptions(count=0), "--count 0: must be >= 1 (a zoo package holds test_data_set folders)"),
])
def test_options_check_their_values_with_the_flags_messages(make, words):
    with pytest.raises(UsageError) as e:
        make()
    assert str(e.value).startswith(words), str(e.value)


def test_options_normalize_sequences():
    assert quant.BenchmarkOptions(extra_batch_sizes=[2, 8]).extra_batch_sizes == (2, 8)
    assert quant.ValidateOptions(test_data="td").test_data == ("td",)
    assert quant.ValidateOptions(test_data=["a", "b"]).test_data == ("a", "b")
    assert quant.ReportOptions() == quant.ReportOptions(path=None, write=None, plots=True, command=None)
