//! A fake Kiln node for tests: the real gRPC services over loopback, with canned answers and every
//! request recorded, so the client and the CLI can be tested without the storage engine.
//!
//! Compiled only into tests (`#[cfg(test)]` in lib.rs and main.rs).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use kiln_proto::kiln::v1 as proto;
use proto::ingest_service_server::{IngestService, IngestServiceServer};
use proto::query_service_server::{QueryService, QueryServiceServer};
use tonic::{Request, Response, Status};

/// What the fake node has seen and how it should misbehave.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Every write attempt, in arrival order (failed attempts included).
    pub write_attempts: Vec<proto::WriteRequest>,
    /// Idempotency keys of stored batches.
    pub stored_keys: HashSet<String>,
    /// Answer this many write attempts with UNAVAILABLE before accepting.
    pub write_failures_left: u32,
    /// Every merge request.
    pub merges: Vec<proto::MergeRequest>,
    /// Every range request.
    pub ranges: Vec<proto::RangeRequest>,
    /// Every diff request.
    pub diffs: Vec<proto::DiffRequest>,
    /// Every labels / values / series / types request's selection (or range).
    pub metadata_selections: Vec<Option<proto::Selection>>,
    /// When set, queries answer with this coverage.
    pub coverage: Option<proto::Coverage>,
}

/// A running fake node.
pub struct FakeNode {
    /// Where it listens (`127.0.0.1:PORT`).
    pub address: SocketAddr,
    state: Arc<Mutex<FakeState>>,
}

impl FakeNode {
    /// Starts a fake node on an ephemeral loopback port; it runs until the test's runtime ends.
    pub async fn start() -> FakeNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(FakeState::default()));
        let service = FakeService { state: state.clone() };
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IngestServiceServer::new(service.clone()))
                .add_service(QueryServiceServer::new(service))
                .serve_with_incoming(incoming),
        );
        FakeNode { address, state }
    }

    /// The recorded state.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake node state")
    }
}

#[derive(Clone)]
struct FakeService {
    state: Arc<Mutex<FakeState>>,
}

impl FakeService {
    fn state(&self) -> Result<MutexGuard<'_, FakeState>, Status> {
        self.state
            .lock()
            .map_err(|_| Status::internal("fake node state poisoned"))
    }
}

fn cpu_type() -> proto::ProfileTypeInfo {
    proto::ProfileTypeInfo {
        id: "process_cpu:cpu:nanoseconds:cpu:nanoseconds:delta".into(),
        name: "process_cpu".into(),
        sample_type: "cpu".into(),
        sample_unit: "nanoseconds".into(),
        period_type: "cpu".into(),
        period_unit: "nanoseconds".into(),
        delta: true,
    }
}

fn frame(name: &str) -> proto::Frame {
    proto::Frame {
        function: name.into(),
        ..Default::default()
    }
}

fn tree() -> proto::StackTree {
    proto::StackTree {
        frames: vec![frame("main"), frame("work")],
        nodes: vec![
            proto::TreeNode {
                frame: 0,
                parent: -1,
                self_: 0,
                total: 30_000_000,
                ..Default::default()
            },
            proto::TreeNode {
                frame: 0,
                parent: 0,
                self_: 10_000_000,
                total: 30_000_000,
                ..Default::default()
            },
            proto::TreeNode {
                frame: 1,
                parent: 1,
                self_: 20_000_000,
                total: 20_000_000,
                baseline_self: 5_000_000,
                baseline_total: 5_000_000,
            },
        ],
    }
}

fn top() -> proto::Top {
    proto::Top {
        rows: vec![
            proto::TopRow {
                frame: Some(frame("main")),
                flat: 10_000_000,
                cum: 30_000_000,
                ..Default::default()
            },
            proto::TopRow {
                frame: Some(frame("work")),
                flat: 20_000_000,
                cum: 20_000_000,
                baseline_flat: 5_000_000,
                baseline_cum: 5_000_000,
            },
        ],
    }
}

fn check_selection(selection: Option<&proto::Selection>) -> Result<(), Status> {
    let Some(selection) = selection else {
        return Err(Status::invalid_argument("selection is required"));
    };
    if selection.selector.contains("bad{") {
        return Err(Status::invalid_argument(
            "invalid selector at position 4: unexpected end",
        ));
    }
    if selection.start_unix_ms > selection.end_unix_ms {
        return Err(Status::invalid_argument("start after end"));
    }
    Ok(())
}

#[tonic::async_trait]
impl IngestService for FakeService {
    async fn write(
        &self,
        request: Request<proto::WriteRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        state.write_attempts.push(request.clone());
        if state.write_failures_left > 0 {
            state.write_failures_left -= 1;
            return Err(Status::unavailable("fake node is restarting"));
        }
        if request.idempotency_key.is_empty() {
            return Err(Status::invalid_argument("idempotency_key is required"));
        }
        let duplicate = !state.stored_keys.insert(request.idempotency_key.clone());
        let profiles: u64 = request
            .series
            .iter()
            .map(|series| series.profiles.len() as u64)
            .sum();
        Ok(Response::new(proto::WriteResponse {
            duplicate,
            profiles,
            samples: profiles * 10,
            series: request.series.len() as u64,
            profile_types: vec![cpu_type().id],
        }))
    }
}

