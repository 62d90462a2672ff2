"""Options the reporting workflows (tune, benchmark, validate) share: where their report goes and what it records.

Each workflow's own options live beside it (:class:`quant.workflows.tune.TuneOptions`,
:class:`quant.workflows.benchmark.BenchmarkOptions`, :class:`quant.workflows.validate.ValidateOptions`,
:class:`quant.workflows.package.PackageOptions`); all are frozen and check their values when made, with the
messages the command line gives for the same flags.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportOptions:
    """The report files of a run.

    - ``path``: ``NAME.json``; ``NAME.md`` and the figures ``NAME.<figure>.png`` go beside it.
    - ``write``: write the report files even without a path (tune: ``<output>.report.json`` beside the
      model; benchmark and validate: ``<model>.<kind>.json`` in the working folder). None (the default):
      files only when a path is given, here or as the config's ``output.report``.
    - ``plots``: the figures beside the report (tune, benchmark; needs matplotlib).
    - ``command``: the command line recorded in the report (default: this process's, as ``python -m quant ...``).
    """

    path: str | None = None
    write: bool | None = None
    plots: bool = True
    command: str | None = None
