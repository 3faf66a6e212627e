"""The Pareto front of point estimates (max accuracy, min cost), the one definition the report and the sweep share."""

from __future__ import annotations

import polars as pl


def pareto_front(frame: pl.DataFrame, accuracy: str, cost: str, group: str | None = None) -> pl.Series:
    """Boolean flags, in row order, of the rows no other row of their `group` dominates on (max `accuracy`, min
    `cost`); a row with a null or NaN in either is False.

    Sorted by cost, a row is on the front when it has the best accuracy of its cost and beats every strictly cheaper
    row. Equal points do not dominate each other, so exact ties are all on the front.
    """
    values = frame.select(grp=pl.col(group) if group else pl.lit(0), acc=pl.col(accuracy).cast(pl.Float64),
                          cost=pl.col(cost).cast(pl.Float64)).with_row_index("row")
    points = values.filter(pl.col("acc").is_not_null() & pl.col("cost").is_not_null() & pl.col("acc").is_not_nan()
                           & pl.col("cost").is_not_nan())
    by_cost = (points.group_by("grp", "cost").agg(best=pl.col("acc").max()).sort("grp", "cost")
               .with_columns(cheaper=pl.col("best").cum_max().shift(1).over("grp")))
    beats_cheaper = pl.col("cheaper").is_null() | (pl.col("acc") > pl.col("cheaper"))
    front = points.join(by_cost, on=["grp", "cost"]).filter((pl.col("acc") == pl.col("best")) & beats_cheaper)["row"]
    return values["row"].is_in(front.implode()).alias("pareto")