#[tonic::async_trait]
impl QueryService for FakeService {
    async fn merge(
        &self,
        request: Request<proto::MergeRequest>,
    ) -> Result<Response<proto::MergeResponse>, Status> {
        let request = request.into_inner();
        check_selection(request.selection.as_ref())?;
        let mut state = self.state()?;
        state.merges.push(request.clone());
        use proto::merge_response::Result as R;
        let result = match proto::MergeFormat::try_from(request.format).unwrap_or(proto::MergeFormat::Tree) {
            proto::MergeFormat::Unspecified | proto::MergeFormat::Tree => R::Tree(tree()),
            proto::MergeFormat::Top => R::Top(top()),
            proto::MergeFormat::Pprof => R::Pprof(vec![0x1f, 0x8b, 1, 2, 3]),
            proto::MergeFormat::Folded => R::Folded("main 10000000\nmain;work 20000000\n".into()),
            proto::MergeFormat::Svg => R::Svg("<svg xmlns=\"http://www.w3.org/2000/svg\"/>".into()),
        };
        Ok(Response::new(proto::MergeResponse {
            profile_type: Some(cpu_type()),
            total: 30_000_000,
            profiles: 3,
            series: 1,
            result: Some(result),
            truncation: Some(proto::Truncation::default()),
            coverage: state.coverage.clone(),
        }))
    }

    async fn range(
        &self,
        request: Request<proto::RangeRequest>,
    ) -> Result<Response<proto::RangeResponse>, Status> {
        let request = request.into_inner();
        check_selection(request.selection.as_ref())?;
        let start = request
            .selection
            .as_ref()
            .map_or(0, |selection| selection.start_unix_ms);
        let mut state = self.state()?;
        state.ranges.push(request.clone());
        Ok(Response::new(proto::RangeResponse {
            profile_type: Some(cpu_type()),
            step_ms: request.step_ms.max(60_000),
            series: vec![proto::RangeSeries {
                labels: vec![proto::Label {
                    name: "job".into(),
                    value: "api".into(),
                }],
                points: vec![proto::Point {
                    timestamp_ms: start,
                    value: 30_000_000,
                }],
            }],
            coverage: state.coverage.clone(),
        }))
    }

    async fn diff(
        &self,
        request: Request<proto::DiffRequest>,
    ) -> Result<Response<proto::DiffResponse>, Status> {
        let request = request.into_inner();
        check_selection(request.a.as_ref())?;
        check_selection(request.b.as_ref())?;
        let mut state = self.state()?;
        state.diffs.push(request);
        Ok(Response::new(proto::DiffResponse {
            profile_type: Some(cpu_type()),
            total_a: 15_000_000,
            total_b: 30_000_000,
            tree: Some(tree()),
            top: Some(top()),
            truncation: None,
            coverage: state.coverage.clone(),
        }))
    }

    async fn labels(
        &self,
        request: Request<proto::LabelsRequest>,
    ) -> Result<Response<proto::LabelsResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        state.metadata_selections.push(request.selection);
        Ok(Response::new(proto::LabelsResponse {
            names: vec!["instance".into(), "job".into()],
            coverage: state.coverage.clone(),
        }))
    }

    async fn label_values(
        &self,
        request: Request<proto::LabelValuesRequest>,
    ) -> Result<Response<proto::LabelValuesResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        state.metadata_selections.push(request.selection);
        let values = if request.name == "job" {
            vec!["api".into(), "db".into()]
        } else {
            vec![]
        };
        Ok(Response::new(proto::LabelValuesResponse {
            values,
            coverage: state.coverage.clone(),
        }))
    }

    async fn series(
        &self,
        request: Request<proto::SeriesRequest>,
    ) -> Result<Response<proto::SeriesResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        state.metadata_selections.push(request.selection);
        Ok(Response::new(proto::SeriesResponse {
            series: vec![proto::SeriesInfo {
                profile_type: Some(cpu_type()),
                labels: vec![proto::Label {
                    name: "job".into(),
                    value: "api".into(),
                }],
                series_hash: 0x0123_4567_89ab_cdef,
            }],
            coverage: state.coverage.clone(),
        }))
    }

    async fn profile_types(
        &self,
        request: Request<proto::ProfileTypesRequest>,
    ) -> Result<Response<proto::ProfileTypesResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state()?;
        state.metadata_selections.push(Some(proto::Selection {
            selector: String::new(),
            start_unix_ms: request.start_unix_ms,
            end_unix_ms: request.end_unix_ms,
        }));
        Ok(Response::new(proto::ProfileTypesResponse {
            types: vec![cpu_type()],
            coverage: state.coverage.clone(),
        }))
    }
}
