//! Generated files must match the code: CRD (crds/ and the chart), the chart's
//! RBAC rules, manifests/install.yaml and manifests/examples/.

#[test]
fn committed_generated_files_are_current() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (rel, want) in operator::manifests::generated_files()? {
        let have = std::fs::read_to_string(root.join(&rel)).unwrap_or_default();
        anyhow::ensure!(
            have == want,
            "{rel} is out of date: run `cargo run -p kvcluster-operator --bin crdgen`"
        );
    }
    Ok(())
}

/// Kubernetes 1.20 reads an empty-string default as null and refuses the whole
/// CRD ("default: Invalid value: null"): the e2e run of 2026-12-03 failed on
/// `#[serde(default)]` String fields of status.recovery. Caught here, not there.
#[test]
fn no_empty_string_defaults_in_the_crds() -> anyhow::Result<()> {
    let crd = operator::crdgen::render()?;
    for (n, line) in crd.lines().enumerate() {
        anyhow::ensure!(
            !line.trim_start().starts_with("default: ''"),
            "line {}: {line}: remove #[serde(default)] from that String field",
            n + 1
        );
    }
    Ok(())
}
