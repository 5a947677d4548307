"""``python -m qzpay``: the same as the ``qzpay`` command."""

from qzpay.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
