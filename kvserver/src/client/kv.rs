//! Key-value calls of [`Client`]: one method per KV route (get, put, delete,
//! list, prefix delete, batch get, transactions).

use reqwest::Method;

use super::Client;
use super::ClientError;
use super::Retry;
use super::absent_is_none;
use super::encode_key;
use super::query;
use crate::model::BatchGetRequest;
use crate::model::BatchGetResponse;
use crate::model::Consistency;
use crate::model::DeleteResponse;
use crate::model::GetResponse;
use crate::model::ListQuery;
use crate::model::ListResponse;
use crate::model::PutRequest;
use crate::model::PutResponse;
use crate::model::TxnRequest;
use crate::model::TxnResponse;

impl Client {
    // ----- KV -----

    /// Reads a key; `None` when it does not exist.
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<GetResponse>, ClientError> {
        let q = if consistency == Consistency::Stale {
            "?consistency=stale"
        } else {
            ""
        };
        absent_is_none(
            self.call::<(), GetResponse>(
                Method::GET,
                &format!("/v1/kv/{}{q}", encode_key(key)),
                None,
                Retry::Idempotent,
            )
            .await,
        )
    }

    /// Creates or replaces a key. A failed `if_revision` guard is `Api { status: 412 }`.
    pub async fn put(&self, key: &str, req: &PutRequest) -> Result<PutResponse, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/kv/{}", encode_key(key)),
            Some(req),
            Retry::Write,
        )
        .await
    }

    /// Deletes a key; `None` when it did not exist.
    pub async fn delete(
        &self,
        key: &str,
        if_revision: Option<u64>,
    ) -> Result<Option<DeleteResponse>, ClientError> {
        let q = if_revision
            .map(|r| format!("?if_revision={r}"))
            .unwrap_or_default();
        absent_is_none(
            self.call::<(), DeleteResponse>(
                Method::DELETE,
                &format!("/v1/kv/{}{q}", encode_key(key)),
                None,
                Retry::Write,
            )
            .await,
        )
    }

    /// One page of keys.
    pub async fn list(&self, q: &ListQuery) -> Result<ListResponse, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/kv{}", query(q)),
            None,
            Retry::Idempotent,
        )
        .await
    }

    /// Deletes every key with `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<DeleteResponse, ClientError> {
        let path = format!("/v1/kv?prefix={}", encode_key(prefix).replace('/', "%2F"));
        self.call::<(), _>(Method::DELETE, &path, None, Retry::Write)
            .await
    }

    /// Reads several keys from one consistent view.
    pub async fn batch_get(
        &self,
        keys: Vec<String>,
        consistency: Consistency,
    ) -> Result<BatchGetResponse, ClientError> {
        self.call(
            Method::POST,
            "/v1/batch/get",
            Some(&BatchGetRequest { keys, consistency }),
            Retry::Idempotent,
        )
        .await
    }

    /// Runs a transaction.
    pub async fn txn(&self, req: &TxnRequest) -> Result<TxnResponse, ClientError> {
        self.call(Method::POST, "/v1/txn", Some(req), Retry::Write)
            .await
    }
}
