"""`python -m deployments.bootstrap` from a checkout: see `pollcat.deployments.bootstrap`."""

from pollcat.deployments.bootstrap import bootstrap, main

__all__ = ["bootstrap", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
