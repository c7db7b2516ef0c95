//! The single writer thread: group commit with a synced WAL.
//!
//! Every write of the node passes through here, which makes id assignment (series
//! ordinals, dense stack ids, sequence numbers) a single-threaded, deterministic
//! step. Requests that arrive while a commit is in flight are committed together in
//! the next `WriteBatch` (one fsync for many writes). A request is answered only after
//! its batch is durable. Retention runs as a job on the same thread, so it never
//! races a write to the series it expires.
//!
//! Invariant: the in-memory caches and counters only ever describe committed data
//! or data in the batch being committed; when a commit fails they are rebuilt from
//! RocksDB before the next batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_model::time::now_unix_ms;
use roaring::RoaringBitmap;
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot};

use super::blocks::encode_block;
use super::committed::CommittedContent;
use super::keys::{self, GroupId, SymbolKind};
use super::postings::{add_operand, remove_operand};
use super::symbols::{encode_stack, ContentIdHash};
use super::{SeriesRecord, Storage};
use crate::error::NodeError;
use crate::ingest::{AcceptedWrite, PreparedWrite};
use crate::metrics::Metrics;

/// Most write requests committed in one batch.
const MAX_JOBS_PER_COMMIT: usize = 256;
/// How long idempotency keys are remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What a write stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriteOutcome {
    /// The idempotency key was already stored; nothing was written again.
    pub duplicate: bool,
    /// pprof payloads stored.
    pub profiles: u64,
    /// Stack samples stored.
    pub samples: u64,
    /// Distinct series written.
    pub series: u64,
    /// Profile type ids written.
    pub profile_types: Vec<String>,
}

/// What a retention pass drops, decided once (by a group's leader, which proposes it) so that every
/// replica applies the same cutoffs at the same log position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expiry {
    /// Sample partitions that end at or before this partition's start are deleted, and series left
    /// without a newer sample.
    pub samples_before_unix_ms: i64,
    /// Idempotency keys accepted before this time are forgotten: a retry of their payloads is stored
    /// again.
    pub idempotency_keys_before_unix_ms: i64,
}

impl Expiry {
    /// The expiry of a pass at `now_unix_ms` that keeps `retention` of samples and
    /// [`IDEMPOTENCY_WINDOW`] of idempotency keys.
    pub fn at(now_unix_ms: i64, retention: Duration) -> Expiry {
        let millis = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Expiry {
            samples_before_unix_ms: now_unix_ms.saturating_sub(millis(retention)),
            idempotency_keys_before_unix_ms: now_unix_ms.saturating_sub(millis(IDEMPOTENCY_WINDOW)),
        }
    }
}

/// What a retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetentionOutcome {
    /// Series whose last sample was older than the cutoff.
    pub series_expired: u64,
    /// Idempotency keys older than the window.
    pub idempotency_keys_expired: u64,
}

/// Replies to a write job: one outcome per write of the job.
type WriteReply = oneshot::Sender<Result<Vec<WriteOutcome>, NodeError>>;
/// `meta` column family records committed with a job's writes.
pub type MetaPuts = Vec<(Vec<u8>, Vec<u8>)>;
/// A queued write job: writes, extra records, reply.
type QueuedJob = (Vec<AcceptedWrite>, MetaPuts, WriteReply);

