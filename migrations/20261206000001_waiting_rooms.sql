-- A showtime may sell through a waiting room (issue 16): buyers join a line, the line is
-- admitted as the stock allows, and only an admitted buyer may reserve. The room's
-- live state (places, admissions) is in Redis beside the seats; these columns are its
-- settings, the source Redis is configured from. No room when room_opens_at is NULL.
ALTER TABLE showtimes
    ADD COLUMN room_opens_at TIMESTAMPTZ,
    ADD COLUMN room_admit_per_sec INTEGER CHECK (room_admit_per_sec BETWEEN 1 AND 1000000),
    ADD COLUMN room_overbook_pct INTEGER CHECK (room_overbook_pct BETWEEN 0 AND 500),
    ADD COLUMN room_admission_secs INTEGER CHECK (room_admission_secs BETWEEN 10 AND 3600),
    ADD CONSTRAINT showtimes_room_complete CHECK (
        (room_opens_at IS NULL) = (room_overbook_pct IS NULL)
        AND (room_opens_at IS NULL) = (room_admission_secs IS NULL)
    );
