"""Pretrain one method and probe it beside the floors: ``kmssl compare`` with one method.

    python recipes/pretrain.py                                   # contrastive, the embedded default
    python recipes/pretrain.py --method clustering --epochs 20   # another method, longer
    python recipes/pretrain.py --data my_shards --probe-dataset mtat:/data/mtat --encoder paper

Every option of ``kmssl compare`` applies (``kmssl compare --help``); the run folder is
``--out`` (default outputs/pretrain): ``runs/<method>/`` (see ``kmssl pretrain``), ``probe/`` and
``comparison.md``. Run again with the same options, it resumes.
"""

import sys

from keras_music_ssl import cli


def main(argv):
    argv = ["--methods" if a == "--method" else a for a in argv]
    if "--out" not in argv:
        argv += ["--out", "outputs/pretrain"]
    if "--methods" not in argv:
        argv += ["--methods", "contrastive"]
    return cli.main(["compare", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
