//! Cluster and ops calls of [`Client`]: cluster view, init, membership,
//! leader transfer, `/status` and `/readyz` of one endpoint.

use reqwest::Method;
use reqwest::StatusCode;

use super::Client;
use super::ClientError;
use super::Retry;
use super::decode;
use super::normalize;
use crate::model::ChangeResponse;
use crate::model::ClusterInfo;
use crate::model::InitRequest;
use crate::model::LearnerRequest;
use crate::model::MembershipRequest;
use crate::model::NodeId;
use crate::model::ReadyResponse;
use crate::model::StatusResponse;
use crate::model::TransferRequest;

impl Client {
    // ----- cluster -----

    /// The cluster as seen by the preferred endpoint.
    pub async fn cluster(&self) -> Result<ClusterInfo, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/cluster", None, Retry::Idempotent)
            .await
    }

    /// Every partition: hash range, nodes (leader first), leader, revision.
    pub async fn partitions(&self) -> Result<crate::model::PartitionsInfo, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/partitions", None, Retry::Idempotent)
            .await
    }

    /// `GET /v1/partitions` of one particular node (never sent anywhere else).
    pub async fn partitions_at(
        &self,
        endpoint: &str,
    ) -> Result<crate::model::PartitionsInfo, ClientError> {
        self.at::<(), _>(endpoint, &Method::GET, "/v1/partitions", None)
            .await
    }

    /// Where `key` lives: its partition and nodes, leader first.
    pub async fn partition_of(&self, key: &str) -> Result<crate::model::KeyPlacement, ClientError> {
        let path = format!(
            "/v1/partitions/key?key={}",
            super::encode_key(key).replace('/', "%2F")
        );
        self.call::<(), _>(Method::GET, &path, None, Retry::Idempotent)
            .await
    }

    /// The cluster as seen by one particular node (`host:port` or URL).
    pub async fn cluster_at(&self, endpoint: &str) -> Result<ClusterInfo, ClientError> {
        self.at::<(), _>(endpoint, &Method::GET, "/v1/cluster", None)
            .await
    }

    /// Initializes a cluster on one particular node (never sent anywhere else).
    pub async fn init_at(
        &self,
        endpoint: &str,
        req: &InitRequest,
    ) -> Result<ChangeResponse, ClientError> {
        self.at(endpoint, &Method::POST, "/v1/cluster/init", Some(req))
            .await
    }

    pub async fn add_learner(&self, req: &LearnerRequest) -> Result<ChangeResponse, ClientError> {
        self.call(
            Method::POST,
            "/v1/cluster/learners",
            Some(req),
            Retry::Idempotent,
        )
        .await
    }

    pub async fn change_membership(
        &self,
        req: &MembershipRequest,
    ) -> Result<ChangeResponse, ClientError> {
        self.call(
            Method::POST,
            "/v1/cluster/membership",
            Some(req),
            Retry::Idempotent,
        )
        .await
    }

    pub async fn transfer_leader(&self, to: NodeId) -> Result<ChangeResponse, ClientError> {
        self.call(
            Method::POST,
            "/v1/cluster/transfer-leader",
            Some(&TransferRequest { to }),
            Retry::Idempotent,
        )
        .await
    }

    /// `/status` of one particular node.
    pub async fn status_at(&self, endpoint: &str) -> Result<StatusResponse, ClientError> {
        self.at::<(), _>(endpoint, &Method::GET, "/status", None)
            .await
    }

    /// `/readyz` of one particular node (`ready: false` rather than an error when not ready).
    pub async fn ready_at(&self, endpoint: &str) -> Result<ReadyResponse, ClientError> {
        let endpoint = normalize(endpoint.to_string(), self.inner.scheme);
        let resp = self
            .inner
            .http
            .get(format!("{endpoint}/readyz"))
            .send()
            .await
            .map_err(|e| ClientError::transport(&endpoint, &e))?;
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            return resp.json().await.map_err(|e| ClientError::Decode {
                endpoint,
                message: e.to_string(),
            });
        }
        decode(&endpoint, resp).await
    }
}
