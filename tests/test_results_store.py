"""The store keeps one schema: rows outside the vocabulary are refused, and folders written before the schema
was fixed (columns typed by their values, timestamps as text) still load, conformed to it."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ttt_bench import results
from ttt_bench.results import ResultStore, load_results

ROW = {"suite": "s", "config_hash": "abc", "variant": "linear-attention", "layer": "linear-attention",
       "seq_len": 256, "batch": 1, "measurement": "forward", "status": "ok", "message": "", "time_ms": 1.5,
       "peak_bytes": 1024, "started_at": "2026-11-25T00:00:00.125+00:00", "gpu_memory_bytes": results.NOT_AVAILABLE}


def test_a_cell_file_has_the_declared_schema_and_version(tmp_path):
    store = ResultStore(tmp_path)
    store.write_cell("abc", [ROW, {**ROW, "measurement": "forward_backward", "status": "oom", "time_ms": None}])
    table = pq.read_table(tmp_path / "cells" / "abc.parquet")
    assert table.schema.equals(results.SCHEMA, check_metadata=True)
    assert table.schema.metadata[results.SCHEMA_VERSION_KEY] == str(results.SCHEMA_VERSION).encode()
    frame = load_results(tmp_path)
    assert list(frame.columns) == list(results.SCHEMA.names)
    assert frame.started_at.iloc[0] == pd.Timestamp("2026-11-25T00:00:00.125", tz="UTC")
    assert frame.gpu_memory_bytes.isna().all()  # 'not available' is a number's null
    assert frame.time_ms.tolist()[0] == 1.5 and pd.isna(frame.time_ms.tolist()[1])


@pytest.mark.parametrize(("row", "match"), [({**ROW, "speed": 3.0}, "'speed'.*not declared"),
                                            ({**ROW, "status": "fine"}, "status.*'fine'"),
                                            ({**ROW, "measurement": "backward"}, "measurement.*'backward'")])
def test_rows_outside_the_vocabulary_are_refused_and_nothing_is_written(tmp_path, row, match):
    with pytest.raises(ValueError, match=match):
        ResultStore(tmp_path).write_cell("abc", [row])
    assert not list((tmp_path / "cells").glob("*"))


def test_a_current_file_written_before_a_column_was_declared_loads_with_it_empty(tmp_path):
    store = ResultStore(tmp_path)
    store.write_cell("abc", [ROW])
    path = tmp_path / "cells" / "abc.parquet"
    table = pq.read_table(path)
    older = table.drop_columns(["ops_per_call", "matmul_time_share"])  # as a file from before op_time
    pq.write_table(older.replace_schema_metadata(table.schema.metadata), path)
    frame = load_results(tmp_path)
    assert list(frame.columns) == list(results.SCHEMA.names)
    assert frame.ops_per_call.isna().all() and frame.time_ms.tolist() == [1.5]


def test_a_folder_written_before_the_fixed_schema_still_loads(tmp_path):
    """As the store wrote cells before schema version 1: pandas' own types per file, a column that is null in
    every row of a file typed null, timestamps as ISO text, and a column this version no longer has."""
    cells = tmp_path / "cells"
    cells.mkdir()
    old = {**ROW, "retired_column": "kept"}
    pd.DataFrame([old]).to_parquet(cells / "a.parquet", index=False)
    pd.DataFrame([{**old, "config_hash": "b", "status": "error", "time_ms": None, "peak_bytes": None,
                   "started_at": None}]).to_parquet(cells / "b.parquet", index=False)
    assert pq.read_table(cells / "b.parquet").schema.field("time_ms").type == "null"
    frame = load_results(tmp_path).sort_values("config_hash")
    assert list(frame.columns) == [*results.SCHEMA.names, "retired_column"]
    assert frame.status.tolist() == ["ok", "error"]
    assert frame.peak_bytes.iloc[0] == 1024 and pd.isna(frame.peak_bytes.iloc[1])
    assert frame.started_at.iloc[0] == pd.Timestamp("2026-11-25T00:00:00.125", tz="UTC")
    assert frame.retired_column.tolist() == ["kept", "kept"]
