//! Fan-out of the hub's log to watchers.
//!
//! One task tails the log and broadcasts each item to every watcher through a bounded
//! buffer (`tokio::sync::broadcast`): a watcher that falls further behind than the buffer
//! loses its place and is ended with `resync_required` and the cursor to resume from, while
//! the tail and every other watcher go on at full speed. A watcher that starts from a cursor
//! first catches up by reading the log itself, then joins the broadcast; items it would see
//! twice are skipped by id. This module decides nothing about who may see what: watchers
//! pass a [`Scope`] that the admin API built.

use std::sync::Arc;
use std::time::Duration;

use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::stream::EntryId;
use tokio::sync::{broadcast, mpsc, watch};

use crate::auth::WorkspaceScope;
use crate::store::{HubStore, LogItem, LogKind, StoreError};

/// How long one blocking read of the log waits before checking for shutdown.
const TAIL_POLL: Duration = Duration::from_secs(5);
/// How many times a watcher that fell behind while catching up starts its catch-up again
/// before it is told to resume later.
const CATCH_UP_TRIES: usize = 3;

pub struct Fanout {
    tx: broadcast::Sender<Arc<LogItem>>,
    store: HubStore,
    /// Open watches (`mosaic_hub_subscribers`).
    subscribers: prometheus_client::metrics::gauge::Gauge,
}

/// What a watcher wants to see.
#[derive(Debug, Clone)]
pub struct Scope {
    pub target: Target,
    /// Empty: every type.
    pub types: Vec<pb::EventType>,
    /// The workspaces the caller may see.
    pub visible: WorkspaceScope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Workspace(String),
    Job(String),
    Spoke(String),
}

impl Scope {
    fn sees_workspace(&self, ws: &str) -> bool {
        ws.parse().is_ok_and(|w| self.visible.contains(&w))
    }

