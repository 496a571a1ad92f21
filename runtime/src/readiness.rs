//! Readiness gates: each condition a process needs before it takes traffic is a
//! `watch::Receiver<bool>`, and `/readyz` answers from their conjunction.

use tokio::sync::watch;

/// True while every one of `gates` is true. A gate whose sender is gone keeps its last value
/// (a condition settled for good, such as [`always_ready`]). Must be called inside a tokio
/// runtime: a task follows the gates until every one is settled or the result is dropped.
pub fn all_ready(gates: Vec<watch::Receiver<bool>>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(gates.iter().all(|g| *g.borrow()));
    tokio::spawn(async move {
        let mut gates = gates;
        loop {
            tx.send_replace(gates.iter().all(|g| *g.borrow()));
            let open: Vec<_> = gates
                .iter_mut()
                .filter(|g| g.has_changed().is_ok())
                .map(|g| Box::pin(g.changed()))
                .collect();
            if open.is_empty() {
                return;
            }
            tokio::select! {
                _ = futures_util::future::select_all(open) => {}
                () = tx.closed() => return,
            }
        }
    });
    rx
}

/// A gate that is always open, for a condition that does not apply (no node API configured).
pub fn always_ready() -> watch::Receiver<bool> {
    watch::channel(true).1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn ready_only_when_every_gate_is() {
        let (a_tx, a) = watch::channel(false);
        let (b_tx, b) = watch::channel(false);
        let mut ready = all_ready(vec![a, b]);
        assert!(!*ready.borrow_and_update());
        a_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), ready.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(!*ready.borrow_and_update());
        b_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();
        a_tx.send_replace(false);
        tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| !*r))
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_settled_gate_keeps_its_value_and_the_others_still_count() {
        // always_ready's sender is gone before the combinator's task first runs.
        let (gate_tx, gate) = watch::channel(false);
        let mut ready = all_ready(vec![always_ready(), gate]);
        tokio::task::yield_now().await;
        gate_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();
        gate_tx.send_replace(false);
        tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| !*r))
            .await
            .unwrap()
            .unwrap();
        // A gate that closes false keeps the result false.
        drop(gate_tx);
        tokio::task::yield_now().await;
        assert!(!*ready.borrow());
    }

    #[tokio::test]
    async fn no_gates_and_open_gates_are_ready() {
        assert!(*all_ready(Vec::new()).borrow());
        assert!(*all_ready(vec![always_ready(), always_ready()]).borrow());
    }
}
