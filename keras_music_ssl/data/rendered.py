"""The offline labeled dataset: real scores rendered with a General MIDI SoundFont, no network.

The music is the score corpus shipped inside ``music21`` (Bach chorales, Palestrina masses,
Irish and Scottish fiddle tunes, trecento pieces, Haydn/Mozart/Beethoven quartets, Essen folk
songs, ...); the sound is pretty_midi's ``TimGM6mb.sf2`` SoundFont played by ``tinysoundfont``.
Every clip is re-orchestrated at random, so its tags are known exactly:

- ``tags``: the instrument families that actually sound in the clip (see :data:`FAMILIES`)
  plus ``drums`` when a GM drum kit plays the score's beat grid;
- ``style``: the corpus folder the work came from (``bach``, ``oneills1850``, ...);
- ``tempo``: ``slow``, ``moderate`` or ``fast``: the rendered quarter notes per minute (``qpm``,
  the score's mark, 120 where it has none, times the clip's tempo factor) below 108, below 135,
  or above. Exact for the rendering; the beat a listener taps may be another note value.

These three are the dataset's tasks (``tasks.json``): ``instruments`` (multi-label, the ``tags``
column), ``style`` and ``tempo`` (single-label). Key and mode are not labelled: music21 only
estimates them.

Build:

1. per work (cached, seed-independent): parse the score, keep its first :data:`BARS` bars (whole
   quartets take minutes otherwise; bars by index, as Palestrina's numbers do not run 1..n),
   collect the notes of each part with ties merged, the tempo mark (120 qpm if none) and the
   beat grid; cached as JSON in ``cache_dir``;
2. per clip (seeded by ``(seed, work, clip number)``, so independent of the worker count): a
   tempo factor of 0.8/1.0/1.25, a window starting on a note onset, an instrument family and GM
   program per part, optionally a drum kit; the clip is written as MIDI (``midi/``) and rendered
   at 16 kHz mono with a fresh synthesizer (a reused one leaks channel state between clips),
   peak-normalised to 0.9, saved as 16-bit FLAC (``audio/``).

Splits are by work (no piece in two splits), about 80/10/10 within each style. The output is
the generic labeled format of ``data/labeled_csv.py`` (``metadata.csv`` + ``tags.txt``) with
extra columns ``instruments`` (family:program per part), ``tempo_factor``, ``qpm``, ``start`` (seconds
into the work's first bars) and ``source`` (corpus path#number).

These are real compositions played by sampled instruments: enough to pretrain and probe for
real and tell methods apart, but not a substitute for the paper's datasets. Licence: the
music21 corpus notes say the Essen folk songs were given for non-commercial use (only the
``full`` size uses them); the other corpora are public-domain scores.
"""

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil

import numpy as np

from keras_music_ssl.data.audio import SAMPLE_RATE  # the track contract's rate
from keras_music_ssl.data.labeled_csv import SPLITS, write_labeled_dataset
from keras_music_ssl.data.parallel import default_workers, ordered_map

BARS = 32
STAGE1_VERSION = 1
TEMPO_FACTORS = (0.8, 1.0, 1.25)
TEMPO_CLASSES = (("slow", 108.0), ("moderate", 135.0), ("fast", float("inf")))  # class, qpm below
DRUM_PROBABILITY = 0.35
MAX_PARTS = 15  # MIDI channels 0-15 minus the drum channel 9

# Instrument family -> GM programs (0-based). Each family sits inside GM's own instrument
# classes (pretty_midi.program_to_instrument_class), which the tests use as the reference.
FAMILIES = {
    "piano": (0, 1, 2, 4),  # acoustic/bright/electric grand, electric piano
    "mallet": (8, 11, 12, 13),  # celesta, vibraphone, marimba, xylophone
    "organ": (16, 17, 19),  # drawbar, percussive, church organ
    "guitar": (24, 25, 26, 27),  # nylon, steel, jazz, clean electric
    "bass": (32, 33, 35),  # acoustic, finger, fretless bass
    "strings": (40, 41, 42, 48, 49),  # violin, viola, cello, string ensembles
    "voice": (52, 53),  # choir aahs, voice oohs
    "brass": (56, 57, 60, 61),  # trumpet, trombone, french horn, brass section
    "woodwind": (65, 68, 71, 73),  # alto sax, oboe, clarinet, flute
    "synth": (80, 81, 88, 89),  # square/saw lead, new age/warm pad
}
TAGS = tuple(FAMILIES) + ("drums",)
KICK, SNARE, HIHAT = 36, 38, 42

