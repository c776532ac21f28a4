-- A showtime's sale window: reservations before `sale_opens_at` or from `sale_closes_at`
-- on are refused (both optional; NULL means no bound). Existing showtimes stay open.
ALTER TABLE showtimes
    ADD COLUMN sale_opens_at  TIMESTAMPTZ,
    ADD COLUMN sale_closes_at TIMESTAMPTZ,
    ADD CONSTRAINT showtimes_sale_window_ordered
        CHECK (sale_opens_at IS NULL OR sale_closes_at IS NULL OR sale_closes_at > sale_opens_at);
