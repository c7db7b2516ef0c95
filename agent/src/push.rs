//! Sending batches to Kiln: every batch goes through the [`Spool`] first, and one pusher task sends the
//! oldest spooled batch until the node acknowledges it, then deletes it. So batches are delivered in
//! order, survive restarts, and a node outage only grows the (bounded) spool.
//!
//! The transport is behind [`Sink`]; [`KilnSink`] sends through the cluster's routing client, which
//! splits a batch by shard group and sends each part to that group's leader (any node forwards when the
//! routing table is stale). A batch keeps its idempotency key whichever path it takes, and nodes
//! deduplicate per payload, so a spooled batch replayed after a restart is stored once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_client::{ConnectOptions, RetryPolicy, RoutingClient};
use kiln_proto::kiln::v1::{WriteRequest, WriteResponse};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolError};

/// How often an idle pusher looks at the spool without being woken (it is woken at every append).
const IDLE_RECHECK: Duration = Duration::from_secs(60);

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The node could not take the batch now (unreachable, overloaded, timed out): keep it and retry.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// The node refused the batch (bad data): retrying cannot help.
    #[error("node rejected the batch: {0}")]
    Rejected(String),
}

/// Where batches go. Implementations retry transient failures themselves as they see fit; an
/// `Unavailable` result makes the pusher keep the batch and try again later with the same idempotency key.
pub trait Sink: Send + Sync + 'static {
    /// Stores one batch (idempotently: the same key twice is stored once).
    fn write(&self, request: WriteRequest) -> impl Future<Output = Result<WriteResponse, PushError>> + Send;
}

/// A [`Sink`] that writes to the cluster through [`RoutingClient`], seeded by one node's address
/// (retries with backoff and jitter, lazy reconnection, parts sent to group leaders).
#[derive(Clone)]
pub struct KilnSink {
    client: Arc<RoutingClient>,
}

impl std::fmt::Debug for KilnSink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KilnSink")
            .field("seed", &self.client.seed().address())
            .finish()
    }
}

impl KilnSink {
    /// A sink for `address` (`host:port` or `http://host:port`). Connects lazily: a node that is down at
    /// start only delays delivery.
    pub fn new(address: &str) -> Result<KilnSink, kiln_client::ClientError> {
        let options = ConnectOptions {
            connect_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(30),
            // A short burst of retries rides over a blip; a longer outage is the spool's job.
            write_retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                multiplier: 2.0,
            },
            ..ConnectOptions::default()
        };
        Ok(KilnSink {
            client: Arc::new(RoutingClient::new(address, options)?),
        })
    }
}

impl Sink for KilnSink {
    async fn write(&self, request: WriteRequest) -> Result<WriteResponse, PushError> {
        self.client
            .write(request)
            .await
            .map_err(|error| match error.grpc_code() {
                Some(code) if kiln_client::client::is_retryable(code) => {
                    PushError::Unavailable(error.to_string())
                }
                // Cancelled / Unknown / Internal can come from a connection torn mid-call: retry those too.
                Some(
                    tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Aborted,
                ) => PushError::Unavailable(error.to_string()),
                _ => PushError::Rejected(error.to_string()),
            })
    }
}

/// The spool plus a wake-up for the pusher. Cloned by every producer (CPU profiler, scrapers).
#[derive(Clone)]
pub struct Outbox {
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    metrics: Metrics,
}

impl Outbox {
    /// Wraps an opened spool.
    pub fn new(spool: Spool, metrics: Metrics) -> Outbox {
        metrics.spool_bytes.set(spool.bytes());
        metrics.spool_batches.set(spool.len() as u64);
        Outbox {
            spool: Arc::new(Mutex::new(spool)),
            wake: Arc::new(Notify::new()),
            metrics,
        }
    }

