//! Queries across groups: the coordinator (any node) validates the request once,
//! sends it to every data group, each answered by its leader after ReadIndex,
//! and finishes the answer from the partials.
//!
//! Rule: never silently partial. A group that cannot answer in time fails the
//! query with an error naming it, unless the caller set `allow_partial`; then the
//! answer's `Coverage` lists every missing group and why.

use std::time::{Duration, Instant};

use kiln_proto::kiln::v1 as api;
use prost::Message;

use super::internal::{Failure, GroupAnswer, GroupQuery, Request, Response};
use super::Cluster;
use crate::error::NodeError;
use crate::query::partial::{self, MergePartial, PartialRecords, RangePartial, SeriesPartial};
use crate::query::symbolize::SymbolRecords;
use crate::query::QueryEngine;
use crate::storage::keys::GroupId;

fn undecodable(error: prost::DecodeError) -> NodeError {
    NodeError::InvalidArgument(format!("undecodable group query: {error}"))
}

/// Runs one group's part of a query on its engine (blocking: RocksDB reads).
pub fn run_group_query(engine: &QueryEngine, query: GroupQuery) -> Result<GroupAnswer, NodeError> {
    Ok(match query {
        GroupQuery::Merge { selection, records } => {
            let selection = api::Selection::decode(&selection[..]).map_err(undecodable)?;
            GroupAnswer::Merge(Box::new(engine.merge_partial(&selection, records)?))
        }
        GroupQuery::Range(bytes) => {
            let request = api::RangeRequest::decode(&bytes[..]).map_err(undecodable)?;
            GroupAnswer::Range(engine.range_partial(&request)?)
        }
        GroupQuery::Labels(bytes) => {
            let request = api::LabelsRequest::decode(&bytes[..]).map_err(undecodable)?;
            GroupAnswer::Labels(engine.labels_partial(&request)?)
        }
        GroupQuery::LabelValues(bytes) => {
            let request = api::LabelValuesRequest::decode(&bytes[..]).map_err(undecodable)?;
            GroupAnswer::LabelValues(engine.label_values_partial(&request)?)
        }
        GroupQuery::Series(bytes) => {
            let request = api::SeriesRequest::decode(&bytes[..]).map_err(undecodable)?;
            GroupAnswer::Series(engine.series_partial(&request)?)
        }
        GroupQuery::ProfileTypes(bytes) => {
            let request = api::ProfileTypesRequest::decode(&bytes[..]).map_err(undecodable)?;
            GroupAnswer::ProfileTypes(engine.profile_types_partial(&request)?)
        }
    })
}

fn allow_partial(options: &Option<api::QueryOptions>) -> bool {
    options.as_ref().is_some_and(|options| options.allow_partial)
}

macro_rules! answers_of {
    ($answers:expr, $variant:ident) => {
        $answers
            .into_iter()
            .map(|answer| match answer {
                GroupAnswer::$variant(part) => Ok(part),
                other => Err(NodeError::Internal(format!("a group answered {other:?}"))),
            })
            .collect::<Result<Vec<_>, NodeError>>()
    };
}

/// `coverage` when no group is missing or the caller allows a partial answer; else an
/// error naming every missing group and why.
fn complete_or_allowed(coverage: api::Coverage, allow_partial: bool) -> Result<api::Coverage, NodeError> {
    if coverage.missing.is_empty() || allow_partial {
        return Ok(coverage);
    }
    let named: Vec<String> = coverage
        .missing
        .iter()
        .map(|missing| format!("group {} ({})", missing.group_id, missing.reason))
        .collect();
    Err(NodeError::Unavailable(format!(
        "{} of {} groups could not answer: {}; ask for a partial answer (--partial) to get the rest",
        coverage.missing.len(),
        coverage.groups_total,
        named.join("; ")
    )))
}

/// The merge partial in a group's answer to a merge query.
fn merge_partial_of(answer: GroupAnswer) -> Result<MergePartial, NodeError> {
    match answer {
        GroupAnswer::Merge(part) => Ok(*part),
        other => Err(NodeError::Internal(format!("a group answered {other:?}"))),
    }
}

/// Pause before a group query is tried again after every attempt in flight failed.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Most leader redirects one attempt follows.
const MAX_REDIRECTS_PER_ATTEMPT: usize = 3;

