"""Does an input error with an integer in its message raise cleanly? On one GPU image the
extension's TORCH_CHECK messages that format integers crashed the process (SIGSEGV inside
libstdc++'s ostream; see bench/results/h200/CHECKS.md). Each probe runs in a subprocess so a crash
is reported instead of ending this script. Exit code 1 if any probe crashed.

    python tools/error_path_probe.py
"""

import subprocess
import sys

PROBE = r"""
import sys, torch, genaccel
dev = sys.argv[1]
q = torch.zeros(1, 1, 4, 0, device=dev)  # head dim 0: "head dim must be in [1, 256], got 0"
mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=dev)
try:
    genaccel.block_sparse_attention(q, q, q, mask, (64, 64))
except (RuntimeError, ValueError) as e:
    print("raised:", str(e).splitlines()[0][:100])
"""


def main() -> int:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    crashed = False
    for dev in devices:
        r = subprocess.run([sys.executable, "-c", PROBE, dev], capture_output=True, text=True)
        ok = r.returncode == 0 and "raised:" in r.stdout
        crashed |= not ok
        print(f"{dev}: {'ok' if ok else f'FAILED (exit {r.returncode})'} {r.stdout.strip()} {r.stderr.strip()[-200:]}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
