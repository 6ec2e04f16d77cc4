"""The design card's `deployments/` folder: the bootstrap lives in `pollcat.deployments`."""
