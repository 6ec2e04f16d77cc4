"""Delivery targets: any fsspec URL (local, SFTP cluster, remote), with secrets masked."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from prefect.blocks.fields import SecretDict
from pydantic import Field

from pollcat.config import TargetConfig

DOCS = "https://github.com/pollcat/pollcat#configure"

_OPTIONS = TargetConfig.model_fields["storage_options"].description
_SOURCE_OPTIONS = TargetConfig.model_fields["storage_source_options"].description
_GLOBUS = TargetConfig.model_fields["globus"].description


class DeliveryTarget(Block, TargetConfig):
    """Where one transport's downloads are written, and how.

    Every field is a `pollcat.config.TargetConfig` field (same name, default and description);
    only the two option dictionaries are re-typed as `SecretDict` so that the UI masks them.
    `url` is any fsspec URL with the target root as its path: `file:///srv/pollcat`,
    `sftp://cluster.example.org/scratch/pollcat`.
    """

    _block_type_name = "pollcat Delivery Target"
    _block_type_slug = "pollcat-delivery-target"
    _description = "A filesystem (any fsspec URL) that receives delivered downloads."
    _documentation_url = DOCS
    _code_example = """
```python
from pollcat.blocks import DeliveryTarget

DeliveryTarget(url="sftp://scarf.example.org/work/pollcat",
               storage_options={"username": "pollcat", "client_keys": ["/etc/pollcat/id"]},
               concurrency=8).save("scarf-cluster")

target = DeliveryTarget.load("BLOCK_NAME")
fs, root = target.get_filesystem()
```"""

    storage_options: SecretDict = Field(  # type: ignore[assignment]
        default_factory=lambda: SecretDict({}), description=_OPTIONS)
    storage_source_options: SecretDict = Field(  # type: ignore[assignment]
        default_factory=lambda: SecretDict({}), description=_SOURCE_OPTIONS)
    globus: SecretDict | None = Field(default=None, description=_GLOBUS)  # type: ignore[assignment]

    def to_config(self) -> TargetConfig:
        values = {name: getattr(self, name) for name in TargetConfig.model_fields}
        values["storage_options"] = _plain(self.storage_options)
        values["storage_source_options"] = _plain(self.storage_source_options)
        values["globus"] = _plain(self.globus) if self.globus is not None else None
        return TargetConfig(**values)

    def get_filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the root path on it."""
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(self.url, **_plain(self.storage_options))
        return fs, root.rstrip("/") or "/"


def _plain(secret: SecretDict | dict[str, Any]) -> dict[str, Any]:
    return dict(secret.get_secret_value() if isinstance(secret, SecretDict) else secret)
