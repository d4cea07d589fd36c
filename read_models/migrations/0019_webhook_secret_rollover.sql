-- Rolling an endpoint's signing secret without breaking its receiver (as Stripe's "roll
-- secret" does): the secret it replaced keeps signing beside it until the time the rotation
-- chose (at most 7 days), so each attempt carries both signatures ("v1,<a> v1,<b>", as the
-- Standard Webhooks spec allows) and a receiver may switch secrets at its own pace.
ALTER TABLE webhook_endpoints
    ADD COLUMN previous_secret            TEXT,
    ADD COLUMN previous_secret_expires_at TIMESTAMPTZ,
    ADD CONSTRAINT webhook_endpoints_previous_secret_expires
        CHECK ((previous_secret IS NULL) = (previous_secret_expires_at IS NULL));