SIZES = {
    "tiny": dict(styles=("bach", "oneills1850", "ryansMammoth"), works_per_style=4, clips_per_work=2,
                 clip_seconds=8.0),
    "small": dict(styles=("bach", "palestrina", "trecento", "oneills1850", "ryansMammoth", "airdsAirs"),
                  works_per_style=30, clips_per_work=3, clip_seconds=10.0),
    # the quickstart's: the small set's styles, with a test split (~140 clips) large enough for a
    # bootstrap interval of about +-0.03 ROC-AUC
    "medium": dict(styles=("bach", "palestrina", "trecento", "oneills1850", "ryansMammoth", "airdsAirs"),
                   works_per_style=80, clips_per_work=3, clip_seconds=10.0),
    "full": dict(styles=("bach", "palestrina", "monteverdi", "trecento", "haydn", "mozart", "beethoven",
                         "essenFolksong", "oneills1850", "ryansMammoth", "airdsAirs"),
                 works_per_style=300, clips_per_work=4, clip_seconds=10.0),
}
# The corpus extensions that are scores (.rntxt files are harmonic analyses), in order of preference.
SCORE_EXTENSIONS = (".mxl", ".xml", ".musicxml", ".krn", ".abc")
# What this module needs beyond the core dependencies: the [data] extra and tinysoundfont, which
# pyproject.toml cannot list (its metadata requires pyaudio); bootstrap.py installs all three.
PACKAGES = ("music21", "pretty_midi", "tinysoundfont")


def require_packages():
    """Raise a one-line ImportError naming the missing :data:`PACKAGES`, if any."""
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"the rendered dataset needs {', '.join(missing)} (not installed): in the repository, "
            "`python3 bootstrap.py quickstart` (or `install`) sets up a venv with all of it; by hand, "
            "pip install 'keras-music-ssl[data]' for music21 and pretty_midi, and tinysoundfont as bootstrap.py "
            "does (its pyaudio requirement is for playback only)", name=missing[0]) from None


def soundfont_path():
    """pretty_midi's bundled General MIDI SoundFont (TimGM6mb.sf2)."""
    import pretty_midi

    return os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")


def _stable_int(text):
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:4], "little")


def _slug(text):
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


@dataclasses.dataclass(frozen=True)
class Work:
    style: str
    source: str  # corpus path, e.g. "oneills1850/0001-0050.abc"
    number: str  # the piece inside a collection file, "" if none

    @property
    def id(self):
        return _slug(os.path.splitext(self.source)[0] + (f"-{self.number}" if self.number else ""))


@functools.lru_cache(maxsize=None)
def list_works(styles):
    """Scores of the given corpus folders (a tuple), from music21's metadata bundle, sorted, deduplicated."""
    try:
        from music21 import corpus
    except ImportError:
        require_packages()
        raise

    best = {}
    # bundle[:] takes one list; iterating the bundle itself goes through __getitem__ one index at a
    # time, which rebuilds that list for every entry (3 minutes for the 15k entries).
    for entry in corpus.corpora.CoreCorpus().metadataBundle[:]:
        source = str(entry.sourcePath)
        style, ext = source.split("/", 1)[0], os.path.splitext(source)[1].lower()
        if style not in styles or ext not in SCORE_EXTENSIONS:
            continue
        number = "" if entry.number is None else str(entry.number)
        key = (os.path.splitext(source)[0], number)  # one encoding per piece (beethoven: .krn and .mxl)
        rank = SCORE_EXTENSIONS.index(ext)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, Work(style, source, number))
    # A collection file (e.g. an ABC book) also has an entry of its own, without a number: parsing
    # it parses every tune in it (40 s for an Aird book). Keep its numbered pieces only.
    collections = {w.source for _, w in best.values() if w.number}
    works = [w for _, w in best.values() if w.number or w.source not in collections]
    return tuple(sorted(works, key=lambda w: (w.style, w.source, w.number.zfill(6))))


