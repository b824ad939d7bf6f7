"""How long `netlang check` takes after import: parse, lower and infer shapes.

    python benchmarks/check_speed.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import netlang  # noqa: E402


def main() -> None:
    for file, network in [("resnet18.net", "resnet18"), ("unet.net", None),
                          ("unet_plus_plus.net", None), ("vgg16.net", None)]:
        netlang.load(ROOT / "examples" / file, network=network)   # warm (grammar compiled)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            netlang.load(ROOT / "examples" / file, network=network)
            times.append(time.perf_counter() - t)
        print(f"{file:22} {1e3 * statistics.median(times):7.1f} ms (median of 20)")
    t = time.perf_counter()
    import subprocess
    subprocess.run([sys.executable, "-m", "netlang", "check", str(ROOT / "examples" /
                                                                   "unet.net")],
                   check=True, capture_output=True)
    print(f"{'cold `netlang check unet.net`':22} {1e3 * (time.perf_counter() - t):7.1f} ms "
          "(new process: Python start, imports, grammar)")


if __name__ == "__main__":
    main()
