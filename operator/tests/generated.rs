//! Generated files must match the code: the CRD in `crds/` and in the Helm chart.

#[test]
fn committed_crd_yaml_is_current() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let want = operator::crdgen::render()?;
    for rel in operator::crdgen::CRD_FILES {
        let have = std::fs::read_to_string(root.join(rel)).unwrap_or_default();
        anyhow::ensure!(
            have == want,
            "{rel} is out of date: run `cargo run -p kvcluster-operator --bin crdgen`"
        );
    }
    Ok(())
}
