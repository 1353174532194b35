"""``kmssl upload``: publish a preset on the Hugging Face Hub or on Kaggle Models.

    kmssl upload my_preset/ hf://me/my-encoder
    kmssl upload my_preset/ hf://me/my-encoder@dev --message "longer pretraining"
    kmssl upload my_preset/ kaggle://me/music-ssl/keras/byol --license "Apache 2.0"

The preset gets a model card (README.md) first if it has none. Anyone can then load it with
``MusicEncoder.from_preset("hf://me/my-encoder")`` or any ``--preset`` option. Log in first:
``hf auth login`` (or HF_TOKEN); for Kaggle, KAGGLE_API_TOKEN or ``kagglehub.login()``.
Failures (no login, no network, no such repository) are one line and exit 2 (``hub.HubError``).
"""

HELP = "Upload a preset to the Hugging Face Hub (hf://) or Kaggle Models (kaggle://)."


def add_arguments(parser):
    parser.add_argument("preset", metavar="PRESET",
                        help="preset folder, or a name or hub handle that --preset options accept")
    parser.add_argument("handle", metavar="HANDLE",
                        help="where to publish: hf://OWNER/NAME[@REVISION] or "
                             "kaggle://OWNER/MODEL/FRAMEWORK/VARIATION")
    parser.add_argument("--message", metavar="TEXT",
                        help="commit message (Hugging Face) or version notes (Kaggle)")
    parser.add_argument("--license", metavar="NAME",
                        help="Kaggle only: licence of a new variation (e.g. 'Apache 2.0'; default Kaggle's); "
                             "on the Hugging Face Hub the model card carries the licence")
    parser.add_argument("--weights-dir", help="where named presets live (default: $KMSSL_WEIGHTS_DIR)")


def run(args):
    from keras_music_ssl import hub
    from keras_music_ssl.presets import resolve_preset

    hub.parse_handle(args.handle)  # a malformed handle fails before a preset is looked up
    folder = resolve_preset(args.preset, args.weights_dir)
    url = hub.upload_preset(folder, args.handle, message=args.message, license_name=args.license)
    print(f"Uploaded {folder} to {args.handle}: {url}")
    return 0
