//! Keeps one files-mode volume current until it is unpublished.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::warn;
use wimsey_core::renewal::{half_life, token_lifetime};
use zeroize::Zeroizing;

use super::atomic::{VolumeRoot, write_atomically};
use super::content::render_files;
use crate::csi::error::CsiError;
use crate::csi::request::FilesConfig;
use crate::identity::{IdentitySnapshot, IssuedIdentities, PodIdentity};

/// Backoff after a failed write: 1 s doubling to 30 s, jittered.
fn backoff(failures: u32) -> Duration {
    wimsey_core::backoff::backoff(
        failures,
        Duration::from_secs(1),
        Duration::from_secs(30),
        wimsey_core::backoff::jitter(),
    )
}

/// Rewrites the volume's files on every snapshot change; JWT-SVIDs are re-minted at half their
/// remaining lifetime. Ends when `stop` is cancelled.
pub async fn run_files_writer<P: PodIdentity>(
    volume_id: String,
    pod: P,
    root: VolumeRoot,
    config: FilesConfig,
    stop: CancellationToken,
) {
    let mut snapshots = pod.current();
    let mut failures = 0u32;
    loop {
        let snapshot = Arc::clone(&snapshots.borrow_and_update());
        let result = match &*snapshot {
            IdentitySnapshot::NotReady => Ok(None),
            IdentitySnapshot::NoIdentity => {
                write_atomically(&root, &[], config.fs_group).map(|()| None)
            }
            IdentitySnapshot::Issued(identities) => tokio::select! {
                // Minting JWT-SVIDs may wait on the network; unpublish must not.
                () = stop.cancelled() => return,
                written = write_issued(&pod, &root, &config, identities) => written,
            },
        };
        let wake_after = match result {
            Ok(refresh) => {
                failures = 0;
                refresh
            }
            Err(error) => {
                warn!(volume_id, error = %error, label = error.label(), "writing volume files failed; retrying");
                failures = failures.saturating_add(1);
                Some(backoff(failures))
            }
        };
        let sleep = tokio::time::sleep(wake_after.unwrap_or(Duration::from_secs(86400 * 365)));
        tokio::select! {
            () = stop.cancelled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
            () = sleep => {}
        }
    }
}

/// Writes the files for `identities`; returns when the JWT-SVIDs need re-minting.
async fn write_issued<P: PodIdentity>(
    pod: &P,
    root: &VolumeRoot,
    config: &FilesConfig,
    identities: &IssuedIdentities,
) -> Result<Option<Duration>, CsiError> {
    let mut jwts = Vec::new();
    let mut refresh: Option<Duration> = None;
    if let Some(default) = identities.x509_svids.first() {
        for audience in &config.jwt_audiences {
            let token = pod
                .mint_jwt_svid(&default.spiffe_id, std::slice::from_ref(audience))
                .await
                .map_err(|e| CsiError::MintJwt(e.to_string()))?;
            let half_life = jwt_half_life(&token);
            refresh = Some(refresh.map_or(half_life, |r| r.min(half_life)));
            jwts.push((audience.clone(), Zeroizing::clone(&token)));
        }
    }
    let files = render_files(config, identities, &jwts)?;
    write_atomically(root, &files, config.fs_group)?;
    Ok(refresh)
}

/// Half of the remaining lifetime of a JWT (at least a second); a token we cannot read is
/// re-minted in a minute.
fn jwt_half_life(token: &str) -> Duration {
    let now = SystemTime::now();
    match token_lifetime(token) {
        Some(lifetime) => half_life(now, lifetime.expires_at)
            .duration_since(now)
            .unwrap_or_default()
            .max(Duration::from_secs(1)),
        None => Duration::from_secs(60),
    }
}
