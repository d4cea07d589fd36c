"""The one way to build an S3 client: the configured endpoint, region and credentials, plus the
botocore options (timeouts, retries, pool size) that each caller chooses for itself."""

from __future__ import annotations

from typing import Any

from infra.settings import Settings


def s3_client(settings: Settings, **config: Any) -> Any:
    """``config``: keyword arguments of ``botocore.config.Config``."""
    import boto3  # lazily: the doctor and the CLI's light commands do not pay for it
    from botocore.config import Config

    from infra.observability.instrument import instrument_s3

    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region,
        # An empty key id (production's) means the default chain, the task role's credentials:
        # boto3 would sign every request with "" as the key if it were passed through.
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=(
            settings.s3_secret_access_key.get_secret_value() if settings.s3_access_key_id else None
        ),
        config=Config(**config),
    )
    # Every client counts its requests (pinksea_s3_requests_total, the s3-error-rate twin).
    return instrument_s3(client)
