//! Waiting on conditions with deadlines, never bare sleeps: the one polling
//! loop of kvserver's tests, the fault campaign, the benchmark harness and the
//! end-to-end suite.

use std::future::Future;
use std::time::Duration;
use std::time::Instant;

use crate::ChaosError;

/// Polls `check` every `period` until it returns `Ok(value)`, or fails after
/// `timeout` naming `what` and the last state `check` reported (`Err(state)`).
/// Returns the value and how long it took.
pub async fn wait_state<T, F, Fut>(
    what: &str,
    timeout: Duration,
    period: Duration,
    mut check: F,
) -> Result<(T, Duration), ChaosError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return Ok((v, started.elapsed())),
            Err(state) => state,
        };
        if started.elapsed() >= timeout {
            return Err(ChaosError::Timeout(
                timeout,
                if last.is_empty() {
                    what.to_string()
                } else {
                    format!("{what}; last state: {last}")
                },
            ));
        }
        tokio::time::sleep(period).await;
    }
}

/// Polls `f` every 50 ms until it yields `Some`, or fails after `timeout`.
pub async fn wait<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T, ChaosError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let (v, _) = wait_state(what, timeout, Duration::from_millis(50), || {
        let fut = f();
        async move { fut.await.ok_or_else(String::new) }
    })
    .await?;
    Ok(v)
}
