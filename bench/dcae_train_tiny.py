#!/usr/bin/env python
"""Train the small DC-AE-V that `genaccel ae` uses by default (see genaccel/autoencoder/dcae/tiny.py): a
few minutes on 2 CPU cores on procedural videos of moving textured shapes; cached, never committed.

    python bench/dcae_train_tiny.py [--minutes M] [--seed S] [--json FILE] [--save DIR] [--clip FILE]
"""

import sys

from genaccel.autoencoder.dcae.tiny import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
