import sys

try:
    from bnsweep.cli import main

    status = main()
except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (while importing): no traceback
    print("\ninterrupted", file=sys.stderr)
    status = 130
raise SystemExit(status)
