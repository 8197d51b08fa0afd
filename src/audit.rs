//! The verifiable log: every consent event, message record, body access and erasure is a leaf
//! of one append-only Merkle tree (RFC 6962), in the order the sequencer gives them, with
//! signed checkpoints an auditor can check offline.

pub mod checkpoint;
pub mod leaf;
pub mod merkle;
pub mod sequencer;
pub mod verify;

use std::path::Path;

use crate::store::AuditLog;

/// Writes every sequenced leaf, in order, as NDJSON (`leaf_index`, `kind`, `id`, `leaf` in
/// base64) to `out`, and every checkpoint as a JSON list to `checkpoints`; returns how many
/// leaves were written, and tells `progress` after each. Leaves are rebuilt from the rows as
/// they are now: a verification of the export checks them. A leaf whose row is gone stops the
/// export, naming it: an export never holds a leaf it cannot show.
pub async fn export(
    store: &dyn AuditLog,
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
        let page = store.checkpoints(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.tree_size as i64;
        views.extend(page.iter().map(|c| c.view()));
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
            });
            writeln!(file, "{line}")?;
            written += 1;
            progress(written);
            after = index;
        }
    }
    file.flush()?;
    std::fs::write(checkpoints, serde_json::to_vec_pretty(&views)?)
        .with_context(|| format!("cannot write {}", checkpoints.display()))?;
    Ok(written)
}
