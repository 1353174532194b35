import sys

from keras_music_ssl.cli import main

sys.exit(main())