# --- stage 1: score -> note lists (cached) ------------------------------------------------------

def _ties(element):
    from music21 import chord

    if isinstance(element, chord.Chord):
        return [(p.midi, getattr(n.tie or element.tie, "type", None)) for p, n in zip(element.pitches, element.notes)]
    return [(element.pitch.midi, getattr(element.tie, "type", None))]


def _part_notes(part, bars):
    """[(start, end, pitch)] in quarter notes from the part's first ``bars`` measures, ties merged."""
    from music21 import chord, note, stream

    notes, open_ties = [], {}
    for measure in list(part.getElementsByClass(stream.Measure))[:bars]:
        for element in measure.flatten().notes:
            if not isinstance(element, (note.Note, chord.Chord)) or element.quarterLength <= 0:
                continue
            start = float(measure.offset) + float(element.offset)
            end = start + float(element.quarterLength)
            for pitch, tie in _ties(element):
                if tie in ("continue", "stop") and pitch in open_ties:
                    open_ties[pitch][1] = end
                    if tie == "stop":
                        del open_ties[pitch]
                    continue
                event = [start, end, min(max(pitch, 0), 127)]
                notes.append(event)
                if tie == "start":
                    open_ties[pitch] = event
    return sorted(notes)


def score_notes(work, bars=BARS):
    """Stage 1: the first ``bars`` bars of a work as plain data (dict), or None if unusable."""
    from music21 import corpus, meter, stream, tempo

    score = corpus.parse(work.source, number=int(work.number) if work.number else None)
    if isinstance(score, stream.Opus):
        score = score.scores[0]
    parts = list(score.parts) or [score]
    measures = list(parts[0].getElementsByClass(stream.Measure))
    if not measures:
        return None
    mark = next(iter(score.recurse().getElementsByClass(tempo.MetronomeMark)), None)
    qpm = (mark.getQuarterBPM() if mark is not None else None) or 120.0
    signature = next(iter(score.recurse().getElementsByClass(meter.TimeSignature)), None)
    beat = float(signature.beatDuration.quarterLength) if signature is not None else 1.0
    beats_per_bar = int(signature.beatCount) if signature is not None else 4
    part_notes = [_part_notes(p, bars) for p in parts[:MAX_PARTS]]
    part_notes = [n for n in part_notes if n]
    if not part_notes:
        return None
    return {"work": work.id, "style": work.style, "source": work.source, "number": work.number,
            "qpm": float(min(max(qpm, 40.0), 240.0)), "beat": beat, "beats_per_bar": beats_per_bar,
            "bars": [float(m.offset) for m in measures[:bars]],
            "end": max(n[1] for notes in part_notes for n in notes), "parts": part_notes}


def _stage1(work, cache_dir, bars=BARS):
    """Cached :func:`score_notes`: the JSON file is the only stage-1 output stage 2 reads."""
    path = os.path.join(cache_dir, f"{work.id}.json")
    if not os.path.exists(path):
        try:
            notes = score_notes(work, bars)
        except Exception as error:  # a score music21 cannot parse is dropped, and counted
            notes = {"error": f"{type(error).__name__}: {error}"}
        from keras_music_ssl import storage

        storage.write_text(path, json.dumps(notes if notes is not None else {"error": "no notes"}))
    with open(path) as f:
        return json.load(f)


# --- stage 2: one clip ---------------------------------------------------------------------------

