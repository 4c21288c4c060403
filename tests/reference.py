"""An independent, slow, obviously-correct reading of the CSV contract, to check k2jobs against."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

SYDNEY = ZoneInfo("Australia/Sydney")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SYMBOLS = {3153: "MWR", 7078: "BHP", 7181: "DVN", 7458: "RIO"}


def epoch_ms(date: str, time: str) -> int:
    fmt = "%m/%d/%Y %H:%M:%S.%f" if "." in time else "%m/%d/%Y %H:%M:%S"
    local = datetime.strptime(f"{date} {time}", fmt).replace(tzinfo=SYDNEY)
    return (local - EPOCH) // __import__("datetime").timedelta(milliseconds=1)


def local_time_exists(day: date, hour: int) -> bool:
    """False for an hour that Sydney's clocks skip when daylight saving starts."""
    local = datetime(day.year, day.month, day.day, hour)
    if not 1 < day.year < 9999:
        return True
    return local.replace(tzinfo=SYDNEY).astimezone(UTC).astimezone(SYDNEY).replace(tzinfo=None) == local


def expected_value(kind: str, company_id: int, line: str) -> dict:  # type: ignore[type-arg]
    """The message value k2jobs must publish for one valid CSV line (without ingestion_timestamp)."""
    fields = next(csv.reader([line]))
    base = {
        "symbol": SYMBOLS[company_id],
        "company_id": company_id,
        "exchange": "ASX",
        "exchange_timestamp": epoch_ms(fields[0], fields[1]),
    }
    if kind == "trades":
        return {
            **base,
            "price": fields[2],
            "volume": int(fields[3]),
            "qualifiers": int(fields[4]),
            "venue": fields[5] or None,
            "buyer_id": fields[6] or None,
        }
    return {
        **base,
        "bid_price": fields[2],
        "ask_price": fields[3],
        "bid_volume": int(fields[4]),
        "ask_volume": int(fields[5]),
    }


def expected_avro_record(
    kind: str, company_id: int, path: str, line_no: int, line: str, ingestion_us: int
) -> dict[str, Any]:
    """The TradeV2 / QuoteV2 record (as AvroSerializer takes it) of one valid CSV line.

    Timestamps are µs; message_id and trade_id / quote_id are `<path>:<line>:<exchange time µs>`.
    """
    json_value = expected_value(kind, company_id, line)
    ts_us = json_value["exchange_timestamp"] * 1000
    row_id = f"{path}:{line_no}:{ts_us}"
    record: dict[str, Any] = {"message_id": row_id, ("trade_id" if kind == "trades" else "quote_id"): row_id}
    record.update(symbol=SYMBOLS[company_id], exchange="ASX", asset_class="equities", timestamp=ts_us)
    vendor = {"company_id": str(company_id)}
    if kind == "trades":
        qualifiers = str(json_value["qualifiers"])
        record.update(price=Decimal(json_value["price"]), quantity=Decimal(json_value["volume"]), currency="AUD")
        record.update(side="UNKNOWN", trade_conditions=[qualifiers])
        vendor["qualifiers"] = qualifiers
        vendor.update({k: json_value[k] for k in ("venue", "buyer_id") if json_value[k]})
    else:
        record.update(bid_price=Decimal(json_value["bid_price"]), bid_quantity=Decimal(json_value["bid_volume"]))
        record.update(ask_price=Decimal(json_value["ask_price"]), ask_quantity=Decimal(json_value["ask_volume"]))
        record["currency"] = "AUD"
    record.update(source_sequence=None, ingestion_timestamp=ingestion_us, platform_sequence=line_no)
    record["vendor_data"] = vendor
    return record


def source_lines(root: Path, relative: str) -> dict[int, str]:
    """1-based line number -> text of every non-blank line of a file."""
    data = (root / relative).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return {
        number: line.decode("utf-8", "replace").rstrip("\r")
        for number, line in enumerate(data.split(b"\n"), start=1)
        if line.strip()
    }


def key_order_violations(messages: list) -> list[str]:  # type: ignore[type-arg]
    """Where a key's messages, in the order read from its partition, break file order.

    Each file's lines must strictly increase, and a key's files must come one after the other, in path order.
    """
    by_key: dict[tuple[str, bytes], list[tuple[str, int]]] = {}
    for msg in messages:
        path, line = msg.source.rsplit(":", 1)
        by_key.setdefault((msg.topic, msg.key), []).append((path, int(line)))
    problems = []
    for (topic, key), sources in by_key.items():
        finished: set[str] = set()
        previous: tuple[str, int] | None = None
        for path, line in sources:
            if previous is not None and path == previous[0] and line <= previous[1]:
                problems.append(f"{topic} {key!r}: {path}:{line} after {path}:{previous[1]}")
            elif previous is not None and path != previous[0]:
                finished.add(previous[0])
                if path in finished or path < previous[0]:
                    problems.append(f"{topic} {key!r}: {path} again or out of path order after {previous[0]}")
            previous = (path, line)
    return problems


def assert_sample_values(messages: list, paths: set[str], started_ms: int) -> None:  # type: ignore[type-arg]
    """Every row of data/sample once, each value field by field as expected: for a load of the sample with some
    files gzipped (`paths` as the job names them, `.csv.gz` or `.csv`), from a directory or a bucket."""
    sample = Path(__file__).resolve().parent.parent / "data" / "sample"
    lines = {path: source_lines(sample, path.removesuffix(".gz")) for path in paths}
    sources: Counter[str] = Counter()
    for msg in messages:
        sources[msg.source] += 1
        path, line_no = msg.source.rsplit(":", 1)
        kind, company = path.split("/")[0], int(Path(path).name.split(".")[0])
        value = orjson.loads(msg.value)
        assert started_ms - 5000 <= value.pop("ingestion_timestamp")
        assert value == expected_value(kind, company, lines[path][int(line_no)])
    assert sum(sources.values()) == 170_332 and max(sources.values()) == 1
    assert {s.rsplit(":", 1)[0] for s in sources} == paths


def count_rows(data: bytes) -> int:
    """Rows in a file's bytes: its lines that are not blank (a last line without a line ending counts)."""
    return sum(1 for line in data.split(b"\n") if line.strip())
