"""How a landing file's columns and event names map onto `events`: presets for known logs.

A mapping names the source columns for user, item, event type and time, says how to read the
time, and lists which raw event names mean view / cart / purchase (matched case-insensitively
after trimming). A raw event name that is not listed is quarantined as 'unknown event type'.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

EVENT_TYPES = ("view", "cart", "purchase")
TIME_UNITS = ("iso", "epoch_s", "epoch_ms", "format")


def _frozen(mapping: dict[str, str]) -> MappingProxyType:
    return MappingProxyType({k.strip().lower(): v for k, v in mapping.items()})


@dataclass(frozen=True)
class EventMapping:
    """Column and event-name mapping of one kind of landing file.

    time_unit: 'iso' (an ISO-like date-time; an offset or zone name such as '+02:00' or ' UTC' is
    converted, none means UTC), 'epoch_s' / 'epoch_ms' (unix time), or 'format' (DuckDB strptime
    `time_format`, read as UTC).
    """

    name: str
    user_column: str
    item_column: str
    event_column: str
    time_column: str
    event_names: MappingProxyType = field(default_factory=lambda: _frozen({e: e for e in EVENT_TYPES}))
    time_unit: str = "iso"
    time_format: str | None = None
    header: bool = True
    column_names: tuple[str, ...] = ()  # the columns of header-less CSV files, in order
    delimiter: str = ","

    def __post_init__(self) -> None:
        if self.time_unit not in TIME_UNITS:
            raise ValueError(f"time_unit must be one of {TIME_UNITS}, got {self.time_unit!r}")
        if self.time_unit == "format" and not self.time_format:
            raise ValueError("time_unit 'format' needs a time_format (DuckDB strptime syntax)")
        bad = sorted(set(self.event_names.values()) - set(EVENT_TYPES))
        if bad:
            raise ValueError(f"event_names may only map to {EVENT_TYPES}, got {bad}")
        used = self.mapped_columns()
        if len(set(used)) != len(used):
            raise ValueError(f"user, item, event and time columns must be distinct, got {used}")
        if not self.header and not set(used) <= set(self.column_names):
            raise ValueError(f"header-less mapping {self.name!r}: column_names {self.column_names} lack some of {used}")
        if len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {self.delimiter!r}")

    def mapped_columns(self) -> tuple[str, str, str, str]:
        return (self.user_column, self.item_column, self.event_column, self.time_column)

    def with_overrides(self, **overrides: Any) -> EventMapping:
        """This mapping with the given fields replaced; None means 'keep the preset's value'."""
        given = {key: value for key, value in overrides.items() if value is not None}
        if "event_names" in given:
            given["event_names"] = _frozen(dict(given["event_names"]))
        if "column_names" in given:
            given["column_names"] = tuple(given["column_names"])
        return replace(self, **given)


PRESETS: dict[str, EventMapping] = {
    # our own files (pipelines.landing): user_id,item_id,event_type,ts
    "default": EventMapping(
        name="default", user_column="user_id", item_column="item_id", event_column="event_type", time_column="ts"
    ),
    # REES46 "eCommerce behavior data": event_time 'YYYY-MM-DD HH:MM:SS UTC'; later months also log
    # remove_from_cart, which is not a signal we model and is quarantined
    "rees46": EventMapping(
        name="rees46",
        user_column="user_id",
        item_column="product_id",
        event_column="event_type",
        time_column="event_time",
    ),
    # RetailRocket events.csv: timestamp (ms),visitorid,event,itemid,transactionid
    "retailrocket": EventMapping(
        name="retailrocket",
        user_column="visitorid",
        item_column="itemid",
        event_column="event",
        time_column="timestamp",
        time_unit="epoch_ms",
        event_names=_frozen({"view": "view", "addtocart": "cart", "transaction": "purchase"}),
    ),
    # Taobao UserBehavior.csv, no header: user,item,category,behavior,unix seconds. 'fav' (a
    # bookmark) is deliberately left unmapped: it is quarantined as 'unknown event type' and
    # stays auditable; map it with event_names={'fav': 'cart', ...} if it should count.
    "taobao": EventMapping(
        name="taobao",
        user_column="user",
        item_column="item",
        event_column="behavior",
        time_column="ts",
        time_unit="epoch_s",
        header=False,
        column_names=("user", "item", "category", "behavior", "ts"),
        event_names=_frozen({"pv": "view", "cart": "cart", "buy": "purchase"}),
    ),
}


def preset(name: str) -> EventMapping:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown event source preset {name!r}; known: {sorted(PRESETS)}") from None
