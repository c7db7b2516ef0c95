//! What the agent's `/healthz` answers. A part of the agent that stops while the agent runs (the CPU
//! profiler's thread, the pusher or a scraper panicking on input nobody foresaw) used to end without a
//! trace beyond one log line: the agent kept running, `/healthz` said `ok`, and no more profiles came.
//! Such a part is now reported, and `/healthz` answers 503 naming it, so that a supervisor (systemd,
//! a Kubernetes liveness probe) restarts the agent; the spool survives the restart.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use tokio::task::JoinHandle;

/// The parts of the agent that stopped while it runs; cheap to clone, shared by every part.
#[derive(Debug, Clone, Default)]
pub struct Health {
    stopped: Arc<Mutex<Vec<String>>>,
}

impl Health {
    /// Records that `description` (what stopped, and why) happened; logged as an error too.
    pub fn report_stopped(&self, description: String) {
        tracing::error!("{description}; /healthz now fails");
        self.stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(description);
    }

    /// Everything reported so far, oldest first.
    pub fn stopped_parts(&self) -> Vec<String> {
        self.stopped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The `/healthz` answer: 200 `ok` while nothing stopped, else 503 with one line per stopped part.
    pub fn answer(&self) -> (StatusCode, String) {
        let stopped = self.stopped_parts();
        if stopped.is_empty() {
            return (StatusCode::OK, "ok".to_string());
        }
        let mut text = String::from("unhealthy: restart the agent (its spool survives)\n");
        for part in stopped {
            text.push_str(&part);
            text.push('\n');
        }
        (StatusCode::SERVICE_UNAVAILABLE, text)
    }
}

/// Runs `body` on this thread; a panic is caught and returned as its message instead of unwinding
/// out of the thread (where nobody would see it).
pub fn catch_panic<T>(body: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(body)).map_err(panic_message)
}

/// Spawns `future` on the runtime; if it panics, `health` gets `"{part} stopped: {message}"`. The
/// handle returned completes when `future` does, either way.
pub fn spawn_reporting_panics<F>(part: String, health: Health, future: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let task = tokio::spawn(future);
    tokio::spawn(async move {
        if let Err(error) = task.await {
            if error.is_panic() {
                let message = panic_message(error.into_panic());
                health.report_stopped(format!("{part} stopped: {message}"));
            }
        }
    })
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        return format!("panicked: {text}");
    }
    if let Some(text) = payload.downcast_ref::<String>() {
        return format!("panicked: {text}");
    }
    "panicked".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_stopped_is_healthy() {
        let health = Health::default();
        assert_eq!(catch_panic(|| 7), Ok(7));
        assert_eq!(health.answer(), (StatusCode::OK, "ok".to_string()));
    }

    /// Regression: a panic in the CPU profiler's thread ended the thread silently; `/healthz` said ok.
    #[test]
    fn a_panicking_thread_is_reported_and_fails_the_health_check() {
        let health = Health::default();
        let outcome = std::thread::spawn({
            let health = health.clone();
            move || {
                if let Err(message) = catch_panic(|| panic!("symbol table index {} out of range", 9)) {
                    health.report_stopped(format!("the CPU profiler stopped: {message}"));
                }
            }
        })
        .join();
        assert!(outcome.is_ok(), "the panic did not leave the thread");
        let (status, text) = health.answer();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.contains("the CPU profiler stopped: panicked: symbol table index 9 out of range"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_and_a_finished_one_is_not() {
        let health = Health::default();
        spawn_reporting_panics("the pusher".to_string(), health.clone(), async {})
            .await
            .expect("join");
        assert!(health.stopped_parts().is_empty());
        spawn_reporting_panics("scraper of http://app:6060".to_string(), health.clone(), async {
            panic!("unexpected profile kind");
        })
        .await
        .expect("join");
        assert_eq!(
            health.stopped_parts(),
            vec!["scraper of http://app:6060 stopped: panicked: unexpected profile kind".to_string()]
        );
    }
}
