-- The notifier's copy of each account's status, from CreditAccount.Deactivated / Reactivated
-- read in the account's own partition order: a crossing after a deactivation is not mailed.
-- status_version (the account version of the last status event) keeps a redelivered older
-- event from undoing a newer one.
ALTER TABLE notifier_accounts
    ADD COLUMN deactivated    BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN status_version BIGINT;
