//! Group commit for the scripts a crowd calls: waiting-room joins and holds.
//!
//! A crowd calls these scripts thousands of times a second, and each call costs Redis
//! (the script's own set-up, about 20 us for `reserve.lua`) and this client (a command
//! to encode, a reply to read, a write and a read on the socket) more than the work it
//! does. The asks that reach this process while its previous group is in Redis leave
//! together, one script call per showtime (one slot: Redis Cluster safe), all showtimes
//! at once, and each caller still waits for, and gets, its own answer. Nothing waits to
//! fill a group: a lone ask leaves at once, and groups grow only while Redis is busy.
//!
//! A script runs its group's asks one after another, in arrival order, each exactly as
//! it would run alone, so a group changes nothing a caller can observe but the time. A
//! failed call fails every ask of its group, as the same calls one by one would have
//! failed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use flash_sale_core::ShowtimeId;
use flash_sale_core::ports::{PortError, PortResult};
use futures::future::join_all;
use tokio::sync::{mpsc, oneshot};

use crate::redis_seats::COMPONENT;

/// The asks of type `T` waiting for their group, each answered with an `R`. Cheap to
/// clone: clones share one committer, whose task starts at the first ask (inside a
/// runtime) and ends when the last clone is dropped.
pub(crate) struct Groups<T, R> {
    inbox: Arc<OnceLock<mpsc::UnboundedSender<Ask<T, R>>>>,
    /// Most asks in one script call.
    most: usize,
}

impl<T, R> Clone for Groups<T, R> {
    fn clone(&self) -> Self {
        Self {
            inbox: self.inbox.clone(),
            most: self.most,
        }
    }
}

/// One caller's ask, waiting for its group.
struct Ask<T, R> {
    showtime: ShowtimeId,
    what: T,
    answer: oneshot::Sender<PortResult<R>>,
}

impl<T: Send + 'static, R: Send + 'static> Groups<T, R> {
    /// Groups of at most `most` asks per script call.
    pub(crate) fn new(most: usize) -> Self {
        Self {
            inbox: Arc::default(),
            most: most.max(1),
        }
    }

    /// `what`, committed with the asks of `showtime` that wait beside it. `committer`
    /// is called once, by the first ask, for the function that commits a group: it
    /// answers each of its asks, in their order, or fails them all. The committer must
    /// not hold these groups (nor a clone), or its task would never end.
    pub(crate) async fn ask<C, F>(
        &self,
        showtime: ShowtimeId,
        what: T,
        committer: impl FnOnce() -> C,
    ) -> PortResult<R>
    where
        C: Fn(ShowtimeId, Vec<T>) -> F + Send + 'static,
        F: Future<Output = PortResult<Vec<R>>> + Send + 'static,
    {
        let inbox = self.inbox.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(commit_groups(committer(), rx, self.most));
            tx
        });
        let (answer, answered) = oneshot::channel();
        let gone = || PortError::transient(COMPONENT, "the group committer stopped");
        inbox
            .send(Ask {
                showtime,
                what,
                answer,
            })
            .map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

/// The committer's task: takes every ask waiting (up to `most` per showtime), one call
/// per showtime, all at once, answers each caller, and only then takes the next group.
async fn commit_groups<T, R, C, F>(
    commit: C,
    mut inbox: mpsc::UnboundedReceiver<Ask<T, R>>,
    most: usize,
) where
    C: Fn(ShowtimeId, Vec<T>) -> F,
    F: Future<Output = PortResult<Vec<R>>>,
{
    while let Some(first) = inbox.recv().await {
        let mut groups: HashMap<ShowtimeId, Vec<Ask<T, R>>> = HashMap::new();
        groups.entry(first.showtime).or_default().push(first);
        let mut full = most == 1;
        while !full && let Ok(ask) = inbox.try_recv() {
            let group = groups.entry(ask.showtime).or_default();
            group.push(ask);
            full = group.len() >= most;
        }
        join_all(groups.into_iter().map(|(showtime, asks)| {
            let (whats, answers): (Vec<T>, Vec<_>) =
                asks.into_iter().map(|a| (a.what, a.answer)).unzip();
            let committed = commit(showtime, whats);
            async move {
                let n = answers.len();
                match committed.await {
                    Ok(rs) if rs.len() == n => {
                        for (answer, r) in answers.into_iter().zip(rs) {
                            let _ = answer.send(Ok(r));
                        }
                    }
                    Ok(rs) => {
                        let e = PortError::permanent(
                            COMPONENT,
                            format!("a group of {n} asks got {} answers", rs.len()),
                        );
                        for answer in answers {
                            let _ = answer.send(Err(e.clone()));
                        }
                    }
                    Err(e) => {
                        for answer in answers {
                            let _ = answer.send(Err(e.clone()));
                        }
                    }
                }
            }
        }))
        .await;
    }
}
