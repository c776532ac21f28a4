-- Showtimes and their orders. PostgreSQL has the last word on what was sold:
-- `sold` counts recorded orders and can never pass `capacity`, whatever Redis says.
CREATE TABLE showtimes (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title       TEXT,
    starts_at   TIMESTAMPTZ,
    capacity    INTEGER NOT NULL CHECK (capacity > 0),
    sold        INTEGER NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT showtimes_sold_within_capacity CHECK (sold >= 0 AND sold <= capacity)
);

CREATE TABLE orders (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reservation_id  TEXT NOT NULL,
    showtime_id     BIGINT NOT NULL REFERENCES showtimes (id),
    user_id         BIGINT NOT NULL,
    paid_at         TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT orders_one_per_reservation UNIQUE (reservation_id),
    CONSTRAINT orders_one_per_user_and_showtime UNIQUE (showtime_id, user_id)
);
