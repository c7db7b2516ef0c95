//! Bad input gets a clear error with the right status, never a panic, never half a
//! batch stored, and what was stored before stays intact and queryable.

mod support;

use kiln_proto::kiln::v1 as api;
use kiln_proto::kiln::v1::ingest_service_client::IngestServiceClient;
use kiln_proto::kiln::v1::query_service_client::QueryServiceClient;
use support::{now_nanos, testdata, tiny_pprof, write_request, TestNode};

async fn expect_write_error(
    client: &mut IngestServiceClient<tonic::transport::Channel>,
    request: api::WriteRequest,
    code: tonic::Code,
    needle: &str,
) {
    let status = client
        .write(request)
        .await
        .expect_err("the write must be rejected");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
}

#[test]
fn every_bad_input_is_rejected_clearly_and_stored_data_stays_intact() {
    let node = TestNode::start();
    let cpu = testdata().join("pprof/go/cpu.pb.gz");
    node.kiln_ok(&["ingest", cpu.to_str().expect("utf-8"), "--label", "file=cpu"]);
    let before = node.snapshot();
    let good = std::fs::read(&cpu).expect("profile");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut ingest = IngestServiceClient::connect(node.url())
            .await
            .expect("connect")
            .max_encoding_message_size(usize::MAX);
        let code = tonic::Code::InvalidArgument;
        let truncated = good[..good.len() / 2].to_vec();
        expect_write_error(
            &mut ingest,
            write_request("bad-gzip", &[("a", "b")], truncated),
            code,
            "gzip",
        )
        .await;
        let garbage = b"\x0a\xff\xff\xff\xff\x0fnot a profile at all".to_vec();
        expect_write_error(
            &mut ingest,
            write_request("bad-proto", &[("a", "b")], garbage),
            code,
            "not a pprof",
        )
        .await;
        let mut dangling = kiln_model::pprof::maybe_gunzip(&tiny_pprof("x", 1, now_nanos()))
            .expect("gunzip")
            .into_owned();
        // Point the sample at location 99, which does not exist.
        let mut profile: kiln_proto::pprof::Profile =
            prost::Message::decode(dangling.as_slice()).expect("decode");
        profile.sample[0].location_id = vec![99];
        dangling = prost::Message::encode_to_vec(&profile);
        expect_write_error(
            &mut ingest,
            write_request("bad-ids", &[("a", "b")], dangling),
            code,
            "location 99",
        )
        .await;
        let tiny = tiny_pprof("y", 1, now_nanos());
        expect_write_error(
            &mut ingest,
            write_request("bad-label-1", &[("", "x")], tiny.clone()),
            code,
            "invalid label name",
        )
        .await;
        expect_write_error(
            &mut ingest,
            write_request("bad-label-2", &[("1abc", "x")], tiny.clone()),
            code,
            "invalid label name",
        )
        .await;
        expect_write_error(
            &mut ingest,
            write_request("bad-label-3", &[("__name__", "x")], tiny.clone()),
            code,
            "reserved",
        )
        .await;
        expect_write_error(
            &mut ingest,
            write_request("", &[("a", "b")], tiny.clone()),
            code,
            "idempotency_key",
        )
        .await;
        // One bad series rejects the whole batch: the good series is not stored either.
        let mut mixed = write_request("mixed", &[("half", "good")], tiny.clone());
        mixed.series.push(
            write_request("", &[("half", "bad")], b"garbage".to_vec())
                .series
                .remove(0),
        );
        expect_write_error(&mut ingest, mixed, code, "series 1").await;
        // 100 MB: refused by size before anything is decoded.
        let huge = vec![0u8; 100 << 20];
        let status = ingest
            .write(write_request("huge", &[("a", "b")], huge.clone()))
            .await
            .expect_err("too large");
        assert!(
            matches!(
                status.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{status:?}"
        );
        assert!(
            status.message().contains("too large") || status.message().contains("length"),
            "{status:?}"
        );
        let http = reqwest::Client::new()
            .post(format!("{}/api/v1/ingest?label.a=b", node.url()))
            .body(huge)
            .send()
            .await;
        // Regression: the node answered as soon as the limit was passed and closed the connection
        // with the rest unread, so the kernel reset it and the client, still sending, often saw
        // "connection reset" instead of the 413.
        let response = http.expect("the client reads the answer, not a reset");
        assert_eq!(response.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
        let message = response.text().await.expect("the 413's body");
        assert!(message.contains("--max-message-bytes"), "{message}");

        // Queries: invalid selector and from > to.
        let mut query = QueryServiceClient::connect(node.url()).await.expect("connect");
        let merge = |selector: &str, start: i64, end: i64| api::MergeRequest {
            selection: Some(api::Selection {
                selector: selector.into(),
                start_unix_ms: start,
                end_unix_ms: end,
            }),
            ..Default::default()
        };
        let status = query
            .merge(merge("cpu{job=}", 0, 1))
            .await
            .expect_err("bad selector");
        assert_eq!(status.code(), code);
        assert!(status.message().contains("position 8"), "{status:?}");
        let status = query
            .merge(merge("cpu", 2000, 1000))
            .await
            .expect_err("from > to");
        assert_eq!(status.code(), code);
        assert!(status.message().contains("after"), "{status:?}");
        let http = reqwest::Client::new()
            .get(format!("{}/api/v1/query/merge", node.url()))
            .query(&[("selector", "cpu{job=~\"(\"}"), ("from", "0")])
            .send()
            .await
            .expect("http merge");
        assert_eq!(http.status(), reqwest::StatusCode::BAD_REQUEST);
    });
    let output = node.kiln(&["query", "cpu{job=}", "--from", "-1h"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("position"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = node.kiln(&["query", "cpu", "--from", "now", "--to", "-1h"]);
    assert!(!output.status.success());
    assert_eq!(
        node.snapshot(),
        before,
        "stored data changed after rejected input"
    );
}

/// One HTTP/1.1 exchange over a raw connection, so that the test controls what `reqwest` would not:
/// `Expect: 100-continue`, chunked bodies, and what is sent before anything is read. Sends `head`
/// (request line and headers, without the blank line), then `body`, and returns everything the node
/// answered until it closed the connection.
fn raw_http_exchange(address: &str, head: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut connection = std::net::TcpStream::connect(address).expect("connect");
    connection
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("read timeout");
    connection
        .write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("send the head");
    connection.write_all(body).expect("send the body");
    let mut answer = Vec::new();
    connection
        .read_to_end(&mut answer)
        .expect("read the answer until the node closes");
    String::from_utf8_lossy(&answer).into_owned()
}

/// An HTTP upload over `--max-message-bytes` gets a 413 the client can read, however it sends: the
/// node neither asks a client waiting for `100 Continue` to send a body it will refuse, nor resets a
/// client that is already sending (it reads and discards the rest first).
#[test]
fn an_over_limit_http_upload_gets_a_413_the_client_can_read() {
    let directory = tempfile::tempdir().expect("temp dir");
    let limit = 1 << 20;
    let node = TestNode::start_in(directory.path(), &["--max-message-bytes", &limit.to_string()]);
    let before = node.snapshot();
    let over_limit = vec![b'x'; 3 * limit];
    let request_line = "POST /api/v1/ingest?label.a=b HTTP/1.1\r\nHost: kiln";

    // A client that waits for 100 Continue (curl, for large bodies) is refused from the headers.
    let answer = raw_http_exchange(
        &node.address,
        &format!(
            "{request_line}\r\nContent-Length: {}\r\nExpect: 100-continue",
            over_limit.len()
        ),
        &[],
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(
        answer.contains(&format!("{} bytes", over_limit.len())),
        "{answer}"
    );

    // A client that sends its whole declared body before reading.
    let answer = raw_http_exchange(
        &node.address,
        &format!("{request_line}\r\nContent-Length: {}", over_limit.len()),
        &over_limit,
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A chunked body, whose size shows only as it arrives.
    let mut chunked = Vec::new();
    for piece in over_limit.chunks(64 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_http_exchange(
        &node.address,
        &format!("{request_line}\r\nTransfer-Encoding: chunked"),
        &chunked,
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("--max-message-bytes"), "{answer}");

    // A body under the limit is still read whole and stored.
    let profile = tiny_pprof("under-limit", 3, now_nanos());
    let answer = raw_http_exchange(
        &node.address,
        &format!("{request_line}\r\nContent-Length: {}", profile.len()),
        &profile,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_ne!(node.snapshot(), before, "the profile under the limit is stored");
}

/// Regression: `kiln ingest` of a profile already older than the node's retention succeeded, and the
/// next retention pass (the first runs at start-up) deleted it. The user now gets the node's answer:
/// which profile (and the CLI adds which file that is), its time, the retention, and the flag that
/// keeps older profiles.
#[test]
fn ingesting_a_profile_older_than_the_retention_fails_and_says_why() {
    let directory = tempfile::tempdir().expect("temp dir");
    let node = TestNode::start_in(directory.path(), &["--retention", "1h"]);
    let thirty_days_ago = now_nanos() - 30 * 24 * 3600 * 1_000_000_000;
    let old_file = directory.path().join("old.pb.gz");
    std::fs::write(&old_file, tiny_pprof("old", 7, thirty_days_ago)).expect("write the profile");
    let output = node.kiln(&[
        "ingest",
        old_file.to_str().expect("utf-8"),
        "--label",
        "service=old",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the ingest must fail; stderr: {stderr}");
    assert!(
        stderr.contains("older than this node's retention of 1h") && stderr.contains("--retention"),
        "the error says why and what to do: {stderr}"
    );
    // The node numbers the profiles of a request; the CLI says which file each number is.
    assert!(
        stderr.contains("profile 0 = ") && stderr.contains("old.pb.gz"),
        "the error names the file: {stderr}"
    );
    let series = node.kiln_ok(&["series", "--from", "0", "--output", "json"]);
    assert!(!series.contains("\"old\""), "nothing was stored: {series}");
}
