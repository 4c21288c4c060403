"""Row parsing: exact values out, a reason naming the field for anything wrong; pure."""

from __future__ import annotations

import string

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from k2jobs.plan.model import Kind
from k2jobs.rows.json_rows import RowError, RowParser, split_fields

from .reference import expected_value, local_time_exists

TRADES = RowParser(Kind.TRADE, "BHP", 7078)
QUOTES = RowParser(Kind.QUOTE, "BHP", 7078)


def parsed(parser: RowParser, line: bytes) -> dict:  # type: ignore[type-arg]
    value = orjson.loads(parser.parse(line, 123))
    assert value.pop("ingestion_timestamp") == 123
    return value  # type: ignore[no-any-return]


def test_trade_from_the_readme_is_exact() -> None:
    assert parsed(TRADES, b"03/10/2014,07:57:14.754,36.667,20000,3,X,") == {
        "symbol": "BHP",
        "company_id": 7078,
        "exchange": "ASX",
        "exchange_timestamp": 1394398634754,
        "price": "36.667",
        "volume": 20000,
        "qualifiers": 3,
        "venue": "X",
        "buyer_id": None,
    }


def test_quote_columns_are_bid_ask_then_volumes() -> None:
    value = parsed(QUOTES, b"03/10/2014,11:43:39.407,36.49,36.51,6054,13194")
    assert (value["bid_price"], value["ask_price"]) == ("36.49", "36.51")
    assert (value["bid_volume"], value["ask_volume"]) == (6054, 13194)


def test_absent_quote_side_and_crossed_book_are_kept_as_given() -> None:
    value = parsed(QUOTES, b"03/10/2014,05:43:45.676,37.7,0.0,300,0")
    assert (value["bid_price"], value["ask_price"], value["ask_volume"]) == ("37.7", "0.0", 0)


def test_quoted_fields_give_the_same_message() -> None:
    assert parsed(TRADES, b'"03/10/2014","07:57:14.754","37.50","20000","3","X",""') == parsed(
        TRADES, b"03/10/2014,07:57:14.754,37.50,20000,3,X,"
    )


def test_quoted_venue_may_hold_a_comma() -> None:
    assert parsed(TRADES, b'03/10/2014,07:57:14.754,37.5,1,3,"X,Y",B1')["venue"] == "X,Y"


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("03/10/2014", "07:57:14.754", 1394398634754),  # daylight time, UTC+11
        ("04/07/2014", "10:00:00.000", 1396828800000),  # standard time after 6 April, UTC+10
        ("04/07/2014", "10:00:00", 1396828800000),  # seconds without fraction
        ("03/10/2014", "07:57:14.7", 1394398634700),  # one fractional digit is tenths
    ],
)
def test_sydney_time_is_daylight_saving_aware(date: str, time: str, expected: int) -> None:
    line = f"{date},{time},1,1,0,,".encode()
    assert parsed(TRADES, line)["exchange_timestamp"] == expected


# Sydney's daylight saving in 2014 ended at 03:00 AEDT on 6 April (clocks back to 02:00 AEST) and
# started at 02:00 AEST on 5 October (clocks forward to 03:00 AEDT).
@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("04/06/2014", "01:59:59.999", 1396709999999),  # AEDT, UTC+11
        ("04/06/2014", "02:00:00.000", 1396710000000),  # the repeated hour: its first (AEDT) occurrence
        ("04/06/2014", "02:30:00", 1396711800000),
        ("04/06/2014", "02:59:59.999", 1396713599999),
        ("04/06/2014", "03:00:00.000", 1396717200000),  # AEST, UTC+10: an hour of epoch later than 02:00 + 1h
        ("10/05/2014", "01:59:59.999", 1412438399999),  # AEST, UTC+10
        ("10/05/2014", "03:00:00.000", 1412438400000),  # AEDT, UTC+11: the next millisecond of real time
    ],
)
def test_daylight_saving_transitions_of_2014(date: str, time: str, expected: int) -> None:
    assert parsed(TRADES, f"{date},{time},1,1,0,,".encode())["exchange_timestamp"] == expected
    assert parsed(QUOTES, f"{date},{time},1,2,3,4".encode())["exchange_timestamp"] == expected


