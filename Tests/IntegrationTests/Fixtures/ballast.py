#!/usr/bin/env python3
"""pingable.py (same MODEs) holding BALLAST_MB of non-zero memory: a service whose core takes long
enough to write that a test can kill the supervisor in the middle of the capture."""
import os, runpy
ballast = b"\x01" * (int(os.environ.get("BALLAST_MB", "0")) << 20)
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pingable.py"), run_name="__main__")
