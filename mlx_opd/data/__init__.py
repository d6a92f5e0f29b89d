"""Data: training and evaluation samples from JSONL, Parquet or the authors' published
layout (samples, re-exported here: `from mlx_opd.data import read_samples`), images
(images) and archives of images (archives). It may import run (errors, files), nothing
above."""

from mlx_opd.data.samples import (  # noqa: F401
    BOX_FORMATS,
    FIELDS,
    PARQUET_MAGIC,
    PREPARED_COLUMNS,
    PUBLISHED_COLUMNS,
    PUBLISHED_FILE,
    SKIP_HINT,
    DataError,
    ReadReport,
    Sample,
    authors_layout,
    box_to_xyxy,
    detect_format,
    jsonl_rows,
    make_sample,
    make_vision_opd_sample,
    need,
    parquet_rows,
    read_boxes,
    read_samples,
    resolve_data_path,
    union_box,
    with_skip_hint,
)
