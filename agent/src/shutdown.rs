//! A cancellation signal shared by every loop of the agent (a watch channel that flips once).
use tokio::sync::watch;

/// The receiving side: clone freely.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side.
pub struct Trigger(watch::Sender<bool>);

/// A new, untriggered pair.
pub fn channel() -> (Trigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (Trigger(sender), Shutdown(receiver))
}

impl Trigger {
    /// Signals every [`Shutdown`].
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Resolves once triggered (at once if it already was, or if the trigger was dropped).
    pub async fn wait(&self) {
        let mut receiver = self.0.clone();
        let _ = receiver.wait_for(|stopped| *stopped).await;
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}
