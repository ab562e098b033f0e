//! `crdgen`: the one command that writes every generated file — the KVCluster
//! CRD (`crds/` and the Helm chart's copy), the chart's RBAC rules,
//! `manifests/install.yaml` and `manifests/examples/`. With `--check` it only
//! compares and fails when a committed file is stale.

use std::path::Path;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stale = Vec::new();
    for (rel, content) in operator::manifests::generated_files()? {
        let path = root.join(&rel);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
            continue;
        }
        if check {
            stale.push(rel);
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, &content).with_context(|| format!("writing {rel}"))?;
            println!("wrote {rel}");
        }
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "generated files are out of date: {}; run `cargo run -p kvcluster-operator --bin crdgen`",
            stale.join(", ")
        );
    }
    Ok(())
}
