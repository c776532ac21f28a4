-- Group reservations: a showtime may let one buyer take up to `max_per_user` seats as
-- one reservation (one order row carrying its `quantity`). The default, 1, keeps one
-- seat per user exactly as before. The database enforces both limits itself, whatever
-- writes the rows:
--   * orders stay unique per (showtime, user) (orders_one_per_user_and_showtime), and an
--     order's quantity is 1..=its showtime's max_per_user (a CHECK and a trigger);
--   * `showtimes.sold` is the sum of the showtime's orders' quantities, kept by
--     statement triggers on `orders` in the inserting transaction, and still CHECK'd
--     `<= capacity` (showtimes_sold_within_capacity): an insert that would pass the
--     capacity fails whole.
ALTER TABLE showtimes
    ADD COLUMN max_per_user INTEGER NOT NULL DEFAULT 1
        CONSTRAINT showtimes_max_per_user_bounded CHECK (max_per_user BETWEEN 1 AND 20);

ALTER TABLE orders
    ADD COLUMN quantity INTEGER NOT NULL DEFAULT 1
        CONSTRAINT orders_quantity_positive CHECK (quantity >= 1);

ALTER TABLE refused_orders
    ADD COLUMN quantity INTEGER NOT NULL DEFAULT 1
        CONSTRAINT refused_orders_quantity_positive CHECK (quantity >= 1);

-- An order's quantity never passes its showtime's max_per_user. The row is read without
-- a lock of its own: the statement trigger below updates it in the same transaction, and
-- a share lock taken here would deadlock two batches of one showtime (each holding its
-- share lock, each waiting for the other's to update `sold`).
CREATE FUNCTION orders_quantity_within_max_per_user() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    allowed INTEGER;
BEGIN
    SELECT max_per_user INTO allowed FROM showtimes WHERE id = NEW.showtime_id;
    IF allowed IS NOT NULL AND NEW.quantity > allowed THEN
        RAISE EXCEPTION 'order % takes % seats, showtime % allows % per user',
                NEW.reservation_id, NEW.quantity, NEW.showtime_id, allowed
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'orders_quantity_within_max_per_user',
                  TABLE = 'orders';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER orders_quantity_within_max_per_user
    BEFORE INSERT OR UPDATE OF quantity, showtime_id ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_quantity_within_max_per_user();

-- `sold` follows the orders' quantities: one UPDATE per statement and showtime (a
-- batch of orders bumps each showtime's row once).
CREATE FUNCTION orders_count_sold_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE showtimes s SET sold = s.sold + n.seats
    FROM (SELECT showtime_id, sum(quantity)::int AS seats FROM inserted GROUP BY showtime_id) n
    WHERE s.id = n.showtime_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION orders_count_sold_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE showtimes s SET sold = s.sold - n.seats
    FROM (SELECT showtime_id, sum(quantity)::int AS seats FROM deleted GROUP BY showtime_id) n
    WHERE s.id = n.showtime_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION orders_count_sold_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE showtimes s SET sold = s.sold + n.seats
    FROM (SELECT showtime_id, sum(seats)::int AS seats FROM (
              SELECT showtime_id, quantity AS seats FROM after_update
              UNION ALL
              SELECT showtime_id, -quantity FROM before_update) d
          GROUP BY showtime_id) n
    WHERE s.id = n.showtime_id AND n.seats <> 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_count_sold_inserted
    AFTER INSERT ON orders REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_sold_inserted();

CREATE TRIGGER orders_count_sold_deleted
    AFTER DELETE ON orders REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_sold_deleted();

CREATE TRIGGER orders_count_sold_updated
    AFTER UPDATE ON orders REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
    FOR EACH STATEMENT EXECUTE FUNCTION orders_count_sold_updated();