enum Job {
    Write {
        writes: Vec<AcceptedWrite>,
        /// Extra `meta` records committed in the same batch (a raft group's applied
        /// log id): they become durable together with the writes or not at all.
        meta_puts: MetaPuts,
        reply: WriteReply,
    },
    Retention {
        expiry: Expiry,
        /// Extra `meta` records committed atomically with the expiry (a raft group's applied log
        /// id), as for writes.
        meta_puts: MetaPuts,
        reply: oneshot::Sender<Result<RetentionOutcome, NodeError>>,
    },
    /// Forget every cache and counter and read them again (after a raft snapshot
    /// replaced the group's data underneath the writer).
    Reload {
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
}

/// Handle to the writer thread.
pub struct Writer {
    sender: parking_lot::Mutex<Option<mpsc::Sender<Job>>>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    committed: Arc<CommittedContent>,
}

impl Writer {
    /// Starts the writer thread for `group`; `queue_depth` bounds the requests
    /// waiting for a commit (beyond it, writes get [`NodeError::Overloaded`]).
    pub fn start(
        storage: Storage,
        group: GroupId,
        queue_depth: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Writer, NodeError> {
        Self::start_with(storage, group, queue_depth, metrics, true)
    }

    /// Starts the writer of a raft group's state machine. Its commits are not
    /// fsynced: the group's raft log already holds every applied entry durably, a
    /// replica that lost unsynced applies (power loss) re-applies them from the log
    /// (whose purge syncs the WAL first), and dedup keys make re-applying harmless.
    pub fn start_log_backed(
        storage: Storage,
        group: GroupId,
        queue_depth: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Writer, NodeError> {
        Self::start_with(storage, group, queue_depth, metrics, false)
    }

    fn start_with(
        storage: Storage,
        group: GroupId,
        queue_depth: usize,
        metrics: Arc<Metrics>,
        sync_commits: bool,
    ) -> Result<Writer, NodeError> {
        let mut state = WriterState::load(storage, group, metrics.clone())?;
        state.sync_commits = sync_commits;
        let committed = state.committed.clone();
        let (sender, receiver) = mpsc::channel(queue_depth.max(1));
        let thread = std::thread::Builder::new()
            .name(format!("kiln-writer-{group}"))
            .spawn(move || state.run(receiver))
            .map_err(|error| NodeError::Internal(format!("cannot start the writer thread: {error}")))?;
        Ok(Writer {
            sender: parking_lot::Mutex::new(Some(sender)),
            thread: parking_lot::Mutex::new(Some(thread)),
            metrics,
            committed,
        })
    }

    /// The stacks and symbols this group has committed (a bounded subset), for
    /// stripping them from proposals; see [`CommittedContent`] for why that is safe.
    pub fn committed_content(&self) -> Arc<CommittedContent> {
        self.committed.clone()
    }

    fn sender(&self) -> Result<mpsc::Sender<Job>, NodeError> {
        self.sender.lock().clone().ok_or(NodeError::ShuttingDown)
    }

    /// Stores a prepared write, accepted now; returns once it is durable.
    pub async fn write(&self, write: PreparedWrite) -> Result<WriteOutcome, NodeError> {
        let accepted = AcceptedWrite {
            write,
            accepted_unix_ms: now_unix_ms(),
        };
        let mut outcomes = self.apply(vec![accepted], Vec::new()).await?;
        outcomes
            .pop()
            .ok_or_else(|| NodeError::Internal("the writer answered no outcome".into()))
    }

    /// Stores `writes` and `meta_puts` in one atomic batch, in order, and answers
    /// one outcome per write once the batch is durable. Raft state machines use the
    /// `meta_puts` to record their applied log id atomically with the data.
    pub async fn apply(
        &self,
        writes: Vec<AcceptedWrite>,
        meta_puts: MetaPuts,
    ) -> Result<Vec<WriteOutcome>, NodeError> {
        let sender = self.sender()?;
        let (reply, answer) = oneshot::channel();
        let job = Job::Write {
            writes,
            meta_puts,
            reply,
        };
        // Wait a little for room so short bursts queue; beyond that, push back.
        match sender.send_timeout(job, Duration::from_secs(2)).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                self.metrics.rejected_overload.inc();
                return Err(NodeError::Overloaded(
                    "the write queue is full; retry with backoff".into(),
                ));
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(NodeError::ShuttingDown),
        }
        answer.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Drops every cache and counter of the writer and reads them again from
    /// RocksDB; needed after the group's data was replaced by a snapshot.
    pub async fn reload(&self) -> Result<(), NodeError> {
        let sender = self.sender()?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Job::Reload { reply })
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Drops what `expiry` names: whole sample partitions, series with no newer sample, and
    /// idempotency keys accepted before its key cutoff; `meta_puts` are committed in the same
    /// atomic batch. Writes queued before it are committed first.
    pub async fn retention(
        &self,
        expiry: Expiry,
        meta_puts: MetaPuts,
    ) -> Result<RetentionOutcome, NodeError> {
        let sender = self.sender()?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Job::Retention {
                expiry,
                meta_puts,
                reply,
            })
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Stops accepting writes, commits everything queued, and waits for the thread.
    pub fn shutdown(&self) {
        drop(self.sender.lock().take());
        if let Some(thread) = self.thread.lock().take() {
            if thread.join().is_err() {
                tracing::error!("the writer thread panicked");
            }
        }
    }
}

struct WriterState {
    storage: Storage,
    group: GroupId,
    metrics: Arc<Metrics>,
    next_ordinal: u32,
    next_stack_id: u64,
    next_sequence: u64,
    series_ordinals: HashMap<u64, u32, ContentIdHash>,
    stack_ids: HashMap<u64, u64, ContentIdHash>,
    known_symbols: HashSet<(u8, u64), ContentIdHash>,
    last_seen: HashMap<u32, i64>,
    cache_capacity: usize,
    /// fsync every commit (false only when a raft log makes the data durable).
    sync_commits: bool,
    /// Content the group holds once the batch being staged commits.
    committed: Arc<CommittedContent>,
    /// Stack hashes the batch being staged stores or references.
    staged_stacks: Vec<u64>,
    /// Symbol ids the batch being staged stores or references.
    staged_symbols: Vec<(u8, u64)>,
}

fn read_counter(storage: &Storage, key: &[u8]) -> Result<u64, NodeError> {
    match storage.get(keys::CF_META, key)? {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| NodeError::Corrupt("counter is not 8 bytes".into()))?;
            Ok(u64::from_be_bytes(array))
        }
    }
}

fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, NodeError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| NodeError::Corrupt(format!("{what} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(array))
}

impl WriterState {
    fn load(storage: Storage, group: GroupId, metrics: Arc<Metrics>) -> Result<WriterState, NodeError> {
        let cache_capacity = storage.options().symbol_cache_entries.max(1024);
        let mut state = WriterState {
            storage,
            group,
            metrics,
            next_ordinal: 0,
            next_stack_id: 0,
            next_sequence: 0,
            series_ordinals: HashMap::default(),
            stack_ids: HashMap::default(),
            known_symbols: HashSet::default(),
            last_seen: HashMap::new(),
            cache_capacity,
            sync_commits: true,
            committed: Arc::new(CommittedContent::new(cache_capacity * 4)),
            staged_stacks: Vec::new(),
            staged_symbols: Vec::new(),
        };
        state.reload()?;
        Ok(state)
    }

    fn reload(&mut self) -> Result<(), NodeError> {
        self.next_ordinal = u32::try_from(read_counter(&self.storage, &keys::next_ordinal_key(self.group))?)
            .map_err(|_| NodeError::Corrupt("series ordinal counter overflows u32".into()))?;
        self.next_stack_id = read_counter(&self.storage, &keys::next_stack_id_key(self.group))?;
        self.next_sequence = read_counter(&self.storage, &keys::next_sequence_key(self.group))?;
        self.series_ordinals.clear();
        self.stack_ids.clear();
        self.known_symbols.clear();
        self.last_seen.clear();
        self.committed.clear();
        self.staged_stacks.clear();
        self.staged_symbols.clear();
        Ok(())
    }

    fn run(mut self, mut receiver: mpsc::Receiver<Job>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut jobs = Vec::new();
            let mut pending = Some(first);
            while let Some(job) = pending.take() {
                match job {
                    Job::Write {
                        writes,
                        meta_puts,
                        reply,
                    } => jobs.push((writes, meta_puts, reply)),
                    Job::Retention {
                        expiry,
                        meta_puts,
                        reply,
                    } => {
                        // Commit what came before, then expire alone.
                        self.commit_jobs(std::mem::take(&mut jobs));
                        let result = self.expire(expiry, meta_puts);
                        if result.is_err() {
                            self.reload_or_log();
                        }
                        let _ = reply.send(result);
                    }
                    Job::Reload { reply } => {
                        self.commit_jobs(std::mem::take(&mut jobs));
                        let _ = reply.send(self.reload());
                    }
                }
                if jobs.len() < MAX_JOBS_PER_COMMIT {
                    pending = receiver.try_recv().ok();
                }
            }
            self.commit_jobs(jobs);
        }
        if let Err(error) = self.storage.flush() {
            tracing::error!(%error, "flushing at shutdown failed");
        }
    }

    fn reload_or_log(&mut self) {
        if let Err(error) = self.reload() {
            tracing::error!(%error, "reloading writer state failed");
        }
    }

    fn commit_jobs(&mut self, jobs: Vec<QueuedJob>) {
        if jobs.is_empty() {
            return;
        }
        let started = Instant::now();
        let mut batch = WriteBatch::default();
        let mut keys_in_batch: HashSet<String> = HashSet::new();
        let mut outcomes: Vec<Vec<WriteOutcome>> = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut staging_error = None;
        let mut write_count = 0usize;
        for (writes, meta_puts, reply) in jobs {
            replies.push(reply);
            if staging_error.is_some() {
                continue;
            }
            let mut job_outcomes = Vec::with_capacity(writes.len());
            for write in writes {
                write_count += 1;
                match self.stage(&mut batch, write, &mut keys_in_batch) {
                    Ok(outcome) => job_outcomes.push(outcome),
                    Err(error) => {
                        staging_error = Some(error);
                        break;
                    }
                }
            }
            match self.storage.cf(keys::CF_META) {
                Ok(meta) => {
                    for (key, value) in meta_puts {
                        batch.put_cf(meta, key, value);
                    }
                }
                Err(error) => staging_error = Some(error),
            }
            outcomes.push(job_outcomes);
        }
        let result = match staging_error {
            Some(error) => Err(error),
            None => self.stage_counters(&mut batch).and_then(|()| {
                let mut options = WriteOptions::default();
                options.set_sync(self.sync_commits);
                self.storage
                    .db()
                    .write_opt(batch, &options)
                    .map_err(NodeError::from)
            }),
        };
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.commit_batch_size.observe(write_count as f64);
        match result {
            Ok(()) => {
                self.committed.record(&self.staged_stacks, &self.staged_symbols);
                self.staged_stacks.clear();
                self.staged_symbols.clear();
                // Ingest counters are kept where a write is acknowledged (once per
                // request), not here, where every replica applies every part.
                for (reply, job_outcomes) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(job_outcomes));
                }
            }
            Err(error) => {
                self.staged_stacks.clear();
                self.staged_symbols.clear();
                tracing::error!(%error, "group commit failed; no write of the batch was stored");
                self.reload_or_log();
                let message = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(NodeError::Internal(format!("write not stored: {message}"))));
                }
            }
        }
    }

    fn stage_counters(&self, batch: &mut WriteBatch) -> Result<(), NodeError> {
        let meta = self.storage.cf(keys::CF_META)?;
        batch.put_cf(
            meta,
            keys::next_ordinal_key(self.group),
            u64::from(self.next_ordinal).to_be_bytes(),
        );
        batch.put_cf(
            meta,
            keys::next_stack_id_key(self.group),
            self.next_stack_id.to_be_bytes(),
        );
        batch.put_cf(
            meta,
            keys::next_sequence_key(self.group),
            self.next_sequence.to_be_bytes(),
        );
        Ok(())
    }

    fn is_stored_key(&self, idempotency_key: &str) -> Result<bool, NodeError> {
        Ok(self
            .storage
            .get(keys::CF_META, &keys::idempotency_key(self.group, idempotency_key))?
            .is_some())
    }

    fn stage(
        &mut self,
        batch: &mut WriteBatch,
        accepted: AcceptedWrite,
        keys_in_batch: &mut HashSet<String>,
    ) -> Result<WriteOutcome, NodeError> {
        let AcceptedWrite {
            write,
            accepted_unix_ms,
        } = accepted;
        // Deduplication is per pprof payload (its `dedup_key`: batch key + labels +
        // payload), not per request: a batch may reach a group whole or in parts,
        // directly or forwarded, and a retry must store each payload once whatever
        // the path.
        let mut fresh_payloads: HashSet<&str> = HashSet::new();
        let mut seen_payloads: HashSet<&str> = HashSet::new();
        for profile in &write.profiles {
            let key = profile.dedup_key.as_str();
            if !seen_payloads.insert(key) {
                continue;
            }
            if !keys_in_batch.contains(key) && !self.is_stored_key(key)? {
                fresh_payloads.insert(key);
            }
        }
        if fresh_payloads.is_empty() {
            return Ok(WriteOutcome {
                duplicate: true,
                ..WriteOutcome::default()
            });
        }
        let storage = self.storage.clone();
        let samples_cf = storage.cf(keys::CF_SAMPLES)?;
        let symbols_cf = storage.cf(keys::CF_SYMBOLS)?;
        let meta_cf = storage.cf(keys::CF_META)?;
        let series_cf = storage.cf(keys::CF_SERIES)?;
        for symbol in &write.symbols {
            self.staged_symbols.push((symbol.kind as u8, symbol.id));
            if self.known_symbols.len() >= self.cache_capacity * 4 {
                self.known_symbols.clear();
            }
            // Content-addressed: writing a known symbol again would be harmless, the
            // cache only saves the write.
            if self.known_symbols.insert((symbol.kind as u8, symbol.id)) {
                batch.put_cf(
                    symbols_cf,
                    keys::symbol_key(self.group, symbol.kind, symbol.id),
                    &symbol.encoded,
                );
            }
        }
        let mut series_written = HashSet::new();
        let mut profile_types = Vec::new();
        let mut samples_written = 0u64;
        let mut pprofs_written: HashSet<u32> = HashSet::new();
        for profile in &write.profiles {
            if !fresh_payloads.contains(profile.dedup_key.as_str()) {
                continue;
            }
            samples_written += profile.values.len() as u64;
            pprofs_written.insert(profile.pprof);
            let ordinal = self.ordinal_for(batch, profile)?;
            series_written.insert(ordinal);
            let type_id = profile.profile_type.id();
            if !profile_types.contains(&type_id) {
                profile_types.push(type_id);
            }
            let mut samples = Vec::with_capacity(profile.values.len());
            for (stack_index, value) in &profile.values {
                let stack = &profile.stacks[*stack_index as usize];
                let dense = self.stack_id_for(batch, stack.hash, stack.encoded.as_deref())?;
                samples.push((dense, *value));
            }
            // Distinct stack hashes get distinct dense ids, so ids are unique here,
            // as encode_block requires.
            let block = encode_block(profile.duration_nanos, &mut samples);
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let partition = keys::partition_of(profile.time_unix_nanos);
            batch.put_cf(
                samples_cf,
                keys::sample_key(self.group, partition, ordinal, profile.time_unix_nanos, sequence),
                block,
            );
            let sample_millis = profile.time_unix_nanos.div_euclid(1_000_000);
            let previous = match self.last_seen.get(&ordinal) {
                Some(previous) => Some(*previous),
                None => self.storage.series_last_seen(self.group, ordinal)?,
            };
            if previous.is_none_or(|previous| previous < sample_millis) {
                if self.last_seen.len() >= self.cache_capacity {
                    self.last_seen.clear();
                }
                self.last_seen.insert(ordinal, sample_millis);
                batch.put_cf(
                    series_cf,
                    keys::series_last_seen_key(self.group, ordinal),
                    sample_millis.to_be_bytes(),
                );
            }
        }
        // The acceptance time from the log entry, not this replica's clock: see `AcceptedWrite`.
        let stored_at = accepted_unix_ms.to_be_bytes();
        for key in &fresh_payloads {
            batch.put_cf(meta_cf, keys::idempotency_key(self.group, key), stored_at);
            keys_in_batch.insert((*key).to_string());
        }
        Ok(WriteOutcome {
            duplicate: false,
            profiles: pprofs_written.len() as u64,
            samples: samples_written,
            series: series_written.len() as u64,
            profile_types,
        })
    }

    fn ordinal_for(
        &mut self,
        batch: &mut WriteBatch,
        profile: &crate::ingest::PreparedProfile,
    ) -> Result<u32, NodeError> {
        if let Some(ordinal) = self.series_ordinals.get(&profile.series_hash) {
            return Ok(*ordinal);
        }
        let by_hash = keys::series_by_hash_key(self.group, profile.series_hash);
        let ordinal = match self.storage.get(keys::CF_SERIES, &by_hash)? {
            Some(bytes) => SeriesRecord::decode(&bytes)?.ordinal,
            None => {
                let ordinal = self.next_ordinal;
                self.next_ordinal = self
                    .next_ordinal
                    .checked_add(1)
                    .ok_or_else(|| NodeError::Internal("series ordinals exhausted".into()))?;
                let record = SeriesRecord {
                    ordinal,
                    profile_type: profile.profile_type.clone(),
                    labels: profile.labels.clone(),
                };
                let storage = self.storage.clone();
                let series_cf = storage.cf(keys::CF_SERIES)?;
                batch.put_cf(series_cf, &by_hash, record.encode());
                batch.put_cf(
                    series_cf,
                    keys::series_by_ordinal_key(self.group, ordinal),
                    profile.series_hash.to_be_bytes(),
                );
                let postings_cf = storage.cf(keys::CF_POSTINGS)?;
                let operand = add_operand(&RoaringBitmap::from_iter([ordinal]));
                batch.merge_cf(
                    postings_cf,
                    keys::posting_key(self.group, keys::PROFILE_TYPE_POSTING, &record.profile_type.id()),
                    &operand,
                );
                for (name, value) in record.labels.pairs() {
                    batch.merge_cf(postings_cf, keys::posting_key(self.group, name, value), &operand);
                }
                self.metrics.series_created.inc();
                ordinal
            }
        };
        if self.series_ordinals.len() >= self.cache_capacity {
            self.series_ordinals.clear();
        }
        self.series_ordinals.insert(profile.series_hash, ordinal);
        Ok(ordinal)
    }

    /// The dense id of the stack with content hash `hash`, creating it from `encoded`
    /// when the group does not store it yet. `encoded` is `None` when the proposer
    /// stripped a stack the group already stored (see [`CommittedContent`]).
    fn stack_id_for(
        &mut self,
        batch: &mut WriteBatch,
        hash: u64,
        encoded: Option<&[u8]>,
    ) -> Result<u64, NodeError> {
        self.staged_stacks.push(hash);
        if let Some(id) = self.stack_ids.get(&hash) {
            return Ok(*id);
        }
        let by_hash = keys::symbol_key(self.group, SymbolKind::StackByHash, hash);
        let id = match self.storage.get(keys::CF_SYMBOLS, &by_hash)? {
            Some(bytes) => decode_u64(&bytes, "stack id")?,
            None => {
                let id = self.next_stack_id;
                self.next_stack_id += 1;
                let storage = self.storage.clone();
                let symbols_cf = storage.cf(keys::CF_SYMBOLS)?;
                let placeholder;
                let record = match encoded {
                    Some(encoded) => encoded,
                    None => {
                        // Stripping guarantees this never happens. Every replica sees
                        // the same state here, so all take this branch alike; failing
                        // the apply would stop the group instead.
                        debug_assert!(false, "stack {hash:016x} stripped from an entry but not stored");
                        tracing::error!(
                            group = self.group,
                            stack = format_args!("{hash:016x}"),
                            "a stripped stack is not stored in the group; its samples are kept under an empty stack"
                        );
                        self.metrics.stack_content_missing.inc();
                        placeholder = encode_stack(&[]);
                        placeholder.as_slice()
                    }
                };
                batch.put_cf(symbols_cf, &by_hash, id.to_be_bytes());
                batch.put_cf(
                    symbols_cf,
                    keys::symbol_key(self.group, SymbolKind::Stack, id),
                    record,
                );
                id
            }
        };
        if self.stack_ids.len() >= self.cache_capacity * 2 {
            self.stack_ids.clear();
        }
        self.stack_ids.insert(hash, id);
        Ok(id)
    }

    fn expire(&mut self, expiry: Expiry, meta_puts: MetaPuts) -> Result<RetentionOutcome, NodeError> {
        let cutoff_unix_ms = expiry.samples_before_unix_ms;
        let mut outcome = RetentionOutcome::default();
        let mut batch = WriteBatch::default();
        let storage = self.storage.clone();
        // Whole partitions that end at or before the cutoff.
        let first_kept_partition = keys::partition_of(cutoff_unix_ms.saturating_mul(1_000_000));
        let samples_cf = storage.cf(keys::CF_SAMPLES)?;
        let range_start = keys::sample_partition_prefix(self.group, i64::MIN);
        let range_end = keys::sample_partition_prefix(self.group, first_kept_partition);
        batch.delete_range_cf(samples_cf, &range_start, &range_end);

        // Series with no sample at or after the cutoff.
        let mut expired: Vec<u32> = Vec::new();
        self.storage.scan_prefix(
            keys::CF_SERIES,
            &keys::series_last_seen_prefix(self.group),
            |key, value| {
                let ordinal = keys::decode_series_last_seen_key(key)
                    .ok_or_else(|| NodeError::Corrupt("last-seen key too short".into()))?;
                let last_seen = decode_u64(value, "last-seen time")? as i64;
                if last_seen < first_kept_partition {
                    expired.push(ordinal);
                }
                Ok(true)
            },
        )?;
        let series_cf = storage.cf(keys::CF_SERIES)?;
        let postings_cf = storage.cf(keys::CF_POSTINGS)?;
        for ordinal in expired {
            let Some(record) = self.storage.series_by_ordinal(self.group, ordinal)? else {
                batch.delete_cf(series_cf, keys::series_last_seen_key(self.group, ordinal));
                continue;
            };
            let hash = kiln_model::labels::series_hash(&record.profile_type, &record.labels);
            batch.delete_cf(series_cf, keys::series_by_hash_key(self.group, hash));
            batch.delete_cf(series_cf, keys::series_by_ordinal_key(self.group, ordinal));
            batch.delete_cf(series_cf, keys::series_last_seen_key(self.group, ordinal));
            let operand = remove_operand(&RoaringBitmap::from_iter([ordinal]));
            batch.merge_cf(
                postings_cf,
                keys::posting_key(self.group, keys::PROFILE_TYPE_POSTING, &record.profile_type.id()),
                &operand,
            );
            for (name, value) in record.labels.pairs() {
                batch.merge_cf(postings_cf, keys::posting_key(self.group, name, value), &operand);
            }
            self.series_ordinals.remove(&hash);
            self.last_seen.remove(&ordinal);
            outcome.series_expired += 1;
        }

        let key_cutoff = expiry.idempotency_keys_before_unix_ms;
        let meta_cf = storage.cf(keys::CF_META)?;
        let mut expired_keys = Vec::new();
        self.storage.scan_prefix(
            keys::CF_META,
            &keys::idempotency_prefix(self.group),
            |key, value| {
                if (decode_u64(value, "idempotency time")? as i64) < key_cutoff {
                    expired_keys.push(key.to_vec());
                }
                Ok(true)
            },
        )?;
        for key in &expired_keys {
            batch.delete_cf(meta_cf, key);
        }
        outcome.idempotency_keys_expired = expired_keys.len() as u64;
        for (key, value) in meta_puts {
            batch.put_cf(meta_cf, key, value);
        }

        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.storage.db().write_opt(batch, &options)?;
        self.storage
            .db()
            .compact_range_cf(samples_cf, Some(&range_start), Some(&range_end));
        self.metrics.series_expired.inc_by(outcome.series_expired);
        Ok(outcome)
    }
}
