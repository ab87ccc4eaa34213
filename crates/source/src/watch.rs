//! Tells when a manifest directory changed.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Watches `root` recursively. The receiver gets one `()` per burst of changes, after the
/// directory has been quiet for `debounce`, and one every `poll` regardless: some file
/// systems (network mounts, some container volumes) deliver no events. Keep the returned
/// watcher alive as long as events are wanted.
pub fn watch_dir(
    root: &Path,
    debounce: Duration,
    poll: Duration,
) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if e.kind.is_access() => {}
            Ok(_) => {
                let _ = raw_tx.send(());
            }
            Err(e) => tracing::warn!(error = %e, "manifest directory watch error"),
        })?;
    watcher.watch(root, RecursiveMode::Recursive)?;

    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(poll);
        ticker.tick().await;
        loop {
            tokio::select! {
                got = raw_rx.recv() => {
                    if got.is_none() {
                        return;
                    }
                    // Coalesce a burst (an editor's write, rename and chmod) into one reload,
                    // but never wait more than ten debounce periods: something writing all the
                    // time must not hold reloads off.
                    let give_up = tokio::time::Instant::now() + debounce * 10;
                    loop {
                        let wait = debounce.min(give_up.saturating_duration_since(tokio::time::Instant::now()));
                        if wait.is_zero() {
                            break;
                        }
                        match tokio::time::timeout(wait, raw_rx.recv()).await {
                            Ok(Some(())) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                }
                _ = ticker.tick() => {}
            }
            if tx.try_send(()).is_err() && tx.is_closed() {
                return;
            }
        }
    });
    Ok((watcher, rx))
}
