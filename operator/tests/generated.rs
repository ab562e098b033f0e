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
