"""A folder of decoded tracks, so that an audio folder is decoded once, not on every pass.

Training straight from compressed audio decodes and resamples every track each time the stream
passes over it (on 2 cores about 30-45 views/s, half of what a training step of the paper's
encoder consumes). :class:`AudioCache` keeps what :func:`load_audio` returned as one ``.npy``
per file (float32, 16 kHz mono: about 230 MB per hour of audio) and a small ``.json`` for a file
that could not be used, so that later passes read the array (hundreds of views/s) and skip bad
files at once, with the same reason. The arrays are the decoded ones bit for bit, so a pipeline
gives the same batches with or without the cache.

The key is the file's absolute path, size and modification time and the decoding settings: an
edited or replaced file is decoded again. Entries are written to a temporary name and renamed,
so a run killed mid-write leaves no half entry; an unreadable entry is decoded again. A full disk
turns the cache off with one warning; training goes on decoding.
"""

import hashlib
import json
import logging
import os
import threading

import numpy as np

from keras_music_ssl import storage
from keras_music_ssl.data.audio import MAX_DURATION, SAMPLE_RATE, AudioError, load_audio

log = logging.getLogger(__name__)

FORMAT = 1  # bump when load_audio's output changes, so old entries are not reused


class AudioCache:
    """``load(path)``: :func:`load_audio` (mono, peak-normalised), through a cache folder."""

    def __init__(self, folder, sample_rate=SAMPLE_RATE, max_duration=MAX_DURATION, min_duration=0.0):
        self.folder = os.fspath(folder)
        self.settings = (int(sample_rate), max_duration, float(min_duration))
        os.makedirs(self.folder, exist_ok=True)
        self.hits = self.misses = 0
        self._writable = True
        self._lock = threading.Lock()

    def _key(self, path):
        try:
            stat = os.stat(path)
        except OSError:
            return None  # missing: load_audio says so, and nothing is cached
        identity = [os.path.abspath(path), stat.st_size, stat.st_mtime_ns, *self.settings, FORMAT]
        return os.path.join(self.folder, hashlib.sha1(json.dumps(identity).encode()).hexdigest())

    def load(self, path):
        path = os.fspath(path)
        key = self._key(path)
        if key is not None:
            cached = self._read(key, path)
            if cached is not None:
                with self._lock:
                    self.hits += 1
                return cached
        with self._lock:
            self.misses += 1
        sample_rate, max_duration, min_duration = self.settings
        try:
            audio = load_audio(path, sample_rate, mono=True, normalize=True, max_duration=max_duration,
                               min_duration=min_duration)
        except AudioError as error:
            if key is not None and error.reason != "missing":
                failure = json.dumps({"path": path, "reason": error.reason, "detail": error.detail}).encode()
                self._write(key + ".json", lambda f: f.write(failure))
            raise
        if key is not None:
            self._write(key + ".npy", lambda f: np.save(f, audio))
        return audio

    def _read(self, key, path):
        try:
            if os.path.exists(key + ".npy"):
                return np.load(key + ".npy")
            if os.path.exists(key + ".json"):
                with open(key + ".json") as f:
                    failure = json.load(f)
                raise AudioError(path, failure["reason"], failure["detail"])
        except AudioError:
            raise
        except (OSError, ValueError, KeyError) as error:  # a damaged entry: decode again
            log.warning("audio cache: unreadable entry for %s (%s); decoding again", path, error)
        return None

    def _write(self, target, write):
        if not self._writable:
            return
        try:
            with storage.atomic_write(target, "wb") as f:
                write(f)
        except OSError as error:
            with self._lock:
                if self._writable:
                    log.warning("audio cache %s: cannot write (%s); decoding without the cache", self.folder, error)
                self._writable = False
