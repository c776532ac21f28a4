-- An operator's Idempotency-Key on POST /showtimes: kept on the row it creates, so that
-- a retried creation (a lost answer, a timeout) finds its showtime instead of putting a
-- second one with the same seats on sale. created_by is the verified operator (0 where
-- nobody is verified); the fingerprint is what the request asked, so the same key sent
-- with another request is refused.
ALTER TABLE showtimes
    ADD COLUMN created_by BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN creation_key TEXT,
    ADD COLUMN creation_fingerprint TEXT,
    ADD CONSTRAINT showtimes_creation_key_complete CHECK (
        (creation_key IS NULL) = (creation_fingerprint IS NULL)
    );

CREATE UNIQUE INDEX showtimes_one_per_creation_key
    ON showtimes (created_by, creation_key) WHERE creation_key IS NOT NULL;