impl Cluster {
    /// Asks `group` (its leader, wherever it is) to answer `query`, until the group query timeout.
    ///
    /// While an attempt is in flight, the group's leader as this node knows it is watched: when it
    /// changes, another attempt starts beside the first, addressed to the new leader. Why: a leader
    /// that hangs (SIGSTOP, a stalled disk) accepts the request and never answers, while its group
    /// elects a new leader within about two election timeouts; a single attempt waited for the hung
    /// one until the group query timeout (10 s by default) and then failed the query. Earlier
    /// attempts keep running, and a leader that is only slow is not asked twice (the leader did not
    /// change), so a heavy query does not multiply its own load.
    async fn query_group(&self, group: GroupId, query: &GroupQuery) -> Result<GroupAnswer, Failure> {
        let deadline = Instant::now() + self.config.group_query_timeout;
        let watch_every = (self.config.election_timeout / 4).max(Duration::from_millis(10));
        let mut attempts = futures::stream::FuturesUnordered::new();
        let mut last = Failure::Unavailable(format!("no replica of group {group} is known"));
        let mut retry_at = Some(Instant::now());
        let mut leader_of_last_attempt = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(last);
            }
            let known_leader = self.known_leader(group);
            let leader_changed =
                !attempts.is_empty() && known_leader.is_some() && known_leader != leader_of_last_attempt;
            if retry_at.is_some_and(|at| now >= at) || leader_changed {
                retry_at = None;
                leader_of_last_attempt = known_leader;
                attempts.push(self.attempt_group_query(group, query, deadline));
            }
            let wake_at = retry_at.unwrap_or(now + watch_every).min(deadline);
            tokio::select! {
                Some(result) = futures::StreamExt::next(&mut attempts), if !attempts.is_empty() => {
                    match result {
                        Ok(answer) => return Ok(answer),
                        Err(Failure::Invalid(message)) => return Err(Failure::Invalid(message)),
                        Err(failure) => {
                            last = failure;
                            if attempts.is_empty() {
                                retry_at = Some(Instant::now() + RETRY_PAUSE);
                            }
                        }
                    }
                }
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake_at)) => {}
            }
        }
    }

    /// The leader of `group` as this node knows it: its own replica's view when it hosts one (which
    /// follows elections), else the last leader a replica named.
    fn known_leader(&self, group: GroupId) -> Option<crate::raft::NodeId> {
        match self.replica(group) {
            Some(replica) => replica.raft.metrics().borrow().current_leader,
            None => self.leader_hint(group),
        }
    }

    /// One attempt at a group query: this node's replica first, then the group's other replicas (the
    /// leader this node last heard of first), following the redirects of replicas that know the
    /// leader. Each address is asked once.
    async fn attempt_group_query(
        &self,
        group: GroupId,
        query: &GroupQuery,
        deadline: Instant,
    ) -> Result<GroupAnswer, Failure> {
        let mut addresses: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        if self.replica(group).is_some() {
            addresses.push_back(self.config.advertise_address.clone());
        }
        for address in self.candidates_for(group) {
            if !addresses.contains(&address) {
                addresses.push_back(address);
            }
        }
        let mut asked: Vec<String> = Vec::new();
        let mut redirects = 0;
        let mut last = Failure::Unavailable(format!("no replica of group {group} is known"));
        while let Some(address) = addresses.pop_front() {
            if asked.contains(&address) {
                continue;
            }
            asked.push(address.clone());
            match self.ask_replica(group, query, &address, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(Failure::Invalid(message)) => return Err(Failure::Invalid(message)),
                Err(Failure::NotLeader { leader: Some(leader) })
                    if redirects < MAX_REDIRECTS_PER_ATTEMPT && !asked.contains(&leader) =>
                {
                    redirects += 1;
                    last = Failure::Unavailable(format!("redirected by {address} to {leader}"));
                    addresses.push_front(leader);
                }
                Err(failure) => last = failure,
            }
        }
        Err(last)
    }

    /// Asks the replica of `group` at `address` (this node's own without a network call).
    async fn ask_replica(
        &self,
        group: GroupId,
        query: &GroupQuery,
        address: &str,
        deadline: Instant,
    ) -> Result<GroupAnswer, Failure> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if address == self.config.advertise_address {
            return match tokio::time::timeout(remaining, self.answer_local(group, query.clone())).await {
                Ok(result) => result,
                Err(_) => Err(Failure::Unavailable(format!("group {group} timed out"))),
            };
        }
        let request = Request::Query {
            group,
            query: query.clone(),
        };
        match self
            .call(address, &request, remaining.max(Duration::from_millis(1)))
            .await?
        {
            Response::Answer(answer) => Ok(answer),
            other => Err(Failure::Unavailable(format!("unexpected answer {other:?}"))),
        }
    }

    /// Sends `query` to every data group and collects the answers. Fails naming
    /// the groups that did not answer, unless `allow_partial`.
    pub async fn fan_out(
        &self,
        query: GroupQuery,
        allow_partial: bool,
    ) -> Result<(Vec<GroupAnswer>, api::Coverage), NodeError> {
        let (answers, coverage) = self.fan_out_each(|_| query.clone(), allow_partial).await?;
        Ok((answers.into_iter().map(|(_, answer)| answer).collect(), coverage))
    }

    /// Sends `query_for(group)` to every data group and collects the answers with the
    /// group that gave each. Fails naming the groups that did not answer, unless
    /// `allow_partial`.
    async fn fan_out_each(
        &self,
        query_for: impl Fn(GroupId) -> GroupQuery,
        allow_partial: bool,
    ) -> Result<(Vec<(GroupId, GroupAnswer)>, api::Coverage), NodeError> {
        let view = self.view();
        if !view.is_bootstrapped() {
            return Err(NodeError::Unavailable(
                "the cluster map is not known yet; retry shortly".into(),
            ));
        }
        let groups: Vec<GroupId> = view.data_groups().collect();
        let (answers, missing) = self.ask_groups(&groups, query_for).await?;
        let coverage = api::Coverage {
            groups_total: groups.len() as u32,
            missing,
        };
        Ok((answers, complete_or_allowed(coverage, allow_partial)?))
    }

    /// Sends `query_for(group)` to each of `groups`: the answers with the group that gave
    /// each, and the groups that could not answer, with why. Only an invalid query fails.
    async fn ask_groups(
        &self,
        groups: &[GroupId],
        query_for: impl Fn(GroupId) -> GroupQuery,
    ) -> Result<(Vec<(GroupId, GroupAnswer)>, Vec<api::MissingGroup>), NodeError> {
        let asks = groups.iter().map(|group| {
            let query = query_for(*group);
            async move { (*group, self.query_group(*group, &query).await) }
        });
        let results = futures::future::join_all(asks).await;
        let mut answers = Vec::with_capacity(results.len());
        let mut missing = Vec::new();
        for (group, result) in results {
            match result {
                Ok(answer) => answers.push((group, answer)),
                Err(Failure::Invalid(message)) => return Err(NodeError::InvalidArgument(message)),
                Err(failure) => missing.push(api::MissingGroup {
                    group_id: u64::from(group),
                    reason: failure.to_string(),
                }),
            }
        }
        self.metrics.fanout_missing_groups.inc_by(missing.len() as u64);
        Ok((answers, missing))
    }

    /// Every group's merge partial of `selection`, each with the symbol records its
    /// stacks need.
    ///
    /// Why not simply ask each group for its records: records are content-addressed
    /// and mostly the same in every group (the same binaries run everywhere), so eight
    /// groups would read, send and combine nearly eight copies. Groups that this node
    /// holds a replica of are asked for their stacks only; their records are then read
    /// here, once for all of them. A replica that lags may miss a record the leader's
    /// stacks name: those groups are asked again, with records.
    async fn merge_partials(
        &self,
        selection: &api::Selection,
        allow_partial: bool,
    ) -> Result<(Vec<MergePartial>, api::Coverage), NodeError> {
        let encoded = selection.encode_to_vec();
        let query_for = |records: PartialRecords| GroupQuery::Merge {
            selection: encoded.clone(),
            records,
        };
        let records_for = |group: GroupId| match self.replica(group) {
            Some(_) => PartialRecords::Omitted,
            None => PartialRecords::Included,
        };
        let (answers, mut coverage) = self
            .fan_out_each(|group| query_for(records_for(group)), allow_partial)
            .await?;
        let mut parts: Vec<(GroupId, MergePartial)> = answers
            .into_iter()
            .map(|(group, answer)| Ok((group, merge_partial_of(answer)?)))
            .collect::<Result<_, NodeError>>()?;
        let wanted: Vec<(GroupId, Vec<u64>)> = parts
            .iter_mut()
            .filter(|(_, part)| part.records == PartialRecords::Omitted)
            .map(|(group, part)| (*group, std::mem::take(&mut part.location_ids)))
            .collect();
        let storage = self.storage.clone();
        let loaded = tokio::task::spawn_blocking(move || SymbolRecords::load_available(&storage, wanted))
            .await
            .map_err(|error| NodeError::Internal(error.to_string()))??;
        match loaded {
            Ok(records) => {
                let mut records = Some(records);
                for (_, part) in &mut parts {
                    if part.records == PartialRecords::Omitted {
                        // One part carries them all; the combine takes the union of every part's.
                        part.attach_records(records.take().unwrap_or_default());
                    }
                }
            }
            Err(missing) => {
                tracing::debug!(%missing, "this node's replica lags; asking the groups again with records");
                let omitted: Vec<GroupId> = parts
                    .iter()
                    .filter(|(_, part)| part.records == PartialRecords::Omitted)
                    .map(|(group, _)| *group)
                    .collect();
                self.metrics.fanout_record_refetches.inc_by(omitted.len() as u64);
                let (again, missing_again) = self
                    .ask_groups(&omitted, |_| query_for(PartialRecords::Included))
                    .await?;
                coverage.missing.extend(missing_again);
                coverage = complete_or_allowed(coverage, allow_partial)?;
                parts.retain(|(_, part)| part.records == PartialRecords::Included);
                for (group, answer) in again {
                    parts.push((group, merge_partial_of(answer)?));
                }
            }
        }
        Ok((parts.into_iter().map(|(_, part)| part).collect(), coverage))
    }

    /// Merge over every group.
    pub async fn merge(&self, request: api::MergeRequest) -> Result<api::MergeResponse, NodeError> {
        let request = partial::validate_merge(&request)?;
        let selection = request.selection.clone().unwrap_or_default();
        let (parts, coverage) = self
            .merge_partials(&selection, allow_partial(&request.options))
            .await?;
        tokio::task::spawn_blocking(move || partial::finish_merge(&request, parts, coverage))
            .await
            .map_err(|error| NodeError::Internal(error.to_string()))?
    }

    /// Diff over every group.
    pub async fn diff(&self, request: api::DiffRequest) -> Result<api::DiffResponse, NodeError> {
        let request = partial::validate_diff(&request)?;
        let partial_ok = allow_partial(&request.options);
        let selection_a = request.a.clone().unwrap_or_default();
        let selection_b = request.b.clone().unwrap_or_default();
        let (side_a, side_b) = futures::future::try_join(
            self.merge_partials(&selection_a, partial_ok),
            self.merge_partials(&selection_b, partial_ok),
        )
        .await?;
        let mut coverage = side_a.1;
        for missing in side_b.1.missing {
            if !coverage
                .missing
                .iter()
                .any(|known| known.group_id == missing.group_id)
            {
                coverage.missing.push(missing);
            }
        }
        let (parts_a, parts_b) = (side_a.0, side_b.0);
        tokio::task::spawn_blocking(move || partial::finish_diff(&request, parts_a, parts_b, coverage))
            .await
            .map_err(|error| NodeError::Internal(error.to_string()))?
    }

    /// Range over every group.
    pub async fn range(&self, request: api::RangeRequest) -> Result<api::RangeResponse, NodeError> {
        let request = partial::validate_range(&request)?;
        let (answers, coverage) = self
            .fan_out(
                GroupQuery::Range(request.encode_to_vec()),
                allow_partial(&request.options),
            )
            .await?;
        let parts: Vec<RangePartial> = answers_of!(answers, Range)?;
        partial::finish_range(&request, parts, coverage)
    }

    /// Label names over every group.
    pub async fn labels(&self, request: api::LabelsRequest) -> Result<api::LabelsResponse, NodeError> {
        partial::validate_labels(&request)?;
        let (answers, coverage) = self
            .fan_out(
                GroupQuery::Labels(request.encode_to_vec()),
                allow_partial(&request.options),
            )
            .await?;
        Ok(partial::finish_labels(answers_of!(answers, Labels)?, coverage))
    }

    /// Label values over every group.
    pub async fn label_values(
        &self,
        request: api::LabelValuesRequest,
    ) -> Result<api::LabelValuesResponse, NodeError> {
        partial::validate_label_values(&request)?;
        let (answers, coverage) = self
            .fan_out(
                GroupQuery::LabelValues(request.encode_to_vec()),
                allow_partial(&request.options),
            )
            .await?;
        Ok(partial::finish_label_values(
            answers_of!(answers, LabelValues)?,
            coverage,
        ))
    }

    /// Series over every group.
    pub async fn series(&self, request: api::SeriesRequest) -> Result<api::SeriesResponse, NodeError> {
        partial::validate_series(&request)?;
        let (answers, coverage) = self
            .fan_out(
                GroupQuery::Series(request.encode_to_vec()),
                allow_partial(&request.options),
            )
            .await?;
        let parts: Vec<SeriesPartial> = answers_of!(answers, Series)?;
        partial::finish_series(parts, coverage)
    }

    /// Profile types over every group.
    pub async fn profile_types(
        &self,
        request: api::ProfileTypesRequest,
    ) -> Result<api::ProfileTypesResponse, NodeError> {
        partial::validate_profile_types(&request)?;
        let (answers, coverage) = self
            .fan_out(
                GroupQuery::ProfileTypes(request.encode_to_vec()),
                allow_partial(&request.options),
            )
            .await?;
        Ok(partial::finish_profile_types(
            answers_of!(answers, ProfileTypes)?,
            coverage,
        ))
    }
}