@pytest.mark.parametrize("time", ["02:00:00.000", "02:00:00", "02:30:00.000", "02:59:59.999", "02:59:59"])
def test_local_times_skipped_when_daylight_saving_starts_are_rejected(time: str) -> None:
    reason = f"local time 10/05/2014 {time} does not exist in Australia/Sydney"
    for parser, line in ((TRADES, f"10/05/2014,{time},1,1,0,,"), (QUOTES, f"10/05/2014,{time},1,2,3,4")):
        with pytest.raises(RowError) as caught:
            parser.parse(line.encode(), 0)
        assert str(caught.value).startswith(reason), caught.value
        with pytest.raises(RowError, match="does not exist"):  # the field-by-field path, too
            parser.parse(",".join(f'"{f}"' for f in line.split(",")).encode(), 0)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (b"03/10/2014,07:57:14.754,36.667,20000,3,X", "expected 7 fields"),
        (b"02/30/2014,07:57:14.754,36.667,1,3,,", "date '02/30/2014'"),
        (b"2014-03-10,07:57:14.754,36.667,1,3,,", "date '2014-03-10'"),
        (b"03/10/2014,24:00:00.000,36.667,1,3,,", "time '24:00:00.000'"),
        (b"03/10/2014,07:61:00,36.667,1,3,,", "time '07:61:00'"),
        (b"03/10/2014,07:57:14.7541,36.667,1,3,,", "time '07:57:14.7541'"),
        (b"03/10/2014,07:57:14.754,-1.5,1,3,,", "price '-1.5'"),
        (b"03/10/2014,07:57:14.754,1e5,1,3,,", "price '1e5'"),
        (b"03/10/2014,07:57:14.754,NaN,1,3,,", "price 'NaN'"),
        (b"03/10/2014,07:57:14.754,1.1234567,1,3,,", "price '1.1234567'"),
        (b"03/10/2014,07:57:14.754,1234567890123,1,3,,", "price '1234567890123'"),
        (b"03/10/2014,07:57:14.754,,1,3,,", "price ''"),
        (b"03/10/2014,07:57:14.754,1.5,1.5,3,,", "volume '1.5'"),
        (b"03/10/2014,07:57:14.754,1.5,1,-3,,", "qualifiers '-3'"),
        (b"03/10/2014,07:57:14.754,1.5,99999999999999999999,3,,", "volume '99999999999999999999'"),
        (b"03/10/2014,07:57:14.754,1.5,1,3,\xff,", "not valid UTF-8"),
        (b'03/10/2014,07:57:14.754,"1.5,1,3,,', "quoting"),
        # Digits are ASCII digits: other scripts' digits are not read as numbers or passed on as prices.
        ("03/10/2014,07:57:14.754,\u0663.5,1,3,,".encode(), "price '\u0663.5'"),
        ("03/10/2014,07:57:14.754,1.5,\u0663,3,,".encode(), "volume '\u0663'"),
        ("\u0660\u0663/10/2014,07:57:14.754,1.5,1,3,,".encode(), "date '\u0660\u0663/10/2014'"),
    ],
)
def test_invalid_trade_rows_are_rejected_naming_the_problem(line: bytes, field: str) -> None:
    with pytest.raises(RowError, match=None) as caught:
        TRADES.parse(line, 0)
    assert field in str(caught.value)


def test_invalid_quote_price_names_the_quote_field() -> None:
    with pytest.raises(RowError, match="ask_price 'x'"):
        QUOTES.parse(b"03/10/2014,11:43:39.407,36.49,x,6054,13194", 0)


def test_split_fields_without_quotes_is_a_plain_split() -> None:
    assert split_fields("a,,b") == ["a", "", "b"]


# -- properties ------------------------------------------------------------------------------------
@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_never_crash_the_parser(line: bytes) -> None:
    for parser in (TRADES, QUOTES):
        try:
            orjson.loads(parser.parse(line, 0))
        except RowError as exc:
            assert str(exc)


dates = st.dates(min_value=__import__("datetime").date(1990, 1, 1), max_value=__import__("datetime").date(2037, 12, 31))
times = st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
prices = st.builds(
    lambda i, f: f"{i}.{f}" if f else str(i),
    st.integers(0, 10**12 - 1),
    st.text(string.digits, max_size=6),
)
ints = st.integers(0, 2**63 - 1)
# Any text a venue or buyer id may hold unquoted: escapes, control characters, non-ASCII.
texts = st.text(st.characters(blacklist_characters=',"\r\n\x00', blacklist_categories=("Cs",)), max_size=8)


@settings(max_examples=300, deadline=None)
@given(dates, times, prices, ints, ints, texts, texts)
def test_generated_valid_trades_come_out_exactly(d, t, price, volume, qualifiers, venue, buyer) -> None:  # type: ignore[no-untyped-def]
    assume(local_time_exists(d, t[0]))
    line = f"{d:%m/%d/%Y},{t[0]:02}:{t[1]:02}:{t[2]:02}.{t[3]:03},{price},{volume},{qualifiers},{venue},{buyer}"
    assert parsed(TRADES, line.encode()) == expected_value("trades", 7078, line)


@settings(max_examples=300, deadline=None)
@given(dates, times, prices, prices, ints, ints)
def test_generated_valid_quotes_come_out_exactly(d, t, bid, ask, bid_volume, ask_volume) -> None:  # type: ignore[no-untyped-def]
    assume(local_time_exists(d, t[0]))
    line = f"{d:%m/%d/%Y},{t[0]:02}:{t[1]:02}:{t[2]:02}.{t[3]:03},{bid},{ask},{bid_volume},{ask_volume}"
    assert parsed(QUOTES, line.encode()) == expected_value("quotes", 7078, line)
