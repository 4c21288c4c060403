"""Parsing and validating one CSV row into the bytes of a Kafka message value; pure."""

from __future__ import annotations

import csv
import re
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from k2jobs.plan.model import Kind

EXCHANGE_TIMEZONES = {"ASX": ZoneInfo("Australia/Sydney")}
DEFAULT_EXCHANGE = "ASX"

TRADE_COLUMNS = ("date", "time", "price", "volume", "qualifiers", "venue", "buyer_id")
QUOTE_COLUMNS = ("date", "time", "bid_price", "ask_price", "bid_volume", "ask_volume")
COLUMNS = {Kind.TRADE: TRADE_COLUMNS, Kind.QUOTE: QUOTE_COLUMNS}
PRICE_FIELDS = frozenset({"price", "bid_price", "ask_price"})
INTEGER_FIELDS = frozenset({"volume", "qualifiers", "bid_volume", "ask_volume"})
TEXT_FIELDS = frozenset({"venue", "buyer_id"})
INT64_MAX = 2**63 - 1

_DATE = r"(\d\d/\d\d/\d{4})"
_TIME = r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,3}))?"
_PRICE = r"(\d{1,12}(?:\.\d{1,6})?)"
_INT = r"(\d{1,18})"
_TEXT = r'([^,"]*)'
_LAST_TEXT = r'([^,"]*?)'  # lazy, so a CRLF line's "\r" is left to the line ending
_LINE_END = r"\r?\Z"
# Digits are ASCII digits only (re.ASCII): "١٢" is not a volume, and a price is published as written.
# Whole-line patterns accept the common, unquoted, valid row in one call; anything they
# refuse goes through the field-by-field path, which either accepts it or names the problem.
_FAST = {
    Kind.TRADE: re.compile(",".join([_DATE, _TIME, _PRICE, _INT, _INT, _TEXT, _LAST_TEXT]) + _LINE_END, re.ASCII),
    Kind.QUOTE: re.compile(",".join([_DATE, _TIME, _PRICE, _PRICE, _INT, _INT]) + _LINE_END, re.ASCII),
}
BLANK = " \t\n\r\x0b\x0c"  # what bytes.strip() strips: a line of only these is blank, here as at plan time
_DATE_RE = re.compile(r"(\d\d)/(\d\d)/(\d{4})\Z", re.ASCII)
_TIME_RE = re.compile(_TIME + r"\Z", re.ASCII)
_PRICE_RE = re.compile(_PRICE + r"\Z", re.ASCII)
_INT_RE = re.compile(r"\d+\Z", re.ASCII)


_PLAIN_TEXT = re.compile(r"[ !#-\[\]-~]*\Z")  # printable ASCII that needs no JSON escaping


def json_text(value: str | None) -> str:
    """A text field as JSON: null when empty, escaped where needed."""
    if not value:
        return "null"
    if _PLAIN_TEXT.match(value):
        return f'"{value}"'
    return orjson.dumps(value).decode()


def _millis(frac: str | None) -> int:
    return int(frac.ljust(3, "0")) if frac else 0


class RowError(ValueError):
    """A row that cannot be published; the message says which field and why."""


class SkippedTime(RowError):
    """A local hour that does not exist: the clocks jump over it when daylight saving starts."""


