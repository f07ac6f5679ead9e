"""als_store.warehouse: the per-statement thread setting goes back to what it was."""

import duckdb
import pytest

from als_store.warehouse import at_least_threads, transaction


def threads(con) -> int:
    return con.execute("SELECT CAST(current_setting('threads') AS BIGINT)").fetchone()[0]


@pytest.fixture
def con(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("SET threads = 2")
    yield con
    con.close()


def test_threads_are_raised_inside_and_restored_after(con):
    with at_least_threads(con, 4):
        assert threads(con) == 4
        assert con.execute("SELECT count(*) FROM range(1000) GROUP BY range % 7").fetchall()
    assert threads(con) == 2


def test_a_higher_setting_is_left_alone(con):
    con.execute("SET threads = 6")
    with at_least_threads(con, 4):
        assert threads(con) == 6
    assert threads(con) == 6


def test_a_failed_transaction_inside_restores_the_setting_and_keeps_the_error(con):
    con.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(duckdb.ConversionException):
        with at_least_threads(con, 4), transaction(con):
            con.execute("INSERT INTO t VALUES (1)")
            con.execute("SELECT CAST('not a number' AS INTEGER)")
    assert threads(con) == 2
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
