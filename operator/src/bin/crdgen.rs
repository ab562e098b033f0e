//! `crdgen`: writes the KVCluster CRD to `crds/` and the Helm chart
//! (`--check` only compares, failing when a committed file is stale).

use std::path::Path;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let yaml = operator::crdgen::render()?;
    let mut stale = Vec::new();
    for rel in operator::crdgen::CRD_FILES {
        let path = root.join(rel);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == yaml {
            continue;
        }
        if check {
            stale.push(rel.to_string());
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, &yaml).with_context(|| format!("writing {rel}"))?;
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