    fn matches_event(&self, spoke: &str, e: &pb::Event) -> bool {
        let target = match &self.target {
            Target::Workspace(w) => &e.workspace == w,
            Target::Job(j) => &e.job_id == j,
            Target::Spoke(s) => spoke == s,
        };
        target
            && self.sees_workspace(&e.workspace)
            && (self.types.is_empty() || self.types.contains(&e.r#type()))
    }

    fn matches_job(&self, s: &admin::JobSnapshot) -> bool {
        let target = match &self.target {
            Target::Workspace(w) => &s.workspace == w,
            Target::Job(j) => &s.job_id == j,
            Target::Spoke(sp) => &s.spoke_id == sp,
        };
        target && self.sees_workspace(&s.workspace)
    }

    /// Whether lost events of `spoke` may concern this watcher.
    fn may_involve(&self, spoke: &str) -> bool {
        match &self.target {
            Target::Spoke(s) => s == spoke,
            _ => true,
        }
    }
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With the next item.
    Live,
    After(EntryId),
    Oldest,
    /// Job snapshots, a marker, then what follows.
    Snapshot,
}

/// Why a watch ended (the admin API turns it into a status).
#[derive(Debug)]
pub enum WatchEnd {
    /// The caller left.
    Left,
    /// The hub is stopping.
    Shutdown,
    /// The cursor is older than what the log retains.
    Trimmed {
        trimmed: EntryId,
    },
    /// The watcher fell behind the broadcast; it may resume from `cursor`.
    Lagged {
        cursor: Option<EntryId>,
    },
    /// Events of a spoke were lost between it and the hub; resume from `cursor` after
    /// resynchronising.
    Gap {
        spoke: String,
        cursor: EntryId,
    },
    Store(StoreError),
}

impl Fanout {
    pub fn new(
        store: HubStore,
        buffer: usize,
        subscribers: prometheus_client::metrics::gauge::Gauge,
    ) -> Arc<Self> {
        let (tx, _) = broadcast::channel(buffer);
        Arc::new(Fanout {
            tx,
            store,
            subscribers,
        })
    }

    /// Tails the log and broadcasts what is appended, until `shutdown` turns true.
    pub async fn tail(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut pos: Option<EntryId> = None;
        let mut started = false;
        loop {
            let run = async {
                let mut reader = self.store.log_reader().await?;
                if !started {
                    pos = self.store.last_id().await?;
                    started = true;
                }
                loop {
                    for item in reader.read(pos, Some(TAIL_POLL)).await? {
                        pos = Some(item.id);
                        // No watcher is not an error.
                        let _ = self.tx.send(Arc::new(item));
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), StoreError>(())
            };
            tokio::select! {
                result = run => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "cannot tail the hub's log; retrying");
                    }
                }
                _ = shutdown.wait_for(|s| *s) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Sends what `scope` may see from `start` on into `out`, until the caller leaves, the
    /// hub stops, or the watcher cannot go on (see [`WatchEnd`]).
    pub async fn watch(
        &self,
        scope: &Scope,
        start: Start,
        out: &mpsc::Sender<admin::WatchResponse>,
    ) -> WatchEnd {
        // Counted while this future lives, also when the caller drops it.
        struct Open<'a>(&'a prometheus_client::metrics::gauge::Gauge);
        impl Drop for Open<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.subscribers.inc();
        let _open = Open(&self.subscribers);
        match self.watch_inner(scope, start, out).await {
            Ok(end) | Err(end) => end,
        }
    }

    async fn watch_inner(
        &self,
        scope: &Scope,
        start: Start,
        out: &mpsc::Sender<admin::WatchResponse>,
    ) -> Result<WatchEnd, WatchEnd> {
        // Subscribed before reading anything, so nothing appended from now on is missed.
        let mut rx = self.tx.subscribe();
        let mut pos: Option<EntryId> = match start {
            Start::Live => None,
            Start::After(c) => Some(c),
            Start::Oldest => None,
            Start::Snapshot => {
                let (jobs, at) = self.store.snapshot_all().await.map_err(WatchEnd::Store)?;
                let mut count = 0;
                for job in jobs.into_iter().filter(|j| scope.matches_job(j)) {
                    count += 1;
                    send(out, at, admin::watch_response::Item::Job(job)).await?;
                }
                send(
                    out,
                    at,
                    admin::watch_response::Item::SnapshotEnd(admin::SnapshotEnd { jobs: count }),
                )
                .await?;
                at
            }
        };
        let catch_up = start != Start::Live;
        let mut tries = 0;
        loop {
            if catch_up {
                pos = self
                    .catch_up(scope, pos, start == Start::Oldest, out)
                    .await?;
            }
            // Live: what the tail broadcasts, skipping what the catch-up already sent.
            let mut delivered_live = false;
            loop {
                match rx.recv().await {
                    Ok(item) => {
                        if pos.is_some_and(|p| item.id <= p) {
                            continue;
                        }
                        deliver(scope, &item, out).await?;
                        pos = Some(item.id);
                        delivered_live = true;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if catch_up && !delivered_live && tries < CATCH_UP_TRIES {
                            // Fell behind while catching up: read the log again from here.
                            tries += 1;
                            rx = self.tx.subscribe();
                            break;
                        }
                        return Err(WatchEnd::Lagged { cursor: pos });
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(WatchEnd::Shutdown),
                }
            }
        }
    }

    /// Reads the log after `pos` (or from the oldest) until its end; returns the new
    /// position.
    async fn catch_up(
        &self,
        scope: &Scope,
        mut pos: Option<EntryId>,
        from_oldest: bool,
        out: &mpsc::Sender<admin::WatchResponse>,
    ) -> Result<Option<EntryId>, WatchEnd> {
        let mut reader = self.store.log_reader().await.map_err(WatchEnd::Store)?;
        let mut first = true;
        loop {
            let items = reader.read(pos, None).await.map_err(WatchEnd::Store)?;
            // Checked after the read: retention only removes the oldest entries.
            let trimmed = reader.trimmed().await.map_err(WatchEnd::Store)?;
            if let (Some(p), Some(t)) = (pos, trimmed)
                && p < t
                && !(first && from_oldest)
            {
                return Err(WatchEnd::Trimmed { trimmed: t });
            }
            first = false;
            if items.is_empty() {
                return Ok(pos);
            }
            for item in &items {
                deliver(scope, item, out).await?;
                pos = Some(item.id);
            }
        }
    }
}

async fn send(
    out: &mpsc::Sender<admin::WatchResponse>,
    at: Option<EntryId>,
    item: admin::watch_response::Item,
) -> Result<(), WatchEnd> {
    out.send(admin::WatchResponse {
        cursor: at.map(|a| a.to_string()).unwrap_or_default(),
        item: Some(item),
    })
    .await
    .map_err(|_| WatchEnd::Left)
}

async fn deliver(
    scope: &Scope,
    item: &LogItem,
    out: &mpsc::Sender<admin::WatchResponse>,
) -> Result<(), WatchEnd> {
    match &item.kind {
        LogKind::Event(e) if scope.matches_event(&item.spoke, e) => {
            send(
                out,
                Some(item.id),
                admin::watch_response::Item::Event(e.as_ref().clone()),
            )
            .await
        }
        LogKind::Event(_) => Ok(()),
        LogKind::Gap if scope.may_involve(&item.spoke) => Err(WatchEnd::Gap {
            spoke: item.spoke.clone(),
            cursor: item.id,
        }),
        LogKind::Gap => Ok(()),
    }
}
