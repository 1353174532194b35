"""Strict reading of the CSV files a user hands in (prepare's manifests, the labeled-dataset format).

``csv.DictReader`` alone turns a broken file into something else: a duplicated header column
silently keeps the second value, a short row gives ``None`` fields (here: an error when a required
column is among them, else empty values), a long row an unnamed extra that is dropped,
a UTF-8 byte-order mark (Excel's "CSV UTF-8") renames the first column to ``\\ufeffpath``, and a
field over 128 KB or a NUL byte is a bare ``csv.Error`` that names no file. Here the BOM is
accepted and every other case is one :class:`CsvFileError` line naming the file and the line.
"""

import csv
import itertools

from keras_music_ssl.errors import KmsslError


class CsvFileError(KmsslError, ValueError):
    """A CSV file that cannot be read as its format says; the message is ``FILE:LINE: why``."""


def read_rows(path, required=(), delimiter=",", errors="strict"):
    """``(line, row dict)`` for each record of the CSV file ``path`` after its header, lazily.

    ``line`` is the record's first line number (for messages). ``required``: columns the
    header must have. ``errors="surrogateescape"`` reads bytes that are not UTF-8 as the OS
    does file names (a manifest listing such names); with ``"strict"`` they are an error.
    """
    with open(path, newline="", encoding="utf-8-sig", errors=errors) as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = _next(reader, path)
        if header is None:
            raise CsvFileError(f"{path}:1: empty file, expected a header line with {list(required)}")
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise CsvFileError(f"{path}:1: column(s) {duplicated} appear more than once in the header")
        missing = [name for name in required if name not in header]
        if missing:
            raise CsvFileError(f"{path}:1: missing column(s) {missing} (the header has {header})")
        while True:
            line = reader.line_num + 1
            fields = _next(reader, path)
            if fields is None:
                return
            if not fields:  # a blank line
                continue
            lacking = [name for name in header[len(fields):] if name in required]
            if len(fields) > len(header) or lacking:
                what = f"no {lacking} value, " if lacking and len(fields) < len(header) else ""
                raise CsvFileError(f"{path}:{line}: {what}{len(fields)} field(s), the header has {len(header)} "
                                   "(a missing or extra separator, or an unclosed quote?)")
            # Trailing optional fields left off (as some writers do) are empty, as csv reads ",,".
            yield line, dict(itertools.zip_longest(header, fields, fillvalue=""))


def _next(reader, path):
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as error:  # a field over csv.field_size_limit() (128 KB), a NUL byte, ...
        raise CsvFileError(f"{path}:{reader.line_num}: {error}") from None
    except UnicodeDecodeError:  # decoded a block ahead of the reader: find the line itself
        raise CsvFileError(f"{path}:{_first_non_utf8_line(path)}: not UTF-8 text") from None


def _first_non_utf8_line(path):
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return "?"
