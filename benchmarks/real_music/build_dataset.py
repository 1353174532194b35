"""Build an offline benchmark of REAL music: the soundtracks of 12 free games packaged by Debian.

    python benchmarks/real_music/build_dataset.py --out /work/data/real_music [--download-dir DIR]
        [--packages wesnoth ufoai ...] [--jobs 1]

Steps (each resumable: a killed run, run again, redoes only what is missing):

1. ``apt-get download`` each package's .deb (Architecture: all) into ``--download-dir``
   (default OUT/downloads) and ``dpkg-deb -x`` it there;
2. take the audio files of its music folder (sound effects live elsewhere and are never read;
   two packages ship their music in a zip, a Quake ``.pk3``), keep those of 30 s or more, drop
   byte-identical copies (MD5) across all packages;
3. decode each track (soundfile), mix to mono, resample to 16 kHz (soxr, else librosa), write
   ``audio/<source>/<track>.flac`` (PCM_16, levels kept: no normalisation);
4. split by track, seeded (seed 0) and stratified per source: ~70 % train, 15 % valid, 15 % test,
   at least one of each source in valid and in test. Versions of one piece (SuperTuxKart's
   ``*_fast`` / ``farm_f``, ``*_old``, ``*_remix``, ``*_revisited``) go to the same split;
5. ``labeled/``: the generic labeled format (metadata.csv + tags.txt, see
   keras_music_ssl/data/labeled_csv.py) with one row per 30 s chunk (at most 8 per track, evenly
   spaced, non-overlapping, each its own FLAC under ``labeled/clips``) and the single-label task
   ``source`` in tasks.json; ``pool/``: symlinks to the train tracks, for
   ``kmssl pretrain --data OUT/pool``; ``build.json`` and ``chunks.sha256``: what was built, and a
   checksum over the chunk list (path, split, source, start) to check that a rebuild is identical.

Label = source (the game). These are game soundtracks: orchestral, electronic, chiptune-ish,
metal, ambient; narrower than commercial music, and a class is partly a composer and a
production chain, so this measures timbre/style discrimination, not genre. Licences of the
music, from each package's /usr/share/doc/PKG/copyright, are in SOURCES below (GPL-2+, GPL-3+,
CC-BY-SA-3.0, ...; all DFSG-free). No audio is committed to this repository: the script fetches it.
"""

import argparse
import csv
import dataclasses
import glob
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import soundfile as sf

from keras_music_ssl import storage
from keras_music_ssl.download import sha256_of

try:
    import soxr
except ImportError:  # librosa.resample then runs the same resampler (soxr_hq)
    soxr = None

SAMPLE_RATE = 16000
CHUNK = 30 * SAMPLE_RATE          # samples per chunk; also the shortest track kept
MAX_CHUNKS = 8
HELD_OUT = 0.15                   # valid and test each; train takes the rest (~70 %)
SEED = 0
SPLITS = ("train", "valid", "test")
AUDIO = (".ogg", ".wav", ".flac")
# Versions of one piece: the same label and melody, so a pair split across train/test would leak.
VARIANT = re.compile(r"_(fast|f|old|remix|revisited)$", re.I)


@dataclasses.dataclass(frozen=True)
class Source:
    packages: tuple               # Debian names, newest first: the first one found is used
    music: str                    # glob of the music folder (or the zip holding it) in the package
    licence: str                  # of the music files, from the package's copyright file
    zip_folder: str = ""          # set when `music` is a zip: the folder inside it


