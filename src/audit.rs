//! The verifiable log: every consent event, message record, body access and erasure is a leaf
//! of one append-only Merkle tree (RFC 6962), in the order the sequencer gives them, with
//! signed checkpoints an auditor can check offline.

pub mod checkpoint;
pub mod leaf;
pub mod merkle;
pub mod note;
pub mod sequencer;
pub mod verify;
pub mod witnessing;

use std::path::Path;

use std::collections::HashMap;

use merkle::{Hash, NodeId};

use crate::store::{AuditLog, StoreError};

/// Runs a computation over the tree (a proof) on the stored subtrees it reads: once to learn
/// which, then again with them fetched in one read.
pub async fn with_nodes<T>(
    store: &dyn AuditLog,
    compute: impl Fn(&mut dyn FnMut(NodeId) -> Hash) -> T,
) -> Result<T, StoreError> {
    let ids = merkle::nodes_read(|get| compute(get));
    let hashes = store.log_nodes(&ids).await?;
    let nodes: HashMap<NodeId, Hash> = ids.into_iter().zip(hashes).collect();
    Ok(compute(&mut |id| nodes[&id]))
}

/// Gives each checkpoint the cosignatures stored for it.
pub async fn with_cosignatures(
    store: &dyn AuditLog,
    checkpoints: &mut [checkpoint::Checkpoint],
) -> Result<(), StoreError> {
    let sizes = checkpoints.iter().map(|c| c.tree_size);
    let (Some(from), Some(to)) = (sizes.clone().min(), sizes.max()) else {
        return Ok(());
    };
    let mut by_size: HashMap<u64, Vec<note::Cosignature>> = HashMap::new();
    for (size, cosignature) in store.cosignatures(from as i64, to as i64).await? {
        by_size.entry(size).or_default().push(cosignature);
    }
    for checkpoint in checkpoints {
        checkpoint.cosignatures = by_size.remove(&checkpoint.tree_size).unwrap_or_default();
    }
    Ok(())
}

/// Writes every sequenced leaf, in order, as NDJSON (`leaf_index`, `kind`, `id`, `leaf` in
/// base64, `logged_hash` in hex) to `out`, and every checkpoint as a JSON list to `checkpoints`; returns how many
/// leaves were written, and tells `progress` after each. Leaves are rebuilt from the rows as
/// they are now: a verification of the export checks them. A leaf whose row is gone stops the
/// export, naming it: an export never holds a leaf it cannot show. The leaves are written
/// beside `out` and put in its place, synced, only once all are: a failed export leaves no
/// partial file.
pub async fn export(
    store: &dyn AuditLog,
    origin: &str,
    out: &Path,
    checkpoints: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let written = write_export(store, origin, &partial, checkpoints, progress).await;
    match written {
        Ok(written) => {
            std::fs::rename(&partial, out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            Ok(written)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            Err(error)
        }
    }
}

async fn write_export(
    store: &dyn AuditLog,
    origin: &str,
    out: &Path,
    checkpoints: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use base64::Engine as _;
    use std::io::Write as _;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()))?,
    );
    // The checkpoints first: every leaf they cover is then in the log when it is read.
    let mut views = Vec::new();
    let mut after = 0i64;
    loop {
        let mut page = store.checkpoints(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.tree_size as i64;
        with_cosignatures(store, &mut page).await?;
        views.extend(page.iter().map(|c| c.view(origin)));
    }
    let mut written = 0u64;
    let mut after = -1i64;
    loop {
        let entries = store.log_entries(after, 1000).await?;
        if entries.is_empty() {
            break;
        }
        for entry in entries {
            let index = entry.leaf_index.unwrap_or_default();
            let Some(leaf) = store.leaf_of(entry.kind, &entry.ref_id).await? else {
                anyhow::bail!(
                    "leaf {index}: the {} {} is missing from the database; the log does not \
                     verify (consentry audit verify says more)",
                    entry.kind.as_str(),
                    entry.ref_id
                );
            };
            let leaf = base64::engine::general_purpose::STANDARD.encode(leaf.bytes);
            let line = serde_json::json!({
                "leaf_index": index,
                "kind": entry.kind.as_str(),
                "id": entry.ref_id,
                "leaf": leaf,
                // The hash logged when the row was written: a leaf rebuilt from a row changed
                // since no longer has it, and the verifier names that leaf.
                "logged_hash": crate::crypto::hex(&entry.leaf_hash),
            });
            writeln!(file, "{line}")?;
            written += 1;
            progress(written);
            after = index;
        }
    }
    file.flush()?;
    file.get_ref().sync_all()?;
    std::fs::write(checkpoints, serde_json::to_vec_pretty(&views)?)
        .with_context(|| format!("cannot write {}", checkpoints.display()))?;
    Ok(written)
}