@lru_cache(maxsize=65_536)
def hour_start_ms(date: str, hour: int, exchange: str = DEFAULT_EXCHANGE) -> int:
    """Epoch ms of the start of `hour` on `date` (MM/DD/YYYY), in the exchange's local time.

    Offsets change only on hour boundaries, so one lookup per hour is exact; in the
    repeated hour when daylight saving ends, the first (daylight) occurrence is used. An hour
    the clocks skip when daylight saving starts does not exist: SkippedTime.
    """
    match = _DATE_RE.match(date)
    if match is None:
        raise RowError(f"date {date!r} is not MM/DD/YYYY")
    month, day, year = (int(part) for part in match.groups())
    zone = EXCHANGE_TIMEZONES[exchange]
    try:
        local = datetime(year, month, day, hour, tzinfo=zone)
    except ValueError:
        raise RowError(f"date {date!r} is not a calendar date (MM/DD/YYYY)") from None
    # zoneinfo maps a skipped wall time to an instant anyway (02:30 as 03:30). PEP 495: in the gap the
    # second reading (fold=1, the offset after the jump) comes out earlier; in a repeated hour, later.
    first = local.timestamp()
    if local.replace(fold=1).timestamp() < first:
        raise SkippedTime(f"{date} {hour:02}:00-{hour:02}:59 does not exist in {zone.key}")
    return round(first) * 1000


def exchange_timestamp_ms(date: str, hh: str, mm: str, ss: str, frac: str | None, exchange: str) -> int:
    """Epoch ms (UTC) of an exchange-local date and clock time given as digit strings."""
    hour, minute, second = int(hh), int(mm), int(ss)
    frac_part = f".{frac}" if frac else ""
    if hour > 23 or minute > 59 or second > 59:
        raise RowError(f"time '{hh}:{mm}:{ss}{frac_part}' is not a clock time (HH:MM:SS[.fff])")
    try:
        start = hour_start_ms(date, hour, exchange)
    except SkippedTime:
        raise RowError(
            f"local time {date} {hh}:{mm}:{ss}{frac_part} does not exist in {EXCHANGE_TIMEZONES[exchange].key} "
            "(the clocks skip that hour when daylight saving starts)"
        ) from None
    return start + minute * 60_000 + second * 1000 + _millis(frac)


def split_fields(text: str) -> list[str]:
    """Split one CSV line; standard quoting is honoured only when a quote is present."""
    if '"' not in text:
        return text.split(",")
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise RowError(f"malformed CSV quoting: {exc}") from None
    return rows[0] if rows else []


def checked_field(name: str, value: str) -> object:
    """Validate one field; return the value as it goes into the message."""
    if name in PRICE_FIELDS:
        if _PRICE_RE.match(value) is None:
            raise RowError(
                f"{name} {value!r} is not a plain non-negative decimal (at most 12 integer digits and 6 decimals)"
            )
        return value
    if name in INTEGER_FIELDS:
        if _INT_RE.match(value) is None:
            raise RowError(f"{name} {value!r} is not a non-negative integer")
        number = int(value)
        if number > INT64_MAX:
            raise RowError(f"{name} {value!r} is larger than a 64-bit integer")
        return number
    if name in TEXT_FIELDS:
        return value or None
    raise AssertionError(f"unknown field {name}")