SOURCES = {
    "wesnoth": Source(("wesnoth-1.18-music", "wesnoth-1.16-music"),
                      "usr/share/games/wesnoth/*/data/core/music", "GPL-2+"),
    "ufoai": Source(("ufoai-music",), "usr/share/games/ufoai/base/0music.pk3",
                    "GPL-2+ overall; per track CC-BY-SA-3.0 (26), GPL-2 (22), CC-BY-3.0 (13), public-domain (3)",
                    "music/"),
    "planetblupi": Source(("planetblupi-music-ogg",), "usr/share/planetblupi/music", "GPL-3+"),
    "supertux": Source(("supertux-data",), "usr/share/games/supertux2/music", "GPL-2+ (data/music/*)"),
    "hedgewars": Source(("hedgewars-data",), "usr/share/games/hedgewars/Data/Music", "GPL-2"),
    "nexuiz": Source(("nexuiz-music",), "usr/share/games/nexuiz/data/music.pk3", "GPL-2+",
                     "sound/cdtracks/"),
    "colobot": Source(("colobot-common-sounds",), "usr/share/games/colobot/music", "GPL-3+"),
    "singularity": Source(("singularity-music",), "usr/share/games/singularity/music", "CC-BY-SA-3.0"),
    "supertuxkart": Source(("supertuxkart-data",), "usr/share/games/supertuxkart/data/music",
                           "CC-BY-SA-3.0 (most), CC-BY-SA-4.0, GPL"),
    "drascula": Source(("drascula-music",), "usr/share/scummvm/drascula",
                       "Drascula-License (BSD-like, Alcachofa Soft)"),
    "pushover": Source(("pushover-data",), "usr/share/pushover/themes", "GPL-3+"),
    "hyperrogue": Source(("hyperrogue-music",), "usr/share/hyperrogue/music", "CC-BY-SA-3.0"),
}


def log(message):
    print(message, flush=True)


def write_atomic(path, write):
    """write(tmp) then rename: a killed run leaves no half file under the final name."""
    with storage.atomic_target(path) as tmp:
        write(str(tmp))


# --- 1. packages ---------------------------------------------------------------------------

def fetch(source, download_dir):
    """(package, .deb path): one already downloaded, else `apt-get download`; (None, reason)."""
    def local(package):
        debs = sorted(glob.glob(os.path.join(glob.escape(download_dir), f"{package}_*.deb")))
        return debs[-1] if debs else None  # several versions: the last by name

    for package in source.packages:
        if local(package):
            return package, local(package)
    partial = os.path.join(download_dir, ".partial")  # apt writes the final name while downloading
    for package in source.packages:
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        try:
            done = subprocess.run(["apt-get", "download", package], cwd=partial,
                                  capture_output=True, text=True)
        except FileNotFoundError:
            return None, "no apt-get on this machine and no .deb in --download-dir"
        debs = glob.glob(os.path.join(partial, "*.deb"))
        if done.returncode == 0 and debs:
            os.replace(debs[0], os.path.join(download_dir, os.path.basename(debs[0])))
            os.rmdir(partial)
            return package, local(package)
    return None, f"none of {list(source.packages)} could be downloaded: {done.stderr.strip()[-200:]}"


