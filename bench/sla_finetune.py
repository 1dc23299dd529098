#!/usr/bin/env python
"""SLA fine-tuning experiment (see genaccel/benchmarks/sla_finetune.py): a frozen random attention
stack on video-like inputs, the held-out error of sparse-only, untrained SLA and SLA after N steps of
training its projections against the dense teacher.

    python bench/sla_finetune.py [--steps N] [--json FILE] [--plot FILE] [--quick] [--seed S]

Same as `genaccel bench --family sla-finetune`; the code lives in the package so both share it.
"""

import sys

from genaccel.benchmarks.sla_finetune import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
