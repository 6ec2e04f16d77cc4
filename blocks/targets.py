"""Delivery targets: any fsspec URL (local, SFTP cluster, remote), with secrets masked."""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from prefect.blocks.fields import SecretDict
from pydantic import Field

from pollcat.config import TargetConfig
from pollcat.layout import DEFAULT_LAYOUT


class DeliveryTarget(Block):
    """Where one transport's downloads are written, and how.

    `url` is any fsspec URL with the target root as its path: `file:///srv/pollcat`,
    `sftp://cluster.example.org/scratch/pollcat`. `storage_options` go to fsspec (for SFTP:
    `username`, `password` or `client_keys`) and are stored encrypted, shown masked.
    """

    _block_type_name = "pollcat Delivery Target"
    _block_type_slug = "pollcat-delivery-target"
    _description = "A filesystem (any fsspec URL) that receives delivered downloads."
    _code_example = """
```python
from blocks import DeliveryTarget
DeliveryTarget(url="sftp://scarf.example.org/work/pollcat",
               storage_options={"username": "pollcat", "client_keys": ["/etc/pollcat/id"]},
               concurrency=8).save("scarf-cluster")
```"""

    url: str = Field(description="fsspec URL of the target root")
    storage_options: SecretDict = Field(default_factory=lambda: SecretDict({}),
                                        description="fsspec options (secrets masked)")
    layout: str = Field(default=DEFAULT_LAYOUT, description="Path template under the root")
    concurrency: int = Field(default=4, ge=1, le=256, description="Files in parallel")
    user_rule: Literal["strip-prefix", "keep"] = Field(
        default="strip-prefix", description="ICAT user → account name rule")
    user_map: dict[str, str] = Field(default_factory=dict,
                                     description="Explicit ICAT user → account names")
    source: Literal["direct", "prepared-zip", "storage"] = Field(
        default="direct", description="Where the bytes come from")
    storage_url: str | None = Field(default=None,
                                    description="IDS main storage as fsspec URL (source=storage)")
    storage_source_options: SecretDict = Field(default_factory=lambda: SecretDict({}))
    hardlink: bool = Field(default=True, description="Hard-link from storage when possible")
    custom_value: str | None = Field(
        default=None, description="TopCAT customValue template, e.g. 'Your data: {path}'")

    def to_config(self) -> TargetConfig:
        return TargetConfig(
            url=self.url, storage_options=_plain(self.storage_options), layout=self.layout,
            concurrency=self.concurrency, user_rule=self.user_rule,
            user_map=dict(self.user_map), source=self.source, storage_url=self.storage_url,
            storage_options_source=_plain(self.storage_source_options), hardlink=self.hardlink,
            custom_value=self.custom_value)


def _plain(secret: SecretDict | dict[str, Any]) -> dict[str, Any]:
    return dict(secret.get_secret_value() if isinstance(secret, SecretDict) else secret)
