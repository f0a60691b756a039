"""Put the source tree and ``tests/`` on the import path.

Every harness imports this first, before it instruments and imports the
engine, so the harnesses run from a checkout without installing it.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (os.path.join(ROOT, "tests"), ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)
