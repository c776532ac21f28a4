-- Paid orders the database refused for good (over capacity, a second order of one user,
-- a reservation id already recorded for another user): each kept once, for a person to
-- refund. `reconcile` reports every one whose `resolved_at` is still NULL; a person sets
-- it once the payment is refunded.
CREATE TABLE refused_orders (
    reservation_id  TEXT PRIMARY KEY,
    showtime_id     BIGINT NOT NULL,
    user_id         BIGINT NOT NULL,
    paid_at         TIMESTAMPTZ NOT NULL,
    reason          TEXT NOT NULL,
    refused_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at     TIMESTAMPTZ
);

CREATE INDEX refused_orders_unresolved ON refused_orders (showtime_id) WHERE resolved_at IS NULL;
