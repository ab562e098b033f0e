//! Forced recovery from permanent quorum loss (`recovery`): which lost
//! cluster this node's data comes from, and which node forms the new one
//! (`crate::recover` does it; docs/backup.md has the runbook).

use serde::Deserialize;
use serde::Serialize;

use super::ConfigError;
use super::field_err;

/// Forms a new cluster (`cluster_id`) from the data of a cluster whose majority
/// is lost for good. Never set in normal operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// The lost cluster's id. The node named by `node_id` must hold that
    /// cluster's data; it becomes the single voter of the new cluster
    /// `cluster_id` (which must differ), with every entry of its log applied.
    pub force_new_cluster_from: Option<String>,
    /// The node that recovers (the most up-to-date survivor). Default: this
    /// node. Other nodes with the setting start as empty members of the new
    /// cluster, to be added as learners.
    pub node_id: Option<u64>,
}

impl RecoveryConfig {
    pub(super) fn validate(&self, cluster_id: &str) -> Result<(), ConfigError> {
        let Some(from) = &self.force_new_cluster_from else {
            if self.node_id.is_some() {
                return Err(field_err(
                    "recovery.node_id",
                    "only with recovery.force_new_cluster_from",
                ));
            }
            return Ok(());
        };
        if from == cluster_id {
            return Err(field_err(
                "recovery.force_new_cluster_from",
                format!(
                    "is the configured cluster_id {cluster_id:?}: a recovered cluster gets a new cluster_id, so members of the lost one are refused by identity"
                ),
            ));
        }
        if from.is_empty() {
            return Err(field_err(
                "recovery.force_new_cluster_from",
                "must not be empty",
            ));
        }
        Ok(())
    }

    /// The lost cluster, when `node` is the one that recovers.
    pub fn recovering(&self, node: u64) -> Option<&str> {
        let from = self.force_new_cluster_from.as_deref()?;
        (self.node_id.unwrap_or(node) == node).then_some(from)
    }
}
