-- A showtime's orders in the order they were recorded, a page at a time
-- (GET /showtimes/{id}/orders): without it every page scans the whole table.
CREATE INDEX IF NOT EXISTS orders_by_showtime ON orders (showtime_id, id);
