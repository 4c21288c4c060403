"""CRC-32 arithmetic: the CRC of two byte runs joined, from their CRCs alone (GF(2) matrices); pure."""

from __future__ import annotations


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector, row = vector >> 1, row + 1
    return total


def _zeros_operators() -> list[list[int]]:
    """CRC-32 operators appending 2**n zero bytes, n = 0..63 (zlib's crc32_combine, precomputed)."""
    one_bit = [0xEDB88320] + [1 << n for n in range(31)]
    operator = one_bit
    for _ in range(3):  # 1 bit -> 8 bits: one zero byte
        operator = [_gf2_times(operator, operator[n]) for n in range(32)]
    operators = [operator]
    for _ in range(63):
        operator = [_gf2_times(operator, operator[n]) for n in range(32)]
        operators.append(operator)
    return operators


_ZEROS: list[list[int]] = []


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib.crc32(a + b) from crc32(a), crc32(b) and len(b): a file's checksum from its chunks', read once.

    Python's zlib does not expose zlib's crc32_combine; this is the same algorithm.
    """
    if not _ZEROS:
        _ZEROS.extend(_zeros_operators())
    power = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(_ZEROS[power], crc1)
        len2, power = len2 >> 1, power + 1
    return crc1 ^ crc2