def extract(deb):
    tree = deb[:-len(".deb")]
    if not os.path.isdir(tree):
        shutil.rmtree(tree + ".partial", ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", deb, tree + ".partial"], check=True)
        os.replace(tree + ".partial", tree)
    return tree


def deb_field(deb, field):
    return subprocess.run(["dpkg-deb", "-f", deb, field], capture_output=True, text=True,
                          check=True).stdout.strip()


# --- 2. music files ------------------------------------------------------------------------

def music_files(tree, source):
    """Sorted (name in the music folder, locator, where in the package); a locator is
    (file, zip member or None), for read_bytes."""
    found = []
    for root in sorted(glob.glob(os.path.join(glob.escape(tree), source.music))):
        where = os.path.relpath(root, tree)
        if source.zip_folder:
            with zipfile.ZipFile(root) as z:
                found += [(n[len(source.zip_folder):], (root, n), f"{where}!{n}") for n in z.namelist()
                          if n.startswith(source.zip_folder) and n.lower().endswith(AUDIO)]
        else:
            for folder, subfolders, names in os.walk(root):
                for n in names:
                    if n.lower().endswith(AUDIO):
                        path = os.path.join(folder, n)
                        found.append((os.path.relpath(path, root), (path, None), os.path.relpath(path, tree)))
    return sorted(found)


def read_bytes(locator):
    path, member = locator
    if member is None:
        with open(path, "rb") as f:
            return f.read()
    with zipfile.ZipFile(path) as z:
        return z.read(member)


def slug(name):
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def select_tracks(source_name, package, tree, source, seen, skipped):
    """Unique music tracks >= 30 s of one package: [{source, track, locator, origin}].

    ``seen``: MD5 -> origin over all packages, so a file shipped twice (drascula's six language
    folders) is kept once. The track id is the file name, or its path where two names collide."""
    tracks, ids = [], set()
    for name, locator, where in music_files(tree, source):
        origin = f"{package}:{where}"
        try:
            raw = read_bytes(locator)
            md5 = hashlib.md5(raw).hexdigest()
            if md5 in seen:
                skipped.append({"file": origin, "kind": "duplicate", "reason": f"same bytes as {seen[md5]}"})
                continue
            seen[md5] = origin
            seconds = sf.info(io.BytesIO(raw)).duration
        except Exception as error:  # a broken file is counted and skipped, never fatal
            skipped.append({"file": origin, "kind": "undecodable", "reason": f"{type(error).__name__}: {error}"})
            continue
        if seconds < CHUNK / SAMPLE_RATE:
            skipped.append({"file": origin, "kind": "short", "reason": f"{seconds:.1f} s < 30 s"})
            continue
        track = slug(os.path.splitext(os.path.basename(name))[0])
        if track in ids:
            track = slug(os.path.splitext(name)[0])
        ids.add(track)
        tracks.append({"source": source_name, "track": track, "locator": locator, "origin": origin})
    return tracks


# --- 3. decode -----------------------------------------------------------------------------

def resample(audio, rate):
    if soxr is not None:
        return soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    import librosa
    return librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")


def decode(job):
    """(dest, samples at 16 kHz, error or None); an existing dest is kept (resume)."""
    locator, dest = job
    try:
        if not os.path.exists(dest):
            audio, rate = sf.read(io.BytesIO(read_bytes(locator)), dtype="float32", always_2d=True)
            mono = resample(audio.mean(axis=1), rate)
            # Clip, not normalise: resampling can overshoot full scale by a hair, and PCM_16
            # would wrap such a sample around instead of saturating it.
            mono = np.clip(mono, -1.0, 1.0)
            write_atomic(dest, lambda tmp: sf.write(tmp, mono, SAMPLE_RATE, subtype="PCM_16", format="FLAC"))
        return dest, sf.info(dest).frames, None
    except Exception as error:
        return dest, 0, f"{type(error).__name__}: {error}"


# --- 4. split and chunks -------------------------------------------------------------------

def split_tracks(tracks):
    """track -> split. Per source, the pieces (a track and its variants) are shuffled with a
    seed of their own, so adding or dropping a package changes no other source's split."""
    pieces = {}
    for t in tracks:
        pieces.setdefault(t["source"], {}).setdefault(VARIANT.sub("", t["track"]).lower(), []).append(t["track"])
    split = {}
    for source, groups in pieces.items():
        keys = sorted(groups)
        if len(keys) < 3:
            raise SystemExit(f"{source}: {len(keys)} piece(s), need 3 for train/valid/test")
        random.Random(f"{SEED}:{source}").shuffle(keys)
        held = max(1, int(HELD_OUT * len(keys) + 0.5))  # round half up: 10 pieces -> 2 + 2 + 6
        for i, key in enumerate(keys):
            name = "test" if i < held else "valid" if i < 2 * held else "train"
            for track in groups[key]:
                split[(source, track)] = name
    return split


def chunk_starts(samples):
    """Up to MAX_CHUNKS non-overlapping 30 s windows, each centred in an equal part of the
    track (so intros and endings are not favoured); starts on whole milliseconds."""
    k = min(MAX_CHUNKS, samples // CHUNK)
    ms = SAMPLE_RATE // 1000
    return [((2 * i + 1) * samples // (2 * k) - CHUNK // 2) // ms * ms for i in range(k)]


def write_chunk(src, start, dest):
    if not os.path.exists(dest):
        pcm, _ = sf.read(src, start=start, frames=CHUNK, dtype="int16")  # int16: a bit-exact copy
        write_atomic(dest, lambda tmp: sf.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="FLAC"))


# --- 5. outputs ----------------------------------------------------------------------------

def write_labeled(out, rows):
    labeled = os.path.join(out, "labeled")

    def metadata(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["path", "split", "tags", "source", "work", "duration", "start"],
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    write_atomic(os.path.join(labeled, "metadata.csv"), metadata)
    open(os.path.join(labeled, "tags.txt"), "w").close()
    with open(os.path.join(labeled, "tasks.json"), "w") as f:
        json.dump({"source": {"column": "source", "type": "single-label"}}, f)
        f.write("\n")


def write_pool(out, tracks):
    """Relative symlinks to the train tracks; rebuilt every run so it never holds a stale one."""
    pool = os.path.join(out, "pool")
    shutil.rmtree(pool, ignore_errors=True)
    for t in tracks:
        if t["split"] == "train":
            link = os.path.join(pool, t["source"], t["track"] + ".flac")
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.relpath(t["audio"], os.path.dirname(link)), link)


def chunk_checksum(rows):
    lines = sorted(f"{r['path']}\t{r['split']}\t{r['source']}\t{r['start']}" for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def counts(tracks, rows):
    table = {s: {split: {"tracks": 0, "chunks": 0, "minutes": 0.0} for split in SPLITS}
             for s in sorted({t["source"] for t in tracks})}
    for t in tracks:
        cell = table[t["source"]][t["split"]]
        cell["tracks"] += 1
        cell["minutes"] = round(cell["minutes"] + t["samples"] / SAMPLE_RATE / 60, 2)
    for r in rows:
        table[r["source"]][r["split"]]["chunks"] += 1
    return table


def print_table(table):
    log(f"\n{'source':14s} {'tracks tr/va/te':>16s} {'chunks tr/va/te':>17s} {'minutes':>8s}")
    total = {split: [0, 0, 0.0] for split in SPLITS}
    for source, cells in table.items():
        for split in SPLITS:
            total[split] = [a + b for a, b in zip(total[split], cells[split].values())]
        tr, ch = ("/".join(str(cells[s][key]) for s in SPLITS) for key in ("tracks", "chunks"))
        log(f"{source:14s} {tr:>16s} {ch:>17s} {sum(c['minutes'] for c in cells.values()):8.1f}")
    tr, ch = ("/".join(str(total[s][i]) for s in SPLITS) for i in (0, 1))
    log(f"{'total':14s} {tr:>16s} {ch:>17s} {sum(t[2] for t in total.values()):8.1f}")


# --- main ----------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/work/data/real_music")
    parser.add_argument("--download-dir", help=".debs and their extracted trees (default OUT/downloads)")
    parser.add_argument("--packages", nargs="+", metavar="P", help=f"sources or package names (default all: {' '.join(SOURCES)})")
    parser.add_argument("--jobs", type=int, default=1, help="decoding processes")
    args = parser.parse_args()
    started = time.time()
    out = os.path.abspath(args.out)
    download_dir = os.path.abspath(args.download_dir or os.path.join(out, "downloads"))
    wanted = args.packages or list(SOURCES)
    chosen = {n: s for n, s in SOURCES.items() if n in wanted or set(s.packages) & set(wanted)}
    unknown = set(wanted) - set(chosen) - {p for s in chosen.values() for p in s.packages}
    if unknown:
        parser.error(f"unknown package(s) {sorted(unknown)}; known: {' '.join(SOURCES)}")
    os.makedirs(download_dir, exist_ok=True)

    packages, dropped, skipped, tracks, seen = [], [], [], [], {}
    for name, source in chosen.items():
        package, deb = fetch(source, download_dir)
        if package is None:
            log(f"{name}: dropped: {deb}")
            dropped.append({"source": name, "reason": deb})
            continue
        tree = extract(deb)
        found = select_tracks(name, package, tree, source, seen, skipped)
        packages.append({"source": name, "package": package, "version": deb_field(deb, "Version"),
                         "deb": os.path.basename(deb), "sha256": sha256_of(deb), "licence": source.licence,
                         "copyright": f"/usr/share/doc/{package}/copyright", "tracks": len(found)})
        log(f"{name}: {package} {packages[-1]['version']}: {len(found)} tracks")
        tracks += found

    jobs = [(t["locator"], os.path.join(out, "audio", t["source"], t["track"] + ".flac")) for t in tracks]
    pool = ProcessPoolExecutor(args.jobs) if args.jobs > 1 else None
    decoded = {}
    for i, (dest, samples, error) in enumerate((pool.map if pool else map)(decode, jobs), 1):
        decoded[dest] = samples, error
        result = f"undecodable: {error}" if error else f"{samples / SAMPLE_RATE / 60:.1f} min"
        log(f"[{i}/{len(jobs)}] {os.path.relpath(dest, out)} {result} ({time.time() - started:.0f} s)")
    if pool:
        pool.shutdown()
    kept = []
    for t, (_, dest) in zip(tracks, jobs):
        samples, error = decoded[dest]
        if error:
            skipped.append({"file": t["origin"], "kind": "undecodable", "reason": error})
        elif samples < CHUNK:
            skipped.append({"file": t["origin"], "kind": "short", "reason": "< 30 s once decoded"})
        else:
            kept.append({**t, "audio": dest, "samples": samples})
    tracks = kept

    split = split_tracks(tracks)
    rows = []
    for t in tracks:
        t["split"] = split[(t["source"], t["track"])]
        for k, start in enumerate(chunk_starts(t["samples"])):
            path = f"clips/{t['source']}/{t['track']}-{k}.flac"
            write_chunk(t["audio"], start, os.path.join(out, "labeled", path))
            rows.append({"path": path, "split": t["split"], "tags": "", "source": t["source"],
                         "work": f"{t['source']}/{t['track']}", "duration": "30",
                         "start": f"{start / SAMPLE_RATE:.3f}"})
    rows.sort(key=lambda r: r["path"])
    write_labeled(out, rows)
    write_pool(out, tracks)

    checksum = chunk_checksum(rows)
    table = counts(tracks, rows)
    minutes = {s: round(sum(c[s]["minutes"] for c in table.values()), 1) for s in SPLITS}
    build = {"packages": packages, "dropped_packages": dropped, "counts": table, "minutes_per_split": minutes,
             "hours_total": round(sum(minutes.values()) / 60, 2), "chunks": len(rows),
             "skipped": skipped, "chunks_sha256": checksum,
             "settings": {"sample_rate": SAMPLE_RATE, "chunk_seconds": CHUNK // SAMPLE_RATE,
                          "max_chunks_per_track": MAX_CHUNKS, "held_out_fraction": HELD_OUT, "seed": SEED,
                          "resampler": "soxr HQ" if soxr else "librosa soxr_hq"},
             "split_of_track": {f"{t['source']}/{t['track']}": t["split"] for t in tracks},
             "build_seconds": round(time.time() - started, 1)}
    with open(os.path.join(out, "build.json"), "w") as f:
        json.dump(build, f, indent=1)
    with open(os.path.join(out, "chunks.sha256"), "w") as f:
        f.write(checksum + "\n")

    print_table(table)
    kinds = [s["kind"] for s in skipped]
    log(f"\nskipped files: {({k: kinds.count(k) for k in sorted(set(kinds))}) or 'none'}; "
        f"dropped packages: {[d['source'] for d in dropped] or 'none'}")
    log(f"minutes per split: {minutes}; {build['hours_total']} h; {len(rows)} chunks")
    log(f"chunks sha256: {checksum}\nbuilt in {build['build_seconds']:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
