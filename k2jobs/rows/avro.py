"""The K2 platform's TradeV2 / QuoteV2 Avro records in Confluent's wire format, written directly; pure.

A value is byte 0, the 4-byte big-endian schema id, then the Avro binary body. The body is written
field by field in schema order (k2jobs/resources/*_v2.avsc), exactly as fastavro (confluent-kafka's
AvroSerializer) writes the same record: tests/test_avro.py compares the two byte for byte. The compiled
fast path (_fastrows.c) writes the same bytes from the constant pieces `AvroRowParser.compiled_parts()`
hands it.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from k2jobs.plan.model import Kind
from k2jobs.rows.json_rows import DEFAULT_EXCHANGE, PRICE_FIELDS, RowError, RowParser, checked_field

SCHEMA_FILES = {Kind.TRADE: "trade_v2.avsc", Kind.QUOTE: "quote_v2.avsc"}
SCALE = 8
MAX_UNSCALED = 10**18  # decimal(18, 8): at most 18 digits, 10 of them before the point
QUANTITY_FIELDS = frozenset({"volume", "bid_volume", "ask_volume"})
ASSET_CLASS_EQUITIES = 0  # index in the AssetClass enum
SIDE_UNKNOWN = 3  # index in the TradeSide enum
CURRENCY = "AUD"
_DECIMAL_RE = re.compile(r"(\d+)(?:\.(\d+))?\Z", re.ASCII)


def schema_text(kind: Kind) -> str:
    """The platform's Avro schema for a kind, as registered."""
    return (resources.files("k2jobs") / "resources" / SCHEMA_FILES[kind]).read_text()


def subject(kind: Kind) -> str:
    """The registry subject of a kind's values (Confluent's TopicNameStrategy)."""
    return f"{kind.topic}-value"


def wire_header(schema_id: int) -> bytes:
    """Confluent's wire-format prefix: magic byte 0 and the schema id, big-endian."""
    return b"\x00" + schema_id.to_bytes(4, "big")


def long_bytes(n: int) -> bytes:
    """An Avro long: zig-zag, then 7 bits per byte, low bits first."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def string_bytes(text: str) -> bytes:
    """An Avro string (or bytes): its length as a long, then its UTF-8 bytes."""
    raw = text.encode()
    return long_bytes(len(raw)) + raw


def decimal_bytes(unscaled: int) -> bytes:
    """An Avro bytes decimal: the unscaled value in big-endian two's complement, as few bytes as fastavro uses."""
    raw = unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)
    return long_bytes(len(raw)) + raw


def unscaled_decimal(name: str, text: str) -> int:
    """A plain decimal's value times 10^8, refused beyond decimal(18, 8); raises RowError."""
    match = _DECIMAL_RE.match(text)
    if match is None:
        raise RowError(f"{name} {text!r} is not a plain non-negative decimal")
    whole, frac = match.group(1), match.group(2) or ""
    if len(frac) > SCALE:
        raise RowError(f"{name} {text!r} has more than {SCALE} decimal places (Avro decimal(18,8))")
    unscaled = int(whole) * 10**SCALE + int(frac.ljust(SCALE, "0"))
    if unscaled >= MAX_UNSCALED:
        raise RowError(f"{name} {text!r} is beyond precision 18 (Avro decimal(18,8): at most 10 integer digits)")
    return unscaled


def unscaled_quantity(name: str, value: int) -> int:
    """A whole quantity times 10^8, refused beyond decimal(18, 8); raises RowError."""
    unscaled = value * 10**SCALE
    if unscaled >= MAX_UNSCALED:
        raise RowError(f"{name} {value} is beyond precision 18 (Avro decimal(18,8): at most 10 integer digits)")
    return unscaled


def message_id(source_prefix: str, line_no: int, timestamp_us: int) -> str:
    """`<path>:<line>:<exchange time µs>`: the row's `source` header and its time; the same on every reload.

    The path is relative to the submitted directory (`trades/7078.csv`), so the same row of the same file
    keeps its id wherever the data set is copied; the exchange time tells apart files of different days
    that share a path and line number.
    """
    return f"{source_prefix}{line_no}:{timestamp_us}"


