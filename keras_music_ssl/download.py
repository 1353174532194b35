"""One file over HTTP(S), resumable and checked: the authors' ``weights.zip`` and other releases.

:func:`download` streams ``url`` into ``.NAME.download`` beside the target, with a progress bar.
An interrupted transfer (a kill, a dropped connection) leaves that file; the next call asks the
server for the rest (an HTTP ``Range`` request) and appends it, or starts over when the server
ignores ranges. Only a complete file, of the announced size (and of ``sha256`` when one is
given), is renamed onto the target. Two processes asking for one file: the second waits for the
first. ``urllib`` from the standard library does the HTTP; ``file://`` URLs work too
(air-gapped copies).
"""

import hashlib
import http.client
import os
import pathlib
import socket
import sys
import urllib.error
import urllib.request

from keras_music_ssl import storage
from keras_music_ssl.errors import KmsslError

CHUNK = 1 << 20


class DownloadError(KmsslError):
    """A download that could not complete (offline, refused, cut short, damaged)."""


def partial_download(target):
    """Where ``target`` is written while it downloads (a stable name: the next call resumes it)."""
    target = pathlib.Path(target)
    return target.with_name(f".{target.name}.download")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url, offset, timeout):
    """``(response, offset)``: the response and where its body starts in the file (0 when the
    server ignored the range)."""
    headers = {"User-Agent": "keras-music-ssl", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the range starts at or past the end: start over
            return _open(url, 0, timeout)
        raise DownloadError(f"{url}: the server answered HTTP {error.code} ({error.reason})") from None
    except (urllib.error.URLError, OSError, ValueError) as error:  # offline, refused, DNS, bad URL
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"{url}: cannot connect ({reason})") from None
    if offset and getattr(response, "status", None) != 206:
        return response, 0
    return response, offset


def _total(response, offset):
    """The full size of the file, when the server says it (``Content-Range`` or ``Content-Length``)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def download(url, target, sha256=None, progress=True, timeout=60.0, what=None):
    """Download ``url`` to ``target`` (a file path) and return it; a ``target`` that exists is
    returned as it is. Raises :class:`DownloadError` in one line; a transfer cut short is kept
    and resumed by the next call."""
    from keras_music_ssl.progress import bar as progress_bar

    target = pathlib.Path(target)
    partial = partial_download(target)
    with storage.locked(target, folder=False, wait=True):
        if target.exists():
            return target
        offset = partial.stat().st_size if partial.exists() else 0
        response, offset = _open(url, offset, timeout)
        total = _total(response, offset)
        storage.require_space(target.parent, (total or 0) - offset)
        bar = progress_bar(total=total, initial=offset, unit="B", unit_scale=True, desc=what or target.name,
                           enabled=progress, summary=False, file=sys.stderr)
        try:
            with response, open(partial, "ab" if offset else "wb") as f:
                while block := response.read(CHUNK):
                    f.write(block)
                    bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
        except (http.client.HTTPException, socket.timeout, ConnectionError, urllib.error.URLError) as error:
            raise DownloadError(f"{url}: the transfer was cut short ({type(error).__name__}) after "
                                f"{partial.stat().st_size / 2**20:.1f} MB; run again to resume it") from None
        finally:
            bar.close()
        size = partial.stat().st_size
        if total is not None and size != total:
            if size > total:  # not the file we were resuming: start afresh next time
                partial.unlink()
            raise DownloadError(f"{url}: got {size} of {total} bytes; run again to resume the transfer")
        if sha256 is not None and sha256_of(partial) != sha256:
            partial.unlink()
            raise DownloadError(f"{url}: the file's SHA-256 is not the expected {sha256[:12]}...; "
                                "removed it (a damaged mirror or transfer?)")
        os.replace(partial, target)
    return target
