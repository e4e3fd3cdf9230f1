#!/usr/bin/env python3
"""Container health probe: exit 0 when GET http://127.0.0.1:$KIMI_VL_PORT/health answers 200.

Docker's HEALTHCHECK and compose run it inside the container (the images ship no curl).
Usage: kimi-vl-healthcheck [PATH]   (default /health; /ready to wait for the loaded model).
When the server was started with --no-open-health-and-metrics, the first key of
KIMI_VL_API_KEYS is sent as the Bearer token.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/health"
    port = os.environ.get("KIMI_VL_PORT", "8000")
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    key = os.environ.get("KIMI_VL_API_KEYS", "").split(",")[0].strip()
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{path}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