def _entry(key: str, value: str) -> bytes:
    return string_bytes(key) + string_bytes(value)


class AvroRowParser(RowParser):
    """Turns the raw lines of one file into TradeV2 / QuoteV2 values in Confluent's wire format.

    Validation is RowParser's, except that prices follow decimal(18, 8) (up to 8 decimal places and
    precision 18) and quantities must fit it. `ingestion` arguments are microseconds here.
    """

    def __init__(
        self,
        kind: Kind,
        symbol: str,
        company_id: int,
        source_prefix: str,
        schema_id: int,
        exchange: str = DEFAULT_EXCHANGE,
    ) -> None:
        super().__init__(kind, symbol, company_id, exchange)
        self._source = source_prefix  # "trades/7078.csv:"
        self._header = wire_header(schema_id)
        self._mid = string_bytes(symbol) + string_bytes(exchange) + long_bytes(ASSET_CLASS_EQUITIES)
        self._after_quantities = string_bytes(CURRENCY)
        if kind is Kind.TRADE:
            self._after_quantities += long_bytes(SIDE_UNKNOWN)
        self._company = _entry("company_id", str(company_id))

    def compiled_parts(self) -> tuple[bytes, bytes, bytes, bytes]:
        """The constant pieces of every value, for the compiled fast path."""
        return self._header, self._mid, self._after_quantities, self._company

    def _fast_value(self, text: str, g: tuple[Any, ...], ingestion_us: int, line_no: int) -> bytes:
        ts_us = self._fast_ms(text, g) * 1000
        if self.kind is Kind.TRADE:
            fields = {"price": g[5], "volume": int(g[6]), "qualifiers": int(g[7]), "venue": g[8], "buyer_id": g[9]}
        else:
            fields = {"bid_price": g[5], "ask_price": g[6], "bid_volume": int(g[7]), "ask_volume": int(g[8])}
        scaled = {name: self._scaled(name, value) for name, value in fields.items()}
        return self._record(ts_us, scaled, ingestion_us, line_no)

    def _checked_value(self, fields: list[str], ingestion_us: int, line_no: int) -> bytes:
        ts_ms, checked = self._checked_fields(fields)
        return self._record(ts_ms * 1000, checked, ingestion_us, line_no)

    def _check_field(self, name: str, value: str) -> object:
        if name in PRICE_FIELDS:
            return unscaled_decimal(name, value)
        return self._scaled(name, checked_field(name, value))

    @staticmethod
    def _scaled(name: str, value: Any) -> Any:
        """Prices and quantities as unscaled decimal(18, 8) integers; other fields as they are."""
        if name in PRICE_FIELDS:
            return value if isinstance(value, int) else unscaled_decimal(name, value)
        if name in QUANTITY_FIELDS:
            return unscaled_quantity(name, value)
        return value

    def _record(self, ts_us: int, f: dict[str, Any], ingestion_us: int, line_no: int) -> bytes:
        """The value: wire header and the record's fields in schema order."""
        row_id = string_bytes(message_id(self._source, line_no, ts_us))
        parts = [self._header, row_id, row_id, self._mid, long_bytes(ts_us)]
        vendor = [self._company]
        if self.kind is Kind.TRADE:
            qualifiers = string_bytes(str(f["qualifiers"]))
            parts += [decimal_bytes(f["price"]), decimal_bytes(f["volume"]), self._after_quantities]
            parts += [b"\x02", qualifiers, b"\x00"]  # trade_conditions: one block of one item, then the end
            vendor.append(string_bytes("qualifiers") + qualifiers)
            vendor += [_entry(name, f[name]) for name in ("venue", "buyer_id") if f[name]]
        else:
            parts += [decimal_bytes(f[name]) for name in ("bid_price", "bid_volume", "ask_price", "ask_volume")]
            parts.append(self._after_quantities)
        parts += [b"\x00", long_bytes(ingestion_us)]  # source_sequence: null (union branch 0)
        parts += [b"\x02", long_bytes(line_no)]  # platform_sequence: union branch 1, the line number
        parts += [b"\x02", long_bytes(len(vendor)), *vendor, b"\x00"]  # vendor_data: union branch 1, one map block
        return b"".join(parts)