def _clip_midi(score, rng, clip_seconds):
    """Choose tempo, window, instruments and drums for one clip: (pretty_midi.PrettyMIDI, info)."""
    import pretty_midi

    factor = float(rng.choice(TEMPO_FACTORS))
    seconds_per_quarter = 60.0 / score["qpm"] / factor
    onsets = sorted({n[0] for part in score["parts"] for n in part})
    end = score["end"] * seconds_per_quarter
    fits = [q * seconds_per_quarter for q in onsets if q * seconds_per_quarter + clip_seconds <= end]
    start = float(rng.choice(fits)) if fits else 0.0
    stop = start + clip_seconds
    midi = pretty_midi.PrettyMIDI(initial_tempo=score["qpm"] * factor)
    instruments = []
    for part in score["parts"]:
        family = str(rng.choice(list(FAMILIES)))
        program = int(rng.choice(FAMILIES[family]))
        velocity = int(rng.integers(64, 101))
        inst = pretty_midi.Instrument(program=program, name=family)
        for q_start, q_end, pitch in part:
            t0, t1 = q_start * seconds_per_quarter, q_end * seconds_per_quarter
            if t0 < stop and t1 > start:
                inst.notes.append(pretty_midi.Note(velocity, int(pitch), max(t0, start) - start, min(t1, stop) - start))
        if inst.notes:
            midi.instruments.append(inst)
            instruments.append(f"{family}:{program}")
    if rng.random() < DRUM_PROBABILITY:
        kit = pretty_midi.Instrument(program=0, is_drum=True, name="drums")
        beat = score["beat"] * seconds_per_quarter
        for bar in score["bars"]:
            for b in range(score["beats_per_bar"]):
                for sub in (0.0, 0.5):
                    t = bar * seconds_per_quarter + (b + sub) * beat
                    if start <= t < stop:
                        t -= start
                        kit.notes.append(pretty_midi.Note(60, HIHAT, t, min(t + 0.1, clip_seconds)))
                        if sub == 0.0 and (b == 0 or b == score["beats_per_bar"] // 2):
                            kit.notes.append(pretty_midi.Note(100, KICK, t, min(t + 0.2, clip_seconds)))
                        elif sub == 0.0 and b % 2 == 1:
                            kit.notes.append(pretty_midi.Note(90, SNARE, t, min(t + 0.2, clip_seconds)))
        if kit.notes:
            midi.instruments.append(kit)
            instruments.append("drums:0")
    return midi, {"tempo_factor": factor, "start": round(start, 4), "instruments": ";".join(instruments)}


def tempo_class(qpm):
    qpm = round(float(qpm), 2)  # MIDI stores microseconds per quarter: 135 may read back as 134.99999
    return next(name for name, below in TEMPO_CLASSES if qpm < below)


def tasks(styles):
    """The ``tasks.json`` of a build over ``styles``."""
    return {"instruments": {"column": "tags", "type": "multi-label"},
            "style": {"column": "style", "type": "single-label", "classes": list(styles)},
            "tempo": {"column": "tempo", "type": "single-label", "classes": [name for name, _ in TEMPO_CLASSES]}}


def add_tasks(root, styles):
    """Give a build made before ``tasks.json`` existed its ``qpm`` / ``tempo`` columns (read from its
    MIDI files) and tasks; returns the :class:`LabeledDataset`."""
    import pretty_midi

    from keras_music_ssl.data.labeled_csv import read_labeled_dataset

    dataset = read_labeled_dataset(root)
    rows = []
    for row in dataset.rows:
        if not row.get("qpm"):
            qpm = float(pretty_midi.PrettyMIDI(os.path.join(root, row["midi"])).get_tempo_changes()[1][0])
            row = {**row, "qpm": f"{qpm:.2f}", "tempo": tempo_class(qpm)}
        rows.append(row)
    return write_labeled_dataset(root, rows, dataset.tags, tasks(styles))


def clip_tags(midi):
    """The tags of a clip: the family of every instrument that plays a note, plus ``drums``."""
    return sorted({inst.name for inst in midi.instruments if inst.notes}, key=TAGS.index)


def render(midi, seconds, sample_rate=SAMPLE_RATE, soundfont=None):
    """pretty_midi object -> mono float32 ``(seconds * sample_rate,)``, with a fresh synthesizer."""
    try:
        import tinysoundfont
    except ImportError:
        require_packages()
        raise

    synth = tinysoundfont.Synth(samplerate=sample_rate)
    sfid = synth.sfload(soundfont or soundfont_path())
    events = []
    melodic = [c for c in range(16) if c != 9]
    for i, inst in enumerate(midi.instruments):
        channel = 9 if inst.is_drum else melodic[i % len(melodic)]
        synth.program_select(channel, sfid, 128 if inst.is_drum else 0, inst.program, is_drums=inst.is_drum)
        for n in inst.notes:
            if round(n.end * sample_rate) <= round(n.start * sample_rate):
                continue  # a note-off in the same sample as its note-on would leave it ringing
            events.append((round(n.start * sample_rate), 1, channel, n.pitch, n.velocity))
            events.append((round(n.end * sample_rate), 0, channel, n.pitch, 0))
    total = int(round(seconds * sample_rate))
    out, done = [], 0
    for sample, is_on, channel, pitch, velocity in sorted(events):  # note-offs before note-ons
        sample = min(sample, total)
        if sample > done:
            out.append(np.frombuffer(synth.generate_simple(sample - done), np.float32))
            done = sample
        if is_on:
            synth.noteon(channel, pitch, velocity)
        else:
            synth.noteoff(channel, pitch)
    if total > done:
        out.append(np.frombuffer(synth.generate_simple(total - done), np.float32))
    stereo = np.concatenate(out).reshape(-1, 2)
    return stereo.mean(axis=1).astype(np.float32)


def _stage2(job, out, cache_dir, clip_seconds, seed):
    """Render one clip (picklable): returns its metadata row, or None if it came out silent."""
    import soundfile as sf

    work, clip_no, split = job
    score = _stage1(work, cache_dir)
    rng = np.random.default_rng([seed, _stable_int(work.id), clip_no])
    midi, info = _clip_midi(score, rng, clip_seconds)
    audio = render(midi, clip_seconds)
    peak = float(np.max(np.abs(audio)))
    if peak < 1e-4:
        return None
    name = f"{work.id}-{clip_no}"
    audio_path = os.path.join("audio", work.style, f"{name}.flac")
    midi_path = os.path.join("midi", work.style, f"{name}.mid")
    for path in (audio_path, midi_path):
        os.makedirs(os.path.join(out, os.path.dirname(path)), exist_ok=True)
    sf.write(os.path.join(out, audio_path), 0.9 * audio / peak, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    midi.write(os.path.join(out, midi_path))
    source = work.source + (f"#{work.number}" if work.number else "")
    qpm = score["qpm"] * info["tempo_factor"]
    return {"path": audio_path, "split": split, "tags": ";".join(clip_tags(midi)), "style": work.style,
            "qpm": f"{qpm:.2f}", "tempo": tempo_class(qpm),
            "work": work.id, "duration": f"{clip_seconds:g}", "midi": midi_path, "source": source, **info}


# --- the builder ---------------------------------------------------------------------------------

def _split_works(works, seed):
    """Per style: shuffle the works, then about 10 % valid, 10 % test (>= 1 each from 3 works), rest train."""
    splits = {}
    for style in sorted({w.style for w in works}):
        group = [w for w in works if w.style == style]
        order = np.random.default_rng([seed, _stable_int("split:" + style)]).permutation(len(group))
        held = max(1, round(0.1 * len(group))) if len(group) >= 3 else 0
        for rank, i in enumerate(order):
            splits[group[i]] = "test" if rank < held else "valid" if rank < 2 * held else "train"
    return splits


def _long_enough(score, clip_seconds):
    fastest = 60.0 / score["qpm"] / max(TEMPO_FACTORS)
    return "error" not in score and score["end"] * fastest >= clip_seconds


def build_rendered_dataset(out, size="tiny", seed=0, workers=None, cache_dir=None, progress=True, **overrides):
    """Build the rendered dataset into ``out``; returns the :class:`LabeledDataset`.

    ``size``: ``tiny`` (3 styles, 24 clips of 8 s: unit tests, well under a minute), ``small``
    (6 styles, ~540 clips of 10 s, 1.5 h: a minute or two), ``medium`` (the same styles, ~1,440
    clips, 4 h: the quickstart, a few minutes) or ``full`` (11 styles, up to
    300 works each, ~20 h: hours to build). ``overrides`` replace entries of :data:`SIZES`
    (``styles``, ``works_per_style``, ``clips_per_work``, ``clip_seconds``). The same seed gives
    the same files whatever ``workers``; stage 1 is cached in ``cache_dir`` (default
    ``out/.cache``) and reused by later builds.
    """
    from keras_music_ssl.progress import bar as progress_bar

    if size not in SIZES:
        raise ValueError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    require_packages()  # before minutes of stage 1, not at the first clip rendered
    config = {**SIZES[size], **overrides}
    out = os.fspath(out)
    if os.path.exists(os.path.join(out, "build.json")):  # rebuilding: no stale clips from the last build
        for folder in ("audio", "midi"):
            shutil.rmtree(os.path.join(out, folder), ignore_errors=True)
    cache_dir = os.path.join(os.fspath(cache_dir or os.path.join(out, ".cache")),
                             f"stage1-v{STAGE1_VERSION}-bars{BARS}")
    os.makedirs(cache_dir, exist_ok=True)
    workers = default_workers() if workers is None else workers

    # Stage 1, style by style, in a seeded order, until works_per_style usable scores are found
    # (some fail to parse or are shorter than a clip): the same works whatever the worker count.
    stage1 = functools.partial(_stage1, cache_dir=cache_dir)
    works, dropped = [], []
    bar = progress_bar(total=config["works_per_style"] * len(config["styles"]), desc="scores", unit="work",
                       enabled=progress)
    for style in config["styles"]:
        group = [w for w in list_works(tuple(config["styles"])) if w.style == style]
        group = [group[i] for i in np.random.default_rng([seed, _stable_int(style)]).permutation(len(group))]
        found = []
        with contextlib.closing(ordered_map(stage1, group, workers)) as scores:
            for work, score in zip(group, scores):
                if _long_enough(score, config["clip_seconds"]):
                    found.append(work)
                    bar.update(1)
                else:
                    dropped.append(work.id)
                if len(found) == config["works_per_style"]:
                    break
        works += found
    bar.close()

    splits = _split_works(works, seed)
    jobs = [(w, clip_no, splits[w]) for w in works for clip_no in range(config["clips_per_work"])]
    stage2 = functools.partial(_stage2, out=out, cache_dir=cache_dir, clip_seconds=config["clip_seconds"], seed=seed)
    rows = list(progress_bar(ordered_map(stage2, jobs, workers), total=len(jobs), desc="clips", unit="clip",
                             enabled=progress))
    silent = sum(row is None for row in rows)
    rows = [row for row in rows if row is not None]
    dataset = write_labeled_dataset(out, rows, TAGS, tasks(config["styles"]))
    with open(os.path.join(out, "styles.txt"), "w") as f:
        f.write("".join(f"{style}\n" for style in config["styles"]))
    summary = {"size": size, "seed": seed, "config": config, "clips": len(rows), "works": len(works),
               "hours": round(len(rows) * config["clip_seconds"] / 3600, 3),
               "clips_per_split": {s: sum(r["split"] == s for r in rows) for s in SPLITS},
               "silent_clips_dropped": silent, "works_dropped": sorted(dropped), "soundfont": "TimGM6mb.sf2",
               "licence": "music21 corpus scores; the Essen folk songs (essenFolksong) are for non-commercial use"}
    with open(os.path.join(out, "build.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")
    return dataset