def decode_line(line: bytes) -> str:
    """A line as text; raises RowError naming the first byte that is not UTF-8."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RowError(f"line is not valid UTF-8 (bad byte at position {exc.start})") from None


class RowParser:
    """Turns the raw lines of one file into JSON message values."""

    def __init__(self, kind: Kind, symbol: str, company_id: int, exchange: str = DEFAULT_EXCHANGE) -> None:
        self.kind = kind
        self.exchange = exchange
        self._fast = _FAST[kind]
        self._columns = COLUMNS[kind]
        self._base = {"symbol": symbol, "company_id": company_id, "exchange": exchange}
        self.head = orjson.dumps(self._base).decode()[:-1]  # '{"symbol":...,"exchange":"ASX"'
        self._minutes: dict[str, int] = {}  # "MM/DD/YYYY,HH:MM" -> epoch ms at the start of that minute
        self.key = f"{exchange}.{symbol}".encode()

    def parse(self, line: bytes, ingestion_ms: int) -> bytes:
        """One line (without its line ending) to a message value; raises RowError."""
        value = self.parse_line(decode_line(line), ingestion_ms)
        if value is None:
            raise RowError("the line is blank")
        return value

    def parse_line(self, text: str, ingestion_ms: int, line_no: int = 0) -> bytes | None:
        """A decoded line (a trailing CR allowed) to a message value, None if blank; raises RowError.

        `line_no` is the line's number in its file, for formats that carry it (Avro); JSON does not.
        """
        match = self._fast.match(text)
        if match is not None:
            return self._fast_value(text, match.groups(), ingestion_ms, line_no)
        if text.endswith("\r"):
            text = text[:-1]
        if not text.strip(BLANK):
            return None
        return self._checked_value(split_fields(text), ingestion_ms, line_no)

    def _fast_ms(self, text: str, g: tuple[Any, ...]) -> int:
        """Epoch ms of a row the fast pattern matched, with one time-zone lookup per minute."""
        date, hh, mm, ss, frac = g[0], g[1], g[2], g[3], g[4]
        minute = text[:16]  # "MM/DD/YYYY,HH:MM": the fast pattern fixes these positions
        minute_ms = self._minutes.get(minute)
        if minute_ms is None or ss > "59":
            ts = exchange_timestamp_ms(date, hh, mm, ss, frac, self.exchange)  # validates; raises naming the time
            self._minutes[minute] = ts - int(ss) * 1000 - _millis(frac)
            return ts
        # "SS" + "fff" read as one integer is the milliseconds within the minute
        return minute_ms + (int(ss + frac) if frac and len(frac) == 3 else int(ss) * 1000 + _millis(frac))

    def _fast_value(self, text: str, g: tuple[Any, ...], ingestion_ms: int, line_no: int) -> bytes:
        # Formatted by hand: every value here matched a strict pattern, and text fields go through
        # json_text. orjson would be as correct but keeps a buffer many times the value's size behind every small one.
        ts = self._fast_ms(text, g)
        if self.kind is Kind.TRADE:
            # The fast pattern allows at most 18 digits, so integers always fit 64 bits here.
            return (
                f'{self.head},"exchange_timestamp":{ts},"price":"{g[5]}","volume":{int(g[6])},'
                f'"qualifiers":{int(g[7])},"venue":{json_text(g[8])},"buyer_id":{json_text(g[9])},'
                f'"ingestion_timestamp":{ingestion_ms}}}'
            ).encode()
        return (
            f'{self.head},"exchange_timestamp":{ts},"bid_price":"{g[5]}","ask_price":"{g[6]}",'
            f'"bid_volume":{int(g[7])},"ask_volume":{int(g[8])},"ingestion_timestamp":{ingestion_ms}}}'
        ).encode()

    def _checked_value(self, fields: list[str], ingestion_ms: int, line_no: int) -> bytes:
        """The slow path: validate field by field and name the first problem."""
        ts, checked = self._checked_fields(fields)
        value: dict[str, object] = {**self._base, "exchange_timestamp": ts, **checked}
        value["ingestion_timestamp"] = ingestion_ms
        return orjson.dumps(value)

    def _checked_fields(self, fields: list[str]) -> tuple[int, dict[str, object]]:
        """Epoch ms and the checked fields after date and time, in column order; raises RowError."""
        expected = len(self._columns)
        if len(fields) != expected:
            raise RowError(
                f"expected {expected} fields for a {self.kind.value[:-1]} "
                f"({','.join(self._columns)}), got {len(fields)}"
            )
        date, clock = fields[0], fields[1]
        time_match = _TIME_RE.match(clock)
        if time_match is None:
            raise RowError(f"time {clock!r} is not HH:MM:SS[.fff]")
        hh, mm, ss, frac = time_match.groups()
        ts = exchange_timestamp_ms(date, hh, mm, ss, frac, self.exchange)
        checked = {name: self._check_field(name, raw) for name, raw in zip(self._columns[2:], fields[2:], strict=True)}
        return ts, checked

    def _check_field(self, name: str, value: str) -> object:
        return checked_field(name, value)
