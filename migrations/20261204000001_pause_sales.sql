-- Operators steer a live sale (PATCH /showtimes/{id}): a paused sale refuses new holds
-- inside its window, as a closed one does, without touching its stock; holds already
-- made can still be paid. Capacity changes reuse `capacity`, whose CHECK against `sold`
-- keeps a removal from going below the orders recorded.
ALTER TABLE showtimes ADD COLUMN sale_paused BOOLEAN NOT NULL DEFAULT false;