    /// Spools a batch (durably, on the blocking pool) and wakes the pusher. Fills in an idempotency key
    /// when the batch has none, so that retries after a restart are deduplicated too.
    pub async fn send(&self, mut request: WriteRequest) -> Result<(), SpoolError> {
        if request.idempotency_key.is_empty() {
            request.idempotency_key = kiln_client::new_idempotency_key();
        }
        let spool = self.spool.clone();
        let metrics = self.metrics.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut spool = spool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let outcome = spool.append(&request);
            metrics.spool_bytes.set(spool.bytes());
            metrics.spool_batches.set(spool.len() as u64);
            outcome
        })
        .await
        .map_err(|join| SpoolError::Io {
            path: "spool".into(),
            source: std::io::Error::other(join.to_string()),
        })??;
        if outcome.dropped_batches > 0 {
            tracing::warn!(
                batches = outcome.dropped_batches,
                bytes = outcome.dropped_bytes,
                "spool full: dropped the oldest batches"
            );
            Metrics::kind(&self.metrics.dropped_batches, "spool_full").inc_by(outcome.dropped_batches);
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Batches waiting.
    pub fn pending(&self) -> usize {
        self.spool.lock().map(|spool| spool.len()).unwrap_or(0)
    }

    async fn with_spool<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let spool = self.spool.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let mut spool = spool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let result = work(&mut spool);
            metrics.spool_bytes.set(spool.bytes());
            metrics.spool_batches.set(spool.len() as u64);
            result
        })
        .await
        .map_err(|join| SpoolError::Io {
            path: "spool".into(),
            source: std::io::Error::other(join.to_string()),
        })?
    }

    /// Sends spooled batches, oldest first, until `shutdown` resolves; then makes one last pass bounded
    /// by `final_flush` and leaves whatever remains in the spool for the next run.
    pub async fn run_pusher<S: Sink>(
        self,
        sink: S,
        shutdown: impl Future<Output = ()> + Send,
        final_flush: Duration,
    ) {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new();
        loop {
            let sent = tokio::select! {
                _ = &mut shutdown => break,
                progress = self.push_one(&sink) => progress,
            };
            match sent {
                Progress::Sent => backoff.reset(),
                Progress::Idle => {
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = self.wake.notified() => {}
                        // Belt and braces only: `notify_one` leaves a permit when nobody waits, so
                        // no wake-up is missed. Each pass reads the spool's directory, so not often.
                        _ = tokio::time::sleep(IDLE_RECHECK) => {}
                    }
                }
                Progress::Failed => {
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        let deadline = Instant::now() + final_flush;
        while Instant::now() < deadline {
            match tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.push_one(&sink),
            )
            .await
            {
                Ok(Progress::Sent) => continue,
                _ => break,
            }
        }
        let left = self.pending();
        if left > 0 {
            tracing::info!(
                batches = left,
                "leaving unsent batches in the spool for the next run"
            );
        }
    }

    async fn push_one<S: Sink>(&self, sink: &S) -> Progress {
        let oldest = match self.with_spool(|spool| spool.oldest()).await {
            Ok(Some(oldest)) => oldest,
            Ok(None) => {
                // Either empty, or a corrupt file was just dropped: look again before idling.
                return if self.pending() == 0 {
                    Progress::Idle
                } else {
                    Metrics::kind(&self.metrics.dropped_batches, "corrupt").inc();
                    Progress::Sent
                };
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the spool");
                return Progress::Failed;
            }
        };
        let (sequence, request) = oldest;
        let started = Instant::now();
        let outcome = sink.write(request).await;
        match outcome {
            Ok(response) => {
                self.metrics
                    .push_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.batches_pushed.inc();
                tracing::debug!(
                    sequence,
                    duplicate = response.duplicate,
                    profiles = response.profiles,
                    "pushed"
                );
                if let Err(error) = self.with_spool(move |spool| spool.remove(sequence)).await {
                    tracing::error!(%error, "cannot remove a pushed batch from the spool");
                    return Progress::Failed;
                }
                Progress::Sent
            }
            Err(PushError::Unavailable(message)) => {
                Metrics::kind(&self.metrics.push_errors, "unavailable").inc();
                tracing::warn!(%message, pending = self.pending(), "push failed; batch kept in the spool");
                Progress::Failed
            }
            Err(PushError::Rejected(message)) => {
                Metrics::kind(&self.metrics.push_errors, "rejected").inc();
                Metrics::kind(&self.metrics.dropped_batches, "rejected").inc();
                tracing::error!(%message, "the node rejected a batch; dropping it");
                if let Err(error) = self.with_spool(move |spool| spool.remove(sequence)).await {
                    tracing::error!(%error, "cannot remove a rejected batch from the spool");
                }
                Progress::Sent
            }
        }
    }
}

enum Progress {
    Sent,
    Idle,
    Failed,
}

/// Exponential backoff with jitter between pusher retries: 500 ms doubling to 30 s.
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { failures: 0 }
    }

    fn reset(&mut self) {
        self.failures = 0;
    }

    fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let policy = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
        };
        policy.backoff_with_jitter(self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A sink that is down until `up` is set, recording what it stored.
    struct FlakySink {
        up: Arc<AtomicBool>,
        stored: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for FlakySink {
        async fn write(&self, request: WriteRequest) -> Result<WriteResponse, PushError> {
            if !self.up.load(Ordering::SeqCst) {
                return Err(PushError::Unavailable("down".into()));
            }
            if request.idempotency_key == "bad" {
                return Err(PushError::Rejected("invalid".into()));
            }
            self.stored.lock().expect("lock").push(request.idempotency_key);
            Ok(WriteResponse::default())
        }
    }

    fn batch(key: &str) -> WriteRequest {
        WriteRequest {
            idempotency_key: key.into(),
            series: vec![],
        }
    }

    #[tokio::test]
    async fn outage_then_recovery_delivers_in_order_and_skips_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Metrics::new();
        let outbox = Outbox::new(Spool::open(dir.path(), 1 << 20).expect("spool"), metrics.clone());
        let up = Arc::new(AtomicBool::new(false));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let sink = FlakySink {
            up: up.clone(),
            stored: stored.clone(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let pusher = tokio::spawn(outbox.clone().run_pusher(
            sink,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));
        for key in ["a", "bad", "b", "c"] {
            outbox.send(batch(key)).await.expect("spool");
        }
        // Let the pusher fail against the down sink at least once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Metrics::kind(&metrics.push_errors, "unavailable").get() == 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(stored.lock().expect("lock").is_empty());
        assert_eq!(outbox.pending(), 4);
        up.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while outbox.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(*stored.lock().expect("lock"), vec!["a", "b", "c"]);
        assert_eq!(Metrics::kind(&metrics.dropped_batches, "rejected").get(), 1);
        let _ = stop.send(());
        pusher.await.expect("pusher");
    }
}
