//! [`RoutingClient`]: writes routed to shard-group leaders.
//!
//! The client keeps the cluster's routing table (hash slot -> group, group ->
//! leader address), computes each series' routing hash from its labels (every
//! profile type of a label set lives in one group, so no pprof is decoded here),
//! and sends each group's part of a batch straight to that group's leader. Any node accepts any write and
//! forwards what is not its own, so a stale table costs a hop, never a failure.
//! The table is fetched again when a leader cannot be reached and at least every
//! 30 seconds, which is how leader changes reach the client.
//!
//! Idempotency: every part carries the batch's own key. Nodes deduplicate each
//! pprof payload by (key, labels, payload), so a retried batch is stored exactly
//! once however it travels the second time: split or whole, routed or forwarded,
//! even when the first attempt stored only some parts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_model::labels::{routing_hash, LabelSet};
use kiln_proto::kiln::v1 as proto;
use parking_lot::{Mutex, RwLock};

use crate::client::{new_idempotency_key, ConnectOptions, KilnClient};
use crate::error::ClientError;

/// How old a routing table may get before it is fetched again.
const TABLE_MAX_AGE: Duration = Duration::from_secs(30);
/// Slots in the hash space (the top 12 bits of a series hash).
const SLOT_BITS: u32 = 12;

struct Table {
    slots: Vec<u32>,
    leaders: HashMap<u32, String>,
    fetched: Instant,
}

impl Table {
    fn group_of(&self, hash: u64) -> Option<u32> {
        self.slots.get((hash >> (64 - SLOT_BITS)) as usize).copied()
    }
}

/// A write client for a whole cluster. Cheap to share behind an `Arc`.
pub struct RoutingClient {
    seed: KilnClient,
    options: ConnectOptions,
    table: RwLock<Option<Arc<Table>>>,
    clients: Mutex<HashMap<String, KilnClient>>,
}

impl RoutingClient {
    /// A client that learns the cluster from the node at `seed` (any node).
    /// Connects lazily; fails only for a malformed address.
    pub fn new(seed: &str, options: ConnectOptions) -> Result<RoutingClient, ClientError> {
        Ok(RoutingClient {
            seed: KilnClient::connect_lazy(seed, options.clone())?,
            options,
            table: RwLock::new(None),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The node every request falls back to.
    pub fn seed(&self) -> &KilnClient {
        &self.seed
    }

    /// Fetches the routing table again.
    pub async fn refresh(&self) -> Result<(), ClientError> {
        let table = self.seed.routing_table().await?;
        let leaders = table
            .groups
            .into_iter()
            .filter(|route| !route.leader_address.is_empty())
            .map(|route| (route.group, route.leader_address))
            .collect();
        *self.table.write() = Some(Arc::new(Table {
            slots: table.slots,
            leaders,
            fetched: Instant::now(),
        }));
        Ok(())
    }

    async fn current_table(&self) -> Option<Arc<Table>> {
        let fresh = self
            .table
            .read()
            .as_ref()
            .filter(|table| table.fetched.elapsed() < TABLE_MAX_AGE)
            .cloned();
        if fresh.is_some() {
            return fresh;
        }
        // A node that predates routing (or is unreachable right now) still takes
        // writes: fall back to the seed.
        if let Err(error) = self.refresh().await {
            tracing::debug!(%error, "routing table unavailable; writing through the seed node");
        }
        self.table.read().clone()
    }

    fn client_for(&self, address: &str) -> Result<KilnClient, ClientError> {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let client = KilnClient::connect_lazy(address, self.options.clone())?;
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// The group of one series' label set, `None` when it cannot be told (invalid
    /// labels: the node will say why).
    fn group_of(table: &Table, labels: &[proto::Label]) -> Option<u32> {
        let labels = LabelSet::from_user_pairs(
            labels
                .iter()
                .map(|label| (label.name.clone(), label.value.clone())),
        )
        .ok()?;
        table.group_of(routing_hash(&labels))
    }

    /// Sends one batch, split by group, each part to its group's leader; answers
    /// when every part is acknowledged. Retries as [`KilnClient::write`] does.
    pub async fn write(&self, mut request: proto::WriteRequest) -> Result<proto::WriteResponse, ClientError> {
        if request.idempotency_key.is_empty() {
            request.idempotency_key = new_idempotency_key();
        }
        let Some(table) = self.current_table().await else {
            return self.seed.write(request).await;
        };
        // group (None: unknown) -> series of that part.
        let mut parts: BTreeMap<Option<u32>, Vec<proto::SeriesWrite>> = BTreeMap::new();
        for series in request.series {
            let group = Self::group_of(&table, &series.labels);
            parts.entry(group).or_default().push(series);
        }
        let key = request.idempotency_key;
        let sends = parts.into_iter().map(|(group, series)| {
            let table = table.clone();
            let key = key.clone();
            async move {
                let part = proto::WriteRequest {
                    idempotency_key: key,
                    series,
                };
                let leader = group.and_then(|group| table.leaders.get(&group).cloned());
                let Some(leader) = leader else {
                    return self.seed.write(part).await;
                };
                match self.client_for(&leader)?.write(part.clone()).await {
                    Ok(answer) => Ok(answer),
                    // The leader answered: another path would reach the same refusal.
                    Err(error) if error.is_refused_for_now() => Err(error),
                    Err(error) => {
                        // The leader moved or died: any node forwards, and the
                        // same key makes the second attempt safe.
                        tracing::debug!(%error, leader, "write to the group leader failed; retrying via the seed");
                        *self.table.write() = None;
                        self.seed.write(part).await
                    }
                }
            }
        });
        let answers = futures::future::try_join_all(sends).await?;
        let duplicate = !answers.is_empty() && answers.iter().all(|answer| answer.duplicate);
        let mut profile_types: Vec<String> = answers
            .iter()
            .flat_map(|answer| answer.profile_types.iter().cloned())
            .collect();
        profile_types.sort();
        profile_types.dedup();
        Ok(proto::WriteResponse {
            duplicate,
            profiles: answers.iter().map(|answer| answer.profiles).sum(),
            samples: answers.iter().map(|answer| answer.samples).sum(),
            series: answers.iter().map(|answer| answer.series).sum(),
            profile_types,
        })
    }
}
