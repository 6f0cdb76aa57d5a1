"""Rows for a split, from the configured source: generated problems or jsonl/parquet files."""

from __future__ import annotations

from r1mega.data.config import DataConfig
from r1mega.data.errors import DataError, ErrorReport, RowError
from r1mega.data.readers import read_records
from r1mega.data.rows import Row, parse_row
from r1mega.data.tasks import SPLITS, generate

__all__ = ["load_rows"]


def load_rows(
    cfg: DataConfig,
    split: str,
    report: ErrorReport,
    *,
    need_answer: bool = True,
    need_response: bool = False,
) -> list[Row]:
    """Validated rows of `split` ("train" or "test"); malformed ones go through `report`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if cfg.source == "procedural":
        return _procedural_rows(cfg, split, report, need_response)
    files = cfg.train_files if split == "train" else cfg.test_files
    rows: list[Row] = []
    for path in files:
        for record in read_records(path):
            report.rows_read += 1
            if record.error is not None:
                report.add(record.location, record.error)
                continue
            try:
                rows.append(
                    parse_row(
                        record.location,
                        record.data,
                        cfg.fields,
                        default_task=cfg.default_task,
                        need_answer=need_answer,
                        need_response=need_response,
                    )
                )
            except RowError as e:
                report.add(record.location, e)
    if files and not rows:
        raise DataError(f"data.{split}_files: no usable rows in {files}; {report.summary()}")
    return rows


def _procedural_rows(cfg: DataConfig, split: str, report: ErrorReport, need_response: bool) -> list[Row]:
    p = cfg.procedural
    if p.general_fraction > 0 and need_response:
        raise DataError("data.procedural.general_fraction: general prompts have no SFT response; "
                        "mix them into RL prompts only (set it to 0 for sft/pretrain)")
    rows = []
    for i, ex in enumerate(generate(p, split)):
        report.rows_read += 1
        row = ex.to_row(with_solution=need_response)
        rows.append(
            Row(
                location=f"procedural:{p.task}:{split}:{i}",
                prompt=row["prompt"],
                messages=None,
                answer=row["answer"],
                task=row["task"],
                metadata=row["metadata"],
                response=row.get("response"),
            )
        )
    if p.general_fraction > 0:
        rows = _with_general_rows(rows, p, split, report)
    return rows


def _with_general_rows(rows: list[Row], p, split: str, report: ErrorReport) -> list[Row]:
    """The generated prompts plus the embedded general prompts (r1mega/rm/tiny_data.py) as
    `general_fraction` of the total, shuffled with the generation seed. A general row keeps its
    answer for the held-out hidden-rule check (rl.general_check), never for a reward."""
    import random

    from r1mega.rm.tiny_data import tiny_prompts

    n = round(len(rows) * p.general_fraction / (1.0 - p.general_fraction))
    general = []
    for i, g in enumerate(tiny_prompts(split, n, p.seed, p.general_problems)):
        report.rows_read += 1
        general.append(Row(location=f"procedural:general:{split}:{i}", prompt=g.prompt, messages=None,
                           answer=g.answer, task="general", metadata={}, prompt_type="general"))
    mixed = rows + general
    random.Random(f"{p.seed}-{split}-general-mix").shuffle(mixed)
    return mixed
