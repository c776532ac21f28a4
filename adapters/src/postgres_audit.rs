//! The database's side of reconciliation: which showtimes exist, which reservations have
//! an order.

use flash_sale_core::ports::{OrderAudit, PortError, PortResult, RecordedOrders};
use flash_sale_core::{ReservationId, ShowtimeId};

use crate::Postgres;

fn port_error(e: sqlx::Error) -> PortError {
    PortError::transient("postgres", e.to_string())
}

impl OrderAudit for Postgres {
    async fn showtime_ids(&self) -> PortResult<Vec<ShowtimeId>> {
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM showtimes ORDER BY id")
            .fetch_all(self.pool())
            .await
            .map_err(port_error)?;
        Ok(ids
            .into_iter()
            .filter_map(|id| ShowtimeId::new(id).ok())
            .collect())
    }

    async fn recorded(
        &self,
        showtime: ShowtimeId,
        reservations: &[ReservationId],
    ) -> PortResult<RecordedOrders> {
        let ids: Vec<String> = reservations.iter().map(ToString::to_string).collect();
        // One statement, one snapshot: the count and the ids agree on every order.
        let (sold, found): (Option<i32>, Vec<String>) = sqlx::query_as(
            "SELECT (SELECT sold FROM showtimes WHERE id = $1),
                    ARRAY(SELECT reservation_id FROM orders WHERE reservation_id = ANY($2::text[]))",
        )
        .bind(showtime.get())
        .bind(&ids)
        .fetch_one(self.pool())
        .await
        .map_err(port_error)?;
        Ok(RecordedOrders {
            ordered: sold.unwrap_or(0).max(0) as u32,
            recorded: found.into_iter().filter_map(|id| id.parse().ok()).collect(),
        })
    }

    async fn unresolved_refusals(&self, showtime: ShowtimeId) -> PortResult<Vec<ReservationId>> {
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT reservation_id FROM refused_orders
             WHERE showtime_id = $1 AND resolved_at IS NULL ORDER BY refused_at",
        )
        .bind(showtime.get())
        .fetch_all(self.pool())
        .await
        .map_err(port_error)?;
        Ok(found.into_iter().filter_map(|id| id.parse().ok()).collect())
    }
}
